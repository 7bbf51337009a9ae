"""Shared pieces of the node-state tests: a settable clock, instances recorded as the SCP
would record them, jobs claimed from the state, and result files for the outbox."""

from __future__ import annotations

import shutil

import pydicom
from peers import mr_dataset


class Clock:
    """A clock the test sets (``clock.now += 5``) for code that takes ``clock=``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def receive(state, clock, paths, spool):
    """Record files as the SCP would (copies in a spool folder)."""
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = spool / f"{ds.SOPInstanceUID}.dcm"
        shutil.copy(path, target)
        state.record_instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                              str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(target),
                              now=clock())
    return str(ds.StudyInstanceUID)


def started_job(state, study="1.2.826.0.1.3680043.8.498.1", version_instances=1):
    """A job of ``study`` (with that many instances recorded), queued and claimed."""
    for n in range(version_instances):
        outcome = state.record_instance(study, f"{study}.1", f"{study}.2.{n}",
                                        "1.2.840.10008.5.1.4.1.1.4", f"/spool/{n}.dcm")
    state.queue_job(outcome.job_id, "complete")
    return state.claim_next_job()


def result_files(folder, n=3):
    """Result instances to deliver (MR images stand in for SEG/SR payloads: the outbox
    delivers any instance the same way)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n):
        ds = mr_dataset()
        ds.SeriesDescription = "myonode thigh muscles stack 0"
        path = folder / f"r{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(("seg", path))
    return paths
