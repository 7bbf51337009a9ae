"""The outbox: results are made durable first, then delivered to every destination.

Why an outbox: a PACS that is down, slow or refusing must never cost a result. A job's SEG
and SR files are copied into ``<data_dir>/outbox/job-<id>/`` (temporary file, fsync, rename)
and recorded with one delivery per destination in a single transaction; only then does any
C-STORE start. Each delivery is marked sent as soon as the destination answered for that
instance, so after a crash only an instance whose success status was in flight at the
moment of the crash can go again (with the same SOP Instance UID, which a PACS stores once).

Back-off: after the n-th failed attempt the next is ``retry_initial_s * 2**(n-1)`` later,
at most ``retry_max_s``; a delivery still failing ``give_up_after_s`` after it was queued
becomes a dead letter (kept in the outbox; ``myonode resend --dead-letters`` or
``myonode retry JOB`` queues it again).

Versions: results of a study's second and later versions carry `` v<n>`` at the end of
their SeriesDescription (see docs/node.md); UIDs are new for every version anyway.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom

from dicom_node.node.log import log_event
from dicom_node.node.permissions import make_dir, open_private
from dicom_node.node.state import Delivery, Job, State
from dicom_node.receive.spool import fsync_dir
from dicom_node.send.scu import Peer, SendOutcome, send_files

log = logging.getLogger("myonode.outbox")

MAX_BATCH = 256  # instances per association


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off of one delivery, and when to give up on it."""

    initial_s: float = 10.0
    max_s: float = 600.0
    give_up_after_s: float = 86_400.0

    def next_attempt(self, attempts_before: int, created_at: float, now: float) -> float | None:
        """When to try again after a failure, or None when the delivery is a dead letter."""
        deadline = created_at + self.give_up_after_s
        if now >= deadline:
            return None
        delay = min(self.initial_s * 2 ** max(attempts_before, 0), self.max_s)
        return min(now + delay, deadline)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either nothing or all of it, even after a crash
    (readable by the node's user and group only, :mod:`dicom_node.node.permissions`)."""
    make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def versioned_description(description: str, version: int) -> str:
    """SeriesDescription of a result of ``version`` (unchanged for the first version)."""
    if version <= 1:
        return description
    suffix = f" v{version}"
    return description[: 64 - len(suffix)] + suffix


class Outbox:
    """Stores results durably and delivers them with back-off, on its own thread."""

    def __init__(
        self,
        state: State,
        root: Path,
        peers: dict[str, Peer],
        calling_ae: str,
        policy: RetryPolicy | None = None,
        send: Callable[..., list[SendOutcome]] = send_files,
        tick_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.root = Path(root)
        self.peers = peers
        self.calling_ae = calling_ae
        self.policy = policy or RetryPolicy()
        self.send = send
        self.tick_s = tick_s
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_round: float | None = None

    # -- results in ------------------------------------------------------------------------

    def store_results(self, job: Job, files: list[tuple[str, Path]]) -> list[dict]:
        """Copy a job's result files into the outbox (version-labelled, durable); the records
        for :meth:`State.finish_processing`. A previous partial copy is replaced."""
        folder = self.root / f"job-{job.id}"
        if folder.exists():
            shutil.rmtree(folder)
        items = []
        for kind, source in files:
            ds = pydicom.dcmread(source)
            if "SeriesDescription" in ds:
                ds.SeriesDescription = versioned_description(str(ds.SeriesDescription),
                                                             job.version)
            target = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            write_durable(target, buffer.getvalue())
            items.append({
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "sop_class_uid": str(ds.SOPClassUID),
                "series_uid": str(ds.SeriesInstanceUID),
                "kind": kind,
                "path": str(target),
            })
        return items

    def commit(self, job: Job, items: list[dict]) -> str:
        """Record the stored results and their deliveries; the job's next state."""
        if not self.peers:
            note = "no destination configured: results stay in the outbox"
            log_event(log, "outbox.no_destination", logging.WARNING, job_id=job.id,
                      outbox=str(self.root / f"job-{job.id}"), message=note)
        else:
            note = None
        self.state.finish_processing(job.id, items, sorted(self.peers), note=note,
                                     now=self.clock())
        self._wake.set()
        return "sending" if self.peers and items else "done"

    # -- delivery ------------------------------------------------------------------------------

    def run_once(self, now: float | None = None) -> int:
        """Attempt every due delivery (one association per destination); returns how many
        instances were stored by their destination."""
        now = self.clock() if now is None else now
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in self.state.due_deliveries(now=now):
            by_destination[delivery.destination].append(delivery)
        sent = 0
        for destination, due in by_destination.items():
            peer = self.peers.get(destination)
            if peer is None:
                for delivery in due:
                    self.state.mark_attempt_failed(
                        delivery.outbox_id, destination,
                        f"destination {destination!r} is not configured any more", None)
                continue
            for start in range(0, len(due), MAX_BATCH):
                sent += self._send_batch(peer, due[start:start + MAX_BATCH])
        for job_id, new_state in self.state.settle_sending_jobs(now=self.clock()):
            log_event(log, f"job.{new_state}",
                      logging.INFO if new_state == "done" else logging.ERROR, job_id=job_id)
        self.last_round = now
        return sent

    def _send_batch(self, peer: Peer, batch: list[Delivery]) -> int:
        by_path = {Path(d.path): d for d in batch}
        stored = 0

        def record(outcome: SendOutcome) -> None:
            nonlocal stored
            delivery = by_path[Path(outcome.path)]
            if outcome.stored:
                stored += 1
                self.state.mark_sent(delivery.outbox_id, peer.name, now=self.clock())
                return
            now = self.clock()
            retry_at = self.policy.next_attempt(delivery.attempts, delivery.created_at, now)
            self.state.mark_attempt_failed(delivery.outbox_id, peer.name,
                                           outcome.error or "not stored", retry_at)
            log_event(log, "delivery.dead" if retry_at is None else "delivery.retry",
                      logging.ERROR if retry_at is None else logging.WARNING,
                      job_id=delivery.job_id, destination=peer.name,
                      sop_instance_uid=outcome.sop_instance_uid, error=outcome.error,
                      attempts=delivery.attempts + 1,
                      next_attempt_in_s=None if retry_at is None else round(retry_at - now, 1))

        missing = [d for d in batch if not Path(d.path).exists()]
        for delivery in missing:
            self.state.mark_attempt_failed(delivery.outbox_id, peer.name,
                                           f"outbox file {delivery.path} is gone", None)
        present = [Path(d.path) for d in batch if d not in missing]
        if present:
            self.send(peer, present, self.calling_ae, on_outcome=record)
            if stored:
                log_event(log, "delivery.sent", destination=peer.name, instances=stored)
        return stored

    # -- thread ------------------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (new results, or a resend)."""
        self._wake.set()

    def start(self) -> None:
        """Deliver on a background thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the association in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=120)

    def alive(self) -> bool:
        """For the health check: the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # noqa: BLE001 - a broken round must not end delivery for good
                log_event(log, "outbox.error", logging.ERROR, error=repr(exc),
                          traceback=traceback.format_exc())
            self._wake.wait(self.tick_s)
            self._wake.clear()
