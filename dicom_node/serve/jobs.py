"""The job worker: runs queued study versions through ``myonode process``, one at a time.

Why a subprocess per job: the pipeline loads torch and a model and may take gigabytes; a
crash, an out-of-memory kill or a hung CUDA call then ends one job (recorded as failed, with
its log), never the node that keeps receiving studies. The child dies with the node: the
Linux parent-death signal is set between fork and exec (before the child's interpreter
runs, so even a child still importing torch is killed), and a child whose node died before
that finds itself orphaned and kills itself. A node killed with ``kill -9`` therefore leaves
no orphan writing results; on restart the job is still ``processing`` in the state and runs
again from its fixed inputs (:meth:`State.resume_unfinished`). Nothing was in the outbox
yet, so nothing is sent twice.

Layout under ``<data_dir>/jobs/job-<id>/``: ``input/`` holds hard links (or copies) of the
instances the job was given when it started, so a failed job keeps its exact inputs even
when the study receives more; ``attempt-<n>/`` holds what run ``n`` wrote (labels, results,
SEG, SR, ``process.log``, ``progress.jsonl``). While the child runs, its progress lines
(:mod:`dicom_node.serve.progress`) become ``job.progress`` events of the node's log.
The child runs with the node's umask (:mod:`dicom_node.node.permissions`), so what it
writes is readable by the node's user and group only.

Run as ``python -m dicom_node.serve.jobs INPUT OUTPUT [--config FILE] [--study UID]`` it is the
child: the same code path as ``myonode process``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from dicom_node.node.log import log_event
from dicom_node.node.permissions import UMASK, make_dir, open_private
from dicom_node.node.state import Job, State
from dicom_node.send.outbox import Outbox
from dicom_node.serve.progress import ProgressReader, ProgressWriter

log = logging.getLogger("myonode.jobs")

MANIFEST = "manifest.json"
EXIT_FAILED = 3
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Looked up in the node, once: the forked child must not load libraries before exec.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


class JobWorker:
    """Claims queued jobs and runs each in a child process; results go to the outbox."""

    def __init__(
        self,
        state: State,
        data_dir: Path,
        outbox: Outbox,
        pipeline_config: Path | None = None,
        rules_path: Path | None = None,
        timeout_s: float | None = None,
        tick_s: float = 0.5,
        python: str = sys.executable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.jobs_dir = Path(data_dir) / "jobs"
        self.outbox = outbox
        self.pipeline_config = pipeline_config
        self.rules_path = rules_path
        self.timeout_s = timeout_s
        self.tick_s = tick_s
        self.python = python
        self.clock = clock
        self.current_job: int | None = None
        self._child: subprocess.Popen | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_poll: float | None = None

    def job_dir(self, job_id: int) -> Path:
        """The folder of one job (inputs and attempts)."""
        return self.jobs_dir / f"job-{job_id}"

    def run_once(self) -> Job | None:
        """Process the oldest queued job, if any; returns it as it ended."""
        self.last_poll = self.clock()
        job = self.state.claim_next_job(now=self.clock())
        if job is None:
            return None
        self.current_job = job.id
        log_event(log, "job.processing", job_id=job.id, study_uid=job.study_uid,
                  version=job.version, attempt=job.attempts, inputs=job.input_count)
        try:
            self._process(job)
        except Exception as exc:  # noqa: BLE001 - a bug must fail this job, not leave it processing
            self._fail(job, f"internal error: {exc!r}")
        finally:
            self.current_job = None
        return self.state.job(job.id)

    def _process(self, job: Job) -> None:
        try:
            inputs = self._link_inputs(job)
        except OSError as exc:
            self._fail(job, f"inputs unavailable: {exc}")
            return
        out_dir = self.job_dir(job.id) / f"attempt-{job.attempts}"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        make_dir(out_dir)
        error = self._run_child(job, inputs, out_dir)
        if self._stop.is_set() and error is not None:
            log_event(log, "job.interrupted", job_id=job.id,
                      message="stopped during processing; the job resumes at the next start")
            return
        if error is not None:
            self._fail(job, error)
            return
        try:
            manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
            files = [("seg", Path(p)) for p in manifest["seg"]] + [("sr", Path(manifest["sr"]))]
            items = self.outbox.store_results(job, files)
        except (OSError, KeyError, ValueError) as exc:
            self._fail(job, f"results unusable: {exc}")
            return
        next_state = self.outbox.commit(job, items)
        done = self.state.job(job.id)
        log_event(log, "job.processed", job_id=job.id, study_uid=job.study_uid,
                  version=job.version, results=len(items), next_state=next_state,
                  processing_s=round((done.sending_at or self.clock()) - (done.started_at or 0), 2),
                  timings_s=manifest.get("timings_s"))

    def _fail(self, job: Job, error: str) -> None:
        self.state.fail_job(job.id, "processing", error, now=self.clock())
        log_event(log, "job.failed", logging.ERROR, job_id=job.id, study_uid=job.study_uid,
                  stage="processing", error=error)

    def _link_inputs(self, job: Job) -> Path:
        folder = make_dir(self.job_dir(job.id) / "input")
        for sop_uid, source in self.state.study_paths(job.study_uid, job.input_max_seq):
            target = folder / f"{sop_uid}.dcm"
            if target.exists():
                continue
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
        return folder

    def _run_child(self, job: Job, inputs: Path, out_dir: Path) -> str | None:
        command = [self.python, "-m", "dicom_node.serve.jobs", str(inputs), str(out_dir),
                   "--study", job.study_uid]
        if self.pipeline_config is not None:
            command += ["--config", str(self.pipeline_config)]
        if self.rules_path is not None:
            command += ["--rules", str(self.rules_path)]
        log_path = out_dir / "process.log"
        started = self.clock()
        progress = ProgressReader(out_dir)
        with open(open_private(log_path, os.O_WRONLY | os.O_TRUNC), "wb") as log_file:
            self._child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, umask=UMASK,
                                           preexec_fn=_dies_with(os.getpid()))
            try:
                code = self._wait_child(lambda: self._log_progress(job, progress))
            finally:
                self._child = None
        if code == 0:
            return None
        if code is None:
            return f"timed out after {self.timeout_s:.0f} s (log: {log_path})"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            return (f"processing killed by signal {name} after {self.clock() - started:.0f} s "
                    f"(out of memory?); log: {log_path}")
        return f"{_last_error(log_path)} (log: {log_path})"

    def _log_progress(self, job: Job, progress: ProgressReader) -> None:
        for entry in progress.new_entries():
            log_event(log, "job.progress", job_id=job.id, attempt=job.attempts, **entry)

    def _wait_child(self, on_tick: Callable[[], None]) -> int | None:
        """The child's exit code; None on timeout. Ends the child when the worker stops.
        ``on_tick`` runs while waiting, and once more when the child has ended."""
        assert self._child is not None
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            try:
                code = self._child.wait(timeout=0.2)
                on_tick()
                return code
            except subprocess.TimeoutExpired:
                on_tick()
            if self._stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                self._child.terminate()
                try:
                    self._child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._child.kill()
                    self._child.wait()
                return None if not self._stop.is_set() else self._child.returncode

    # -- thread ------------------------------------------------------------------------------

    def wake(self) -> None:
        """A job was queued: look now."""
        self._wake.set()

    def start(self) -> None:
        """Work on a background thread until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop; a job in progress is ended and stays ``processing`` (it resumes at start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def alive(self) -> bool:
        """For the health check: the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once() is not None
            except Exception as exc:  # noqa: BLE001 - one broken job must not stop the queue
                log_event(log, "jobs.error", logging.ERROR, error=repr(exc),
                          traceback=traceback.format_exc())
                worked = False
            if not worked:
                self._wake.wait(self.tick_s)
                self._wake.clear()


def _last_error(log_path: Path) -> str:
    """The child's ``error:`` line, else the end of its log."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "processing failed (no log)"
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    tail = " | ".join(line.strip() for line in lines[-5:] if line.strip())
    return f"processing failed: {tail or 'no output'}"


# -- the child ---------------------------------------------------------------------------------


def _dies_with(node_pid: int) -> Callable[[], None] | None:
    """What the forked child runs before exec: ask Linux to SIGKILL it when the node dies,
    and kill itself if the node died already (after fork, before ``prctl``). Only the
    ``prctl`` looked up in the node and ``os`` calls: no imports, no allocation of locks."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL

    def tie() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != node_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return tie


def child_main(argv: list[str] | None = None) -> int:
    """Process one job's inputs into its attempt folder (``python -m dicom_node.serve.jobs``)."""
    parser = argparse.ArgumentParser(prog="python -m dicom_node.serve.jobs")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--study")
    parser.add_argument("--config")
    parser.add_argument("--rules")
    args = parser.parse_args(argv)
    progress = ProgressWriter(Path(args.output))
    try:
        since = progress.start("imports")
        from dicom_node.process import (
            Progress,
            load_settings,
            process_study,
            select_study,
        )
        from dicom_node.study.dixon_roles import DixonRules

        progress.echo = Progress()
        settings = load_settings(Path(args.config) if args.config else None)
        progress.finish("imports", since)
        since = progress.start("reading")
        study = select_study(Path(args.input), DixonRules.load(args.rules), args.study)
        progress.finish("reading", since)
        for warning in study.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        since = progress.start("pipeline")
        result = process_study(study, Path(args.output), settings, progress=progress)
        progress.finish("pipeline", since)
    except Exception as exc:  # noqa: BLE001 - the child's last word: the job's error, traceback in its log
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        progress.close()
    if result.sr_path is None or not result.seg_paths:
        print("error: the pipeline wrote no SEG or SR", file=sys.stderr, flush=True)
        return EXIT_FAILED
    manifest = {
        "seg": [str(p) for p in result.seg_paths],
        "sr": str(result.sr_path),
        "timings_s": result.results.get("timings_s"),
        "warnings": result.results.get("warnings", []),
    }
    (Path(args.output) / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
