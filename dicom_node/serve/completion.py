"""When has a study arrived? Early on a complete study, else after a quiet period, else at a cap.

DICOM has no "end of study" message: scanners and PACS send a study in one association or in
many, in any order, sometimes hours apart. So a version of a study (a ``received`` job, see
:mod:`dicom_node.node.state`) is queued for processing by the first of:

* ``complete``: an association that carried instances of the study was released, and the
  study's stacks are complete: every required Dixon role in every stack, no missing slice
  (the stack warnings of :mod:`dicom_node.study.stacks`), and the instance counts the headers
  declare are reached (Images in Acquisition (0020,1002) per series and acquisition;
  NumberOfFrames against the per-frame functional groups of Enhanced MR instances);
* ``quiet_period``: no new instance of the study for ``quiet_period_s`` (default 10 s);
* ``max_wait``: ``max_wait_s`` after the version's first instance, even if instances still
  arrive (a sender trickling images must not hold results back for ever).

Images in Acquisition is read per series: the count of instances of a series with the same
Acquisition Number must reach it. Vendors differ in what they count; where a scanner counts
the images of all series of one acquisition together, the sum over those series is accepted
when it matches exactly. A header that promises more than ever arrives only delays the study
to the quiet period; it never loses it.

Headers are read once per file (cached until the study is queued), so a sender that opens
an association per image does not make the check quadratic.
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

from pydicom.errors import InvalidDicomError

from common.study import REQUIRED_ROLES, Frame
from dicom_node.node.log import log_event
from dicom_node.node.state import State
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import frames_of, read_header
from dicom_node.study.stacks import group_studies

log = logging.getLogger("myonode.completion")

DEFAULT_QUIET_PERIOD_S = 10.0
DEFAULT_MAX_WAIT_S = 3600.0


@dataclass(frozen=True)
class InstanceFacts:
    """What one file tells about the counts to expect (read from its header)."""

    sop_instance_uid: str
    series_uid: str
    acquisition_number: str | None
    images_in_acquisition: int | None
    declared_frames: int | None  # NumberOfFrames
    described_frames: int | None  # items of the per-frame functional groups
    frames: tuple[Frame, ...]
    problem: str | None = None  # why no frames could be read from it


@dataclass
class Completeness:
    """Whether a study looks complete, and every reason it does not."""

    complete: bool
    reasons: list[str] = field(default_factory=list)


def read_facts(path: Path, rules: DixonRules) -> InstanceFacts | None:
    """Header facts of one stored file; None when it is not DICOM with the UIDs of an
    instance. An image whose frames cannot be placed keeps its counts and a ``problem``."""
    try:
        ds = read_header(path)
        uids = (str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError,
            AttributeError):
        return None
    problem = None
    try:
        frames = tuple(frames_of(ds, path, rules))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        frames, problem = (), str(exc)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    return InstanceFacts(
        sop_instance_uid=uids[0],
        series_uid=uids[2],
        acquisition_number=_text_or_none(ds.get("AcquisitionNumber")),
        images_in_acquisition=_positive_int(ds.get("ImagesInAcquisition")),
        declared_frames=_positive_int(ds.get("NumberOfFrames")),
        described_frames=len(per_frame) if per_frame is not None else None,
        frames=frames,
        problem=problem,
    )


def judge(study_uid: str, facts: list[InstanceFacts],
          required_roles: tuple[str, ...] = REQUIRED_ROLES) -> Completeness:
    """Is this study complete by its own headers? (See the module docstring for the rules.)"""
    reasons: list[str] = []
    frames = [f for fact in facts for f in fact.frames if f.study_instance_uid == study_uid]
    studies = group_studies(frames)
    if not studies or not studies[0].stacks:
        return Completeness(False, ["no Dixon stack yet"])
    study = studies[0]
    for stack in study.stacks:
        for role in stack.missing_roles(required_roles):
            reasons.append(f"stack {stack.index}: no {role} images")
        for role, slots in sorted(stack.roles.items()):
            missing = sum(1 for frame in slots if frame is None)
            if missing:
                reasons.append(f"stack {stack.index} {role}: {missing} missing slice(s)")
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


def _positive_int(value: object) -> int | None:
    try:
        number = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _text_or_none(value: object) -> str | None:
    return None if value in (None, "") else str(value)


class CompletionMonitor:
    """Queues ``received`` study versions when they are complete, quiet or have waited enough.

    ``released(study_uids)`` is called from the SCP's threads and only notes the studies;
    every check runs on the monitor's own thread, so reading headers never holds up a
    sender."""

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
        self._released: set[str] = set()
        self._cache: dict[str, InstanceFacts | None] = {}
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
        for job in self.state.jobs(("received",), limit=10_000):
            trigger = None
            if now - job.created_at >= self.max_wait_s:
                trigger = "max_wait"
            elif now - job.last_instance_at >= self.quiet_period_s:
                trigger = "quiet_period"
            elif job.study_uid in released:
                verdict = self.check(job.study_uid)
                if verdict.complete:
                    trigger = "complete"
                else:
                    log_event(log, "study.incomplete", study_uid=job.study_uid,
                              job_id=job.id, reasons=verdict.reasons[:10])
            if trigger and self.state.queue_job(job.id, trigger, now=now):
                self._forget(job.study_uid)
                queued.append((job.id, trigger))
                log_event(log, "job.queued", job_id=job.id, study_uid=job.study_uid,
                          version=job.version, trigger=trigger)
                if self.on_queued:
                    self.on_queued(job.id)
        self.last_tick = now
        return queued

    def check(self, study_uid: str) -> Completeness:
        """Completeness of everything received so far for the study."""
        facts = []
        for _, path in self.state.study_paths(study_uid):
            if path not in self._cache:
                self._cache[path] = read_facts(Path(path), self.rules)
            if self._cache[path] is not None:
                facts.append(self._cache[path])
        return judge(study_uid, facts)

    def _forget(self, study_uid: str) -> None:
        for _, path in self.state.study_paths(study_uid):
            self._cache.pop(path, None)

    # -- thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``tick`` on a background thread until ``stop``."""
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
