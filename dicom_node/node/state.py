"""The node's durable memory: instances, studies, jobs (one per study version), outbox, deliveries.

Why SQLite: one file under the data folder, transactional, readable by ``myonode status``
while the node runs (WAL lets readers and the writer work at once), and ``synchronous=FULL``
so that what was committed before a C-STORE success status or a delivery record survives a
crash or a power cut. Every write is one short ``BEGIN IMMEDIATE`` transaction; the node's
threads share one connection behind a lock, other processes (the CLI) open their own.

A study's life: each new instance either joins the study's open job (state ``received``,
``queued`` or ``held``: its inputs are not fixed yet) or, when the study has none, opens a new job with
the next *version* number. A job fixes its inputs when it starts processing (every instance
of the study received so far, by sequence number), so instances arriving during or after
processing open the next version. Job states: received -> queued -> processing -> sending ->
done | failed; a study whose instances name more than one patient goes to ``held`` instead
and stays there until a person releases it (held -> queued). Each output instance is
recorded in the outbox once, with one delivery row per destination (pending -> sent | dead).

Schema changes bump ``SCHEMA_VERSION`` (kept in ``PRAGMA user_version``) and add a step to
``_MIGRATIONS``; a database newer than this code is refused rather than misread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicom_node.node.permissions import make_dir, open_private

SCHEMA_VERSION = 1
DB_NAME = "state.sqlite3"

JOB_STATES = ("received", "queued", "held", "processing", "sending", "done", "failed")
# inputs not fixed yet: new instances join the job (a held one stays held with them)
OPEN_STATES = ("received", "queued", "held")
UNFINISHED_STATES = ("received", "queued", "processing", "sending")
DELIVERY_STATES = ("pending", "sent", "dead")

_SCHEMA_V1 = """
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    latest_version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT,
    peer TEXT,
    received_at REAL NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX instances_by_study ON instances(study_uid, seq);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    trigger TEXT,
    created_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    queued_at REAL,
    started_at REAL,
    sending_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    input_max_seq INTEGER,
    input_count INTEGER,
    failed_stage TEXT,
    error TEXT,
    note TEXT,
    UNIQUE (study_uid, version)
);
CREATE INDEX jobs_by_state ON jobs(state, id);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE deliveries (
    outbox_id INTEGER NOT NULL REFERENCES outbox(id),
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    sent_at REAL,
    last_error TEXT,
    PRIMARY KEY (outbox_id, destination)
);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
"""

_MIGRATIONS = {1: _SCHEMA_V1}


class StateError(RuntimeError):
    """The state database cannot be used (newer schema, or a request that makes no sense)."""


class InstanceConflict(StateError):
    """A SOP Instance UID already recorded under another study or series: one UID names one
    instance, so the second one is refused (recording it would leave a spool file that the
    state does not know, or mix two studies)."""

    def __init__(self, where: str, study_uid: str, series_uid: str) -> None:
        super().__init__(f"SOP Instance UID already stored in {where}")
        self.where = where
        self.study_uid = study_uid
        self.series_uid = series_uid


@dataclass(frozen=True)
class Job:
    """One processing run of one version of a study (a row of ``jobs``)."""

    id: int
    study_uid: str
    version: int
    state: str
    trigger: str | None
    created_at: float
    last_instance_at: float
    queued_at: float | None
    started_at: float | None
    sending_at: float | None
    finished_at: float | None
    attempts: int
    input_max_seq: int | None
    input_count: int | None
    failed_stage: str | None
    error: str | None
    note: str | None


@dataclass(frozen=True)
class InstanceOutcome:
    """What recording one stored instance did: which job it belongs to, and whether it was new."""

    new: bool
    job_id: int | None
    version: int | None
    opened_job: bool  # this instance opened a new version of the study


@dataclass(frozen=True)
class OutboxItem:
    """One result instance waiting in (or sent from) the outbox."""

    id: int
    job_id: int
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    kind: str
    path: str


@dataclass(frozen=True)
class Delivery:
    """One result instance to one destination."""

    outbox_id: int
    destination: str
    state: str
    attempts: int
    created_at: float
    next_attempt_at: float
    sent_at: float | None
    last_error: str | None
    job_id: int
    sop_instance_uid: str
    path: str


class State:
    """The SQLite state of one node; safe to share between the node's threads."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        if read_only:
            if not self.path.exists():
                raise StateError(f"no node state at {self.path} (has the node run yet?)")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                       check_same_thread=False, timeout=30)
        else:
            make_dir(self.path.parent)
            # Created here with the node's file mode: SQLite gives its -wal and -shm files
            # the mode of the database file.
            if not self.path.exists():
                os.close(open_private(self.path, os.O_RDWR))
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 30000")
        if not read_only:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        else:
            self._check_version()

    @classmethod
    def in_data_dir(cls, data_dir: Path, read_only: bool = False) -> State:
        """The state database of the node whose data folder is ``data_dir``."""
        return cls(Path(data_dir) / DB_NAME, read_only=read_only)

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite)."""
        with self._lock:
            self._db.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def schema_version(self) -> int:
        """The schema version stored in the database."""
        return int(self._read("PRAGMA user_version")[0][0])

    def _check_version(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has schema version {version}, newer than this myonode "
                f"({SCHEMA_VERSION}); upgrade myonode or use another data folder"
            )

    def _migrate(self) -> None:
        self._check_version()
        with self._lock:
            current = self.schema_version()
            for target in range(current + 1, SCHEMA_VERSION + 1):
                # executescript commits by itself; the version is bumped in the same script.
                self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{_MIGRATIONS[target]}\nPRAGMA user_version = {target};\n"
                    "COMMIT;"
                )

    # -- instances and studies -------------------------------------------------------------

    def record_instance(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        path: str,
        calling_ae: str | None = None,
        peer: str | None = None,
        now: float | None = None,
    ) -> InstanceOutcome:
        """Record a stored instance; open the study's next version when it has no open job.

        A SOP Instance UID seen before changes nothing but the open job's quiet-period clock
        (a sender repeating a transfer is still busy with the study); seen before under
        another study or series, it raises ``InstanceConflict`` and records nothing."""
        now = time.time() if now is None else now
        with self._write() as db:
            seen = db.execute(
                "SELECT study_uid, series_uid FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
            if seen is not None and (seen["study_uid"], seen["series_uid"]) != (study_uid,
                                                                              series_uid):
                where = "another study" if seen["study_uid"] != study_uid else "another series"
                raise InstanceConflict(where, seen["study_uid"], seen["series_uid"])
            open_job = db.execute(
                f"SELECT id, version FROM jobs WHERE study_uid = ? AND state IN "
                f"({_marks(OPEN_STATES)}) ORDER BY id DESC LIMIT 1",
                (study_uid, *OPEN_STATES),
            ).fetchone()
            if seen is not None:
                if open_job is not None:
                    db.execute("UPDATE jobs SET last_instance_at = ? WHERE id = ?",
                               (now, open_job["id"]))
                    return InstanceOutcome(False, open_job["id"], open_job["version"], False)
                return InstanceOutcome(False, None, None, False)
            db.execute(
                "INSERT INTO studies (study_uid, first_received_at, last_received_at, instances)"
                " VALUES (?, ?, ?, 1) ON CONFLICT (study_uid) DO UPDATE SET"
                " last_received_at = excluded.last_received_at, instances = instances + 1",
                (study_uid, now, now),
            )
            opened = open_job is None
            if opened:
                version = db.execute(
                    "SELECT latest_version FROM studies WHERE study_uid = ?", (study_uid,)
                ).fetchone()[0] + 1
                db.execute("UPDATE studies SET latest_version = ? WHERE study_uid = ?",
                           (version, study_uid))
                job_id = db.execute(
                    "INSERT INTO jobs (study_uid, version, state, created_at, last_instance_at)"
                    " VALUES (?, ?, 'received', ?, ?)",
                    (study_uid, version, now, now),
                ).lastrowid
            else:
                job_id, version = open_job["id"], open_job["version"]
                db.execute("UPDATE jobs SET last_instance_at = ? WHERE id = ?", (now, job_id))
            db.execute(
                "INSERT INTO instances (sop_instance_uid, study_uid, series_uid, sop_class_uid,"
                " path, calling_ae, peer, received_at, version) VALUES (?,?,?,?,?,?,?,?,?)",
                (sop_instance_uid, study_uid, series_uid, sop_class_uid, path, calling_ae, peer,
                 now, version),
            )
            return InstanceOutcome(True, int(job_id), int(version), opened)

    def study_paths(self, study_uid: str, max_seq: int | None = None) -> list[tuple[str, str]]:
        """(SOP Instance UID, path) of the study's instances, up to sequence ``max_seq``."""
        limit = max_seq if max_seq is not None else 2**62
        rows = self._read(
            "SELECT sop_instance_uid, path FROM instances WHERE study_uid = ? AND seq <= ?"
            " ORDER BY seq",
            (study_uid, limit),
        )
        return [(r[0], r[1]) for r in rows]

    def studies(self, limit: int = 50) -> list[dict]:
        """The most recently active studies, newest first."""
        rows = self._read(
            "SELECT * FROM studies ORDER BY last_received_at DESC LIMIT ?", (limit,)
        )
        return [dict(r) for r in rows]

    # -- jobs --------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        """One job; StateError when there is none with that id."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise StateError(f"no job {job_id}")
        return Job(**dict(rows[0]))

    def jobs(self, states: tuple[str, ...] | None = None, limit: int = 100) -> list[Job]:
        """Jobs (in the given states), newest first."""
        if states:
            rows = self._read(
                f"SELECT * FROM jobs WHERE state IN ({_marks(states)}) ORDER BY id DESC LIMIT ?",
                (*states, limit),
            )
        else:
            rows = self._read("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        return [Job(**dict(r)) for r in rows]

    def job_counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state listed, zeros included)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        for state, n in self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def queue_job(self, job_id: int, trigger: str, now: float | None = None) -> bool:
        """Mark a ``received`` job complete (``trigger`` says why); False if it was not received."""
        now = time.time() if now is None else now
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'queued', trigger = ?, queued_at = ?"
                " WHERE id = ? AND state = 'received'",
                (trigger, now, job_id),
            ).rowcount
        return changed == 1

    def claim_next_job(self, now: float | None = None) -> Job | None:
        """Start the oldest queued job: fix its inputs (every instance of the study so far)."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute(
                "SELECT id, study_uid, input_max_seq FROM jobs WHERE state = 'queued'"
                " ORDER BY queued_at, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            if row["input_max_seq"] is None:
                max_seq, count = db.execute(
                    "SELECT MAX(seq), COUNT(*) FROM instances WHERE study_uid = ?",
                    (row["study_uid"],),
                ).fetchone()
                db.execute("UPDATE jobs SET input_max_seq = ?, input_count = ? WHERE id = ?",
                           (max_seq, count, row["id"]))
            db.execute(
                "UPDATE jobs SET state = 'processing', started_at = ?, attempts = attempts + 1,"
                " error = NULL, failed_stage = NULL WHERE id = ?",
                (now, row["id"]),
            )
        return self.job(row["id"])

    def resume_unfinished(self, now: float | None = None) -> list[int]:
        """After a restart: jobs caught in ``processing`` go back to the queue (same inputs)."""
        now = time.time() if now is None else now
        with self._write() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'processing'")]
            db.execute(
                "UPDATE jobs SET state = 'queued', queued_at = COALESCE(queued_at, ?),"
                " note = 'resumed after restart' WHERE state = 'processing'",
                (now,),
            )
        return ids

    def hold_job(self, job_id: int, reason: str) -> bool:
        """Keep a ``received`` or ``queued`` job (inputs not fixed yet) from processing until
        a person releases it; ``reason`` is kept as its error. False if it was in no such
        state."""
        with self._write() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'held', error = ? WHERE id = ?"
                " AND state IN ('received', 'queued') AND input_max_seq IS NULL",
                (reason[:4000], job_id),
            ).rowcount
        return changed == 1

    def release_job(self, job_id: int, now: float | None = None) -> str:
        """A person has checked a held job: queue it (trigger ``released``) with every
        instance of the study; the reason it was held stays in its note."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT state, error FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")
            if row["state"] != "held":
                raise StateError(f"job {job_id} is {row['state']}, not held; nothing to release")
            db.execute(
                "UPDATE jobs SET state = 'queued', trigger = 'released', queued_at = ?,"
                " error = NULL, note = ? WHERE id = ?",
                (now, f"released by hand after it was held: {row['error']}"[:4000], job_id),
            )
        return f"job {job_id}: released and queued for processing"

    def fail_job(self, job_id: int, stage: str, error: str, now: float | None = None) -> None:
        """A job that cannot go on: keep its inputs, record where and why."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', failed_stage = ?, error = ?, finished_at = ?"
                " WHERE id = ?",
                (stage, error[:4000], now, job_id),
            )

    def retry_job(self, job_id: int, now: float | None = None) -> str:
        """Run a failed job again: processing failures go back to the queue with the same
        inputs; delivery failures send their dead letters again. Returns what was done."""
        now = time.time() if now is None else now
        with self._write() as db:
            row = db.execute("SELECT state, failed_stage FROM jobs WHERE id = ?",
                             (job_id,)).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")
            if row["state"] != "failed":
                raise StateError(f"job {job_id} is {row['state']}, not failed; nothing to retry")
            if row["failed_stage"] == "sending":
                n = _reset_deliveries(db, "outbox.job_id = ? AND deliveries.state = 'dead'",
                                      (job_id,), now)
                db.execute(
                    "UPDATE jobs SET state = 'sending', error = NULL, failed_stage = NULL,"
                    " finished_at = NULL WHERE id = ?",
                    (job_id,),
                )
                return f"job {job_id}: {n} dead letter(s) queued for delivery again"
            db.execute(
                "UPDATE jobs SET state = 'queued', trigger = 'retry', queued_at = ?, error = NULL,"
                " failed_stage = NULL, finished_at = NULL WHERE id = ?",
                (now, job_id),
            )
            return f"job {job_id}: queued for processing again"

    def finish_processing(
        self,
        job_id: int,
        items: list[dict],
        destinations: list[str],
        note: str | None = None,
        now: float | None = None,
    ) -> None:
        """Record the job's results (already durable in the outbox) and their deliveries in one
        transaction; the job goes to ``sending``, or ``done`` when there is no destination."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute("DELETE FROM deliveries WHERE outbox_id IN"
                       " (SELECT id FROM outbox WHERE job_id = ?)", (job_id,))
            db.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))
            for item in items:
                outbox_id = db.execute(
                    "INSERT INTO outbox (job_id, sop_instance_uid, sop_class_uid, series_uid,"
                    " kind, path, created_at) VALUES (?,?,?,?,?,?,?)",
                    (job_id, item["sop_instance_uid"], item["sop_class_uid"],
                     item["series_uid"], item["kind"], item["path"], now),
                ).lastrowid
                for destination in destinations:
                    db.execute(
                        "INSERT INTO deliveries (outbox_id, destination, state, created_at,"
                        " next_attempt_at) VALUES (?, ?, 'pending', ?, ?)",
                        (outbox_id, destination, now, now),
                    )
            state = "sending" if destinations and items else "done"
            db.execute(
                "UPDATE jobs SET state = ?, sending_at = ?, finished_at = ?, note = ?"
                " WHERE id = ?",
                (state, now, now if state == "done" else None, note, job_id),
            )

    # -- outbox and deliveries ---------------------------------------------------------------

    def outbox_items(self, job_id: int) -> list[OutboxItem]:
        """The results of one job in the outbox."""
        rows = self._read(
            "SELECT id, job_id, sop_instance_uid, sop_class_uid, series_uid, kind, path"
            " FROM outbox WHERE job_id = ? ORDER BY id",
            (job_id,),
        )
        return [OutboxItem(**dict(r)) for r in rows]

    def due_deliveries(self, now: float | None = None) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest job first."""
        now = time.time() if now is None else now
        return self._deliveries(
            "deliveries.state = 'pending' AND deliveries.next_attempt_at <= ?", (now,)
        )

    def deliveries(self, job_id: int | None = None, state: str | None = None) -> list[Delivery]:
        """Deliveries, of one job and/or in one state."""
        where, args = ["1"], []
        if job_id is not None:
            where.append("outbox.job_id = ?")
            args.append(job_id)
        if state is not None:
            where.append("deliveries.state = ?")
            args.append(state)
        return self._deliveries(" AND ".join(where), tuple(args))

    def _deliveries(self, where: str, args: tuple) -> list[Delivery]:
        rows = self._read(
            "SELECT deliveries.*, outbox.job_id, outbox.sop_instance_uid, outbox.path"
            f" FROM deliveries JOIN outbox ON outbox.id = deliveries.outbox_id WHERE {where}"
            " ORDER BY outbox.job_id, outbox.id, deliveries.destination",
            args,
        )
        return [Delivery(**dict(r)) for r in rows]

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """destination -> {pending, sent, dead} counts."""
        counts: dict[str, dict[str, int]] = {}
        for destination, state, n in self._read(
            "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY destination, state"
        ):
            counts.setdefault(destination, dict.fromkeys(DELIVERY_STATES, 0))[state] = n
        return counts

    def mark_sent(self, outbox_id: int, destination: str, now: float | None = None) -> None:
        """One instance reached one destination (committed before the next is sent)."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET state = 'sent', sent_at = ?, attempts = attempts + 1,"
                " last_error = NULL WHERE outbox_id = ? AND destination = ?",
                (now, outbox_id, destination),
            )

    def mark_attempt_failed(
        self, outbox_id: int, destination: str, error: str, next_attempt_at: float | None
    ) -> None:
        """A failed attempt: retry at ``next_attempt_at``, or dead letter when it is None."""
        with self._write() as db:
            if next_attempt_at is None:
                db.execute(
                    "UPDATE deliveries SET state = 'dead', attempts = attempts + 1,"
                    " last_error = ? WHERE outbox_id = ? AND destination = ?",
                    (error[:2000], outbox_id, destination),
                )
            else:
                db.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, last_error = ?,"
                    " next_attempt_at = ? WHERE outbox_id = ? AND destination = ?",
                    (error[:2000], next_attempt_at, outbox_id, destination),
                )

    def settle_sending_jobs(self, now: float | None = None) -> list[tuple[int, str]]:
        """Jobs in ``sending`` with nothing pending: done when all was sent, failed when a
        delivery was dead-lettered. Returns (job id, new state)."""
        now = time.time() if now is None else now
        settled = []
        with self._write() as db:
            rows = db.execute(
                "SELECT jobs.id,"
                " SUM(deliveries.state = 'pending'), SUM(deliveries.state = 'dead'),"
                " COUNT(deliveries.state)"
                " FROM jobs LEFT JOIN outbox ON outbox.job_id = jobs.id"
                " LEFT JOIN deliveries ON deliveries.outbox_id = outbox.id"
                " WHERE jobs.state = 'sending' GROUP BY jobs.id"
            ).fetchall()
            for job_id, pending, dead, total in rows:
                if pending:
                    continue
                if dead:
                    db.execute(
                        "UPDATE jobs SET state = 'failed', failed_stage = 'sending', error = ?,"
                        " finished_at = ? WHERE id = ?",
                        (f"{dead} of {total} deliveries dead-lettered", now, job_id),
                    )
                    settled.append((job_id, "failed"))
                else:
                    db.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?",
                               (now, job_id))
                    settled.append((job_id, "done"))
        return settled

    def resend(
        self,
        job_id: int | None,
        destinations: list[str],
        dead_letters_only: bool,
        now: float | None = None,
    ) -> int:
        """Queue results for delivery again: one job's (all of them, to every destination
        configured now) or every dead letter. Returns the number of deliveries queued."""
        now = time.time() if now is None else now
        with self._write() as db:
            if dead_letters_only:
                where, args = "deliveries.state = 'dead'", ()
                if job_id is not None:
                    where += " AND outbox.job_id = ?"
                    args = (job_id,)
                n = _reset_deliveries(db, where, args, now)
                jobs = [r[0] for r in db.execute(
                    "SELECT DISTINCT outbox.job_id FROM deliveries JOIN outbox ON"
                    " outbox.id = deliveries.outbox_id WHERE deliveries.state = 'pending'"
                )]
            else:
                if job_id is None:
                    raise StateError("name a job, or ask for the dead letters")
                if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    raise StateError(f"no job {job_id}")
                items = [r[0] for r in db.execute("SELECT id FROM outbox WHERE job_id = ?",
                                                  (job_id,))]
                if not items:
                    raise StateError(f"job {job_id} has no results in the outbox")
                if not destinations:
                    raise StateError("no destination is configured; nothing to send to")
                for outbox_id in items:
                    for destination in destinations:
                        db.execute(
                            "INSERT INTO deliveries (outbox_id, destination, state, created_at,"
                            " next_attempt_at) VALUES (?, ?, 'pending', ?, ?)"
                            " ON CONFLICT (outbox_id, destination) DO UPDATE SET"
                            " state = 'pending', attempts = 0, created_at = excluded.created_at,"
                            " next_attempt_at = excluded.next_attempt_at, last_error = NULL,"
                            " sent_at = NULL",
                            (outbox_id, destination, now, now),
                        )
                n = len(items) * len(destinations)
                jobs = [job_id]
            for queued_job in jobs:
                db.execute(
                    "UPDATE jobs SET state = 'sending', error = NULL, failed_stage = NULL,"
                    " finished_at = NULL WHERE id = ? AND state IN ('done', 'failed', 'sending')",
                    (queued_job,),
                )
        return n


def _reset_deliveries(db: sqlite3.Connection, where: str, args: tuple, now: float) -> int:
    return db.execute(
        "UPDATE deliveries SET state = 'pending', attempts = 0, created_at = ?,"
        " next_attempt_at = ?, last_error = NULL WHERE rowid IN (SELECT deliveries.rowid FROM"
        f" deliveries JOIN outbox ON outbox.id = deliveries.outbox_id WHERE {where})",
        (now, now, *args),
    ).rowcount


def _marks(values: tuple) -> str:
    return ", ".join("?" * len(values))
