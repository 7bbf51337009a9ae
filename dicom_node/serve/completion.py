"""When has a study arrived? Early on a complete study, else after a quiet period, else at a cap.

DICOM has no "end of study" message: scanners and PACS send a study in one association or in
many, in any order, sometimes hours apart. So a version of a study (a ``received`` job, see
:mod:`dicom_node.node.state`) is queued for processing by the first of:

* ``complete``: an association that carried instances of the study was released, and the
  study's stacks are complete: every required Dixon role in every stack, or echo magnitudes
  that make a Dixon set (an in- and an out-of-phase echo, or three echoes; no echo images
  left over that form no set yet), no missing slice (the stack warnings of
  :mod:`dicom_node.study.stacks`), and the instance counts the headers declare are reached
  (Images in Acquisition (0020,1002) per series and acquisition; NumberOfFrames against the
  per-frame functional groups of Enhanced MR instances);
* ``quiet_period``: no new instance of the study for ``quiet_period_s`` (default 10 s);
* ``max_wait``: ``max_wait_s`` after the version's first instance, even if instances still
  arrive (a sender trickling images must not hold results back for ever).

Both periods are counted from the node's start at the earliest: after a crash or restart a
study that was still arriving gets the full quiet period for its sender to send again.

Whatever the trigger, a version whose instances name more than one patient
(:mod:`dicom_node.study.patients`) is not queued but ``held``, with the reason, until a person
releases it (``myonode release``); a queued version is compared again when instances join it.

Images in Acquisition is read per series: the count of instances of a series with the same
Acquisition Number must reach it. Vendors differ in what they count; where a scanner counts
the images of all series of one acquisition together, the sum over those series is accepted
when it matches exactly. A header that promises more than ever arrives only delays the study
to the quiet period; it never loses it. A hostile or broken header (inf, NaN, huge or
negative numbers, wrong VRs, a NumberOfFrames the pixel data cannot hold) makes a problem of
that instance, which keeps its study from counting as complete; it never raises, and no work
is done for frames that are not there.

Headers are read once per file (cached while the study has a version waiting), so a sender
that opens an association per image does not make the check quadratic.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.study import REQUIRED_ROLES, Frame
from dicom_node.node.log import log_event
from dicom_node.node.state import Job, State
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.patients import PatientIdentity, identity_of, patient_mismatch
from dicom_node.study.scan import (
    frames_of,
    integer_value,
    read_header,
    sequence_items,
    text_value,
)
from dicom_node.study.stacks import group_studies

log = logging.getLogger("myonode.completion")

DEFAULT_QUIET_PERIOD_S = 10.0
DEFAULT_MAX_WAIT_S = 3600.0


@dataclass(frozen=True)
class InstanceFacts:
    """What one file tells about the counts to expect and the patient (read from its header)."""

    sop_instance_uid: str
    series_uid: str
    acquisition_number: str | None
    images_in_acquisition: int | None
    declared_frames: int | None  # NumberOfFrames
    described_frames: int | None  # items of the per-frame functional groups
    frames: tuple[Frame, ...]
    patient: PatientIdentity | None = None
    problem: str | None = None  # why the instance cannot be judged (frames or counts unreadable)


@dataclass
class Completeness:
    """Whether a study looks complete, and every reason it does not."""

    complete: bool
    reasons: list[str] = field(default_factory=list)


def read_facts(path: Path, rules: DixonRules) -> InstanceFacts | None:
    """Header facts of one stored file; None when it is not DICOM with the UIDs of an
    instance. Whatever its values, it never raises: an image whose frames or counts cannot be
    read keeps what could be read and a ``problem``."""
    try:
        ds = read_header(path)
        uids = [text_value(ds, k) for k in ("SOPInstanceUID", "StudyInstanceUID",
                                            "SeriesInstanceUID")]
    except Exception:  # noqa: BLE001 - pydicom fails in many ways on bytes from the network
        return None
    if not all(uids):
        return None
    problems = []
    try:
        frames = tuple(frames_of(ds, path, rules))
    except ValueError as exc:
        frames = ()
        problems.append(str(exc))
    counts: dict[str, int | None] = {}
    for keyword in ("ImagesInAcquisition", "NumberOfFrames"):
        try:
            counts[keyword] = integer_value(ds, keyword, 0, 2**31 - 1) or None
        except ValueError as exc:
            counts[keyword] = None
            problems.append(str(exc))
    try:
        acquisition = text_value(ds, "AcquisitionNumber") or None
        per_frame = sequence_items(ds, "PerFrameFunctionalGroupsSequence")
    except ValueError as exc:
        acquisition, per_frame = None, None
        problems.append(str(exc))
    return InstanceFacts(
        sop_instance_uid=uids[0],
        series_uid=uids[2],
        acquisition_number=acquisition,
        images_in_acquisition=counts["ImagesInAcquisition"],
        declared_frames=counts["NumberOfFrames"],
        described_frames=len(per_frame) if per_frame is not None else None,
        frames=frames,
        patient=identity_of(ds),
        problem="; ".join(dict.fromkeys(problems)) or None,
    )


def judge(study_uid: str, facts: list[InstanceFacts],
          required_roles: tuple[str, ...] = REQUIRED_ROLES) -> Completeness:
    """Is this study complete by its own headers? (See the module docstring for the rules.)"""
    reasons: list[str] = []
    frames = [f for fact in facts for f in fact.frames if f.study_instance_uid == study_uid]
    studies = group_studies(frames)
    if not studies or not studies[0].stacks:
        reasons.append("no Dixon stack yet")
    for stack in studies[0].stacks if studies else []:
        for role in stack.missing_roles(required_roles):
            reasons.append(f"stack {stack.index}: no {role} images")
        for role in stack.acquired_roles():
            missing = sum(1 for frame in stack.roles[role] if frame is None)
            if missing:
                reasons.append(f"stack {stack.index} {role}: {missing} missing slice(s)")
    reasons.extend(studies[0].incomplete_echoes if studies else [])
    for fact in facts:
        if fact.problem is not None:
            reasons.append(f"instance {fact.sop_instance_uid}: {fact.problem}")
    dixon = [fact for fact in facts if any(f.role for f in fact.frames) or fact.problem]
    for fact in dixon:
        if (fact.declared_frames is not None and fact.described_frames is not None
                and fact.declared_frames != fact.described_frames):
            reasons.append(
                f"instance {fact.sop_instance_uid}: NumberOfFrames {fact.declared_frames} but "
                f"{fact.described_frames} per-frame descriptions"
            )
    reasons.extend(_acquisition_counts(dixon, facts))
    return Completeness(not reasons, reasons)


def _acquisition_counts(dixon: list[InstanceFacts], every: list[InstanceFacts]) -> list[str]:
    """Series whose single-frame instances fall short of their Images in Acquisition."""
    per_series: dict[tuple, set[str]] = defaultdict(set)
    declared: dict[tuple, int] = {}
    for fact in dixon:
        if fact.images_in_acquisition is None or fact.declared_frames is not None:
            continue
        key = (fact.series_uid, fact.acquisition_number)
        per_series[key].add(fact.sop_instance_uid)
        declared[key] = max(declared.get(key, 0), fact.images_in_acquisition)
    per_acquisition: dict[str | None, set[str]] = defaultdict(set)
    for fact in every:
        if fact.declared_frames is None:
            per_acquisition[fact.acquisition_number].add(fact.sop_instance_uid)
    reasons = []
    for key, uids in per_series.items():
        expected = declared[key]
        if len(uids) >= expected or len(per_acquisition[key[1]]) == expected:
            continue
        reasons.append(
            f"series {key[0]} acquisition {key[1]}: {len(uids)} of {expected} images "
            "(ImagesInAcquisition)"
        )
    return reasons


class CompletionMonitor:
    """Queues ``received`` study versions when they are complete, quiet or have waited enough,
    and holds those whose instances name more than one patient.

    ``released(study_uids)`` is called from the SCP's threads and only notes the studies;
    every check runs on the monitor's own thread, so reading headers never holds up a
    sender. Each study is judged on its own: one whose headers cannot be judged is logged
    (``completion.error``) and left to its quiet period, and the others are judged as usual.

    Both clocks start no earlier than the monitor (the node's start): the time the node was
    down is no quiet time, so after a restart a study that was still arriving is given the
    full quiet period for its sender to send again."""

    def __init__(
        self,
        state: State,
        rules: DixonRules,
        quiet_period_s: float = DEFAULT_QUIET_PERIOD_S,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        on_queued: Callable[[int], None] | None = None,
        tick_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.rules = rules
        self.quiet_period_s = quiet_period_s
        self.max_wait_s = max_wait_s
        self.on_queued = on_queued
        self.tick_s = tick_s
        self.clock = clock
        self.started_at = clock()
        self._released: set[str] = set()
        # study -> path -> facts, for the studies with a received or queued version
        self._cache: dict[str, dict[str, InstanceFacts]] = {}
        # queued job -> instances of its study when its patients were last compared
        self._compared: dict[int, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_tick: float | None = None

    def released(self, study_uids: list[str] | set[str]) -> None:
        """An association that carried these studies ended: check them on the next tick."""
        with self._lock:
            self._released.update(study_uids)
        self._wake.set()

    def tick(self, now: float | None = None) -> list[tuple[int, str]]:
        """One round of checks; returns (job id, trigger) of every job queued."""
        now = self.clock() if now is None else now
        with self._lock:
            released, self._released = self._released, set()
        queued = []
        received = self.state.jobs(("received",), limit=10_000)
        for job in received:
            trigger = self._isolated(job, self._trigger, job, now, job.study_uid in released)
            if trigger and self.state.queue_job(job.id, trigger, now=now):
                self._compared[job.id] = len(self.state.study_paths(job.study_uid))
                queued.append((job.id, trigger))
                log_event(log, "job.queued", job_id=job.id, study_uid=job.study_uid,
                          version=job.version, trigger=trigger)
                if self.on_queued:
                    self.on_queued(job.id)
        waiting = self.state.jobs(("queued",), limit=10_000)
        for job in waiting:
            self._isolated(job, self._compare_queued, job)
        self._prune({job.study_uid for job in received + waiting}, {job.id for job in waiting})
        self.last_tick = now
        return queued

    def check(self, study_uid: str) -> Completeness:
        """Completeness of everything received so far for the study."""
        return judge(study_uid, self._facts(study_uid))

    def _isolated(self, job: Job, step: Callable, *args: object) -> str | None:
        """Run one study's step; an error is logged and ends that step only."""
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 - one study's fault must not hold up the others
            log_event(log, "completion.error", logging.ERROR, study_uid=job.study_uid,
                      job_id=job.id, error=repr(exc), traceback=traceback.format_exc())
            return None

    def _trigger(self, job: Job, now: float, released: bool) -> str | None:
        """Why the job is to be queued now, or None; a study of two patients is held."""
        trigger = None
        if now - max(job.created_at, self.started_at) >= self.max_wait_s:
            trigger = "max_wait"
        elif now - max(job.last_instance_at, self.started_at) >= self.quiet_period_s:
            trigger = "quiet_period"
        elif not released:
            return None
        facts = self._facts(job.study_uid)
        if self._held(job, facts):
            return None
        if trigger is None:
            verdict = judge(job.study_uid, facts)
            if verdict.complete:
                return "complete"
            log_event(log, "study.incomplete", study_uid=job.study_uid, job_id=job.id,
                      reasons=verdict.reasons[:10])
        return trigger

    def _compare_queued(self, job: Job) -> None:
        """Instances that joined a queued job (inputs not fixed yet) are compared too."""
        if job.input_max_seq is not None or job.trigger == "released":
            return
        count = len(self.state.study_paths(job.study_uid))
        if self._compared.get(job.id) == count:
            return
        self._held(job, self._facts(job.study_uid))
        self._compared[job.id] = count

    def _held(self, job: Job, facts: list[InstanceFacts]) -> bool:
        """Hold the job when its study's instances name more than one patient."""
        reason = patient_mismatch((f.series_uid, f.patient) for f in facts
                                  if f.patient is not None)
        if reason is None or not self.state.hold_job(job.id, reason):
            return False
        log_event(log, "study.held", logging.ERROR, study_uid=job.study_uid, job_id=job.id,
                  version=job.version, reason=reason,
                  message="not processed; after checking, release it: myonode release "
                          f"{job.id}")
        return True

    def _facts(self, study_uid: str) -> list[InstanceFacts]:
        """Facts of every instance of the study (each file read once)."""
        cache = self._cache.setdefault(study_uid, {})
        facts = []
        for sop_uid, path in self.state.study_paths(study_uid):
            if path not in cache:
                cache[path] = read_facts(Path(path), self.rules) or InstanceFacts(
                    sop_uid, "", None, None, None, None, (),
                    problem="the stored file is no longer readable DICOM")
            facts.append(cache[path])
        return facts

    def _prune(self, studies: set[str], queued: set[int]) -> None:
        """Forget the studies and jobs no longer waiting."""
        for study_uid in set(self._cache) - studies:
            del self._cache[study_uid]
        for job_id in set(self._compared) - queued:
            del self._compared[job_id]

    # -- thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``tick`` on a background thread until ``stop``; the clocks start now."""
        self.started_at = self.clock()
        self._thread = threading.Thread(target=self._run, name="completion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (a tick in progress finishes)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def alive(self) -> bool:
        """For the health check: the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - keep judging other studies; the error is in the log
                log_event(log, "completion.error", logging.ERROR, error=repr(exc),
                          traceback=traceback.format_exc())
            self._wake.wait(self.tick_s)
            self._wake.clear()
