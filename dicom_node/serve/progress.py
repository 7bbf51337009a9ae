"""A job's progress while it runs: written by the job's child, read by the node.

Why: processing a study can take many minutes, and the node's own log is what an operator
watches. The child appends one JSON object per step to ``progress.jsonl`` in its attempt
folder (reading the inputs, then each step of the pipeline as ``process_study`` reports it,
with the sliding-window progress of each model); the job worker reads the new lines while
it waits for the child and logs each as a ``job.progress`` event, and ``myonode status``
shows the last one of a job in progress. The pipeline's own progress messages stay in
``process.log`` as they were.

A line: ``{"step", "status": "started" | "finished" | "running", "elapsed_s"}`` (seconds
since the child started), plus ``step_s`` (a finished step's duration) or ``percent``
(running); a line that cannot be read comes back as status ``note`` with its ``message``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.node.permissions import make_dir, open_private

if TYPE_CHECKING:  # the node imports this module; processing (and torch) only the child
    from dicom_node.process import Progress

PROGRESS_FILE = "progress.jsonl"
FIELDS = ("step", "status", "elapsed_s", "step_s", "percent", "message")

class ProgressWriter:
    """The child's side: ``start``/``finish`` for its own steps, and the ``progress`` of
    ``process_study``; each report is also passed on to ``echo`` when set (the child's
    stderr, which is the job's log; set once processing is imported)."""

    def __init__(self, folder: Path) -> None:
        self.echo: Progress | None = None
        self.path = make_dir(Path(folder)) / PROGRESS_FILE
        self._fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._started = time.monotonic()
        self._pipeline_at = 0.0  # when the pipeline's last step ended (its own clock)

    def _write(self, step: str, status: str, **fields: object) -> None:
        entry = {"step": step, "status": status,
                 "elapsed_s": round(time.monotonic() - self._started, 1), **fields}
        os.write(self._fd, (json.dumps(entry) + "\n").encode())

    def start(self, step: str) -> float:
        """A step of the child's own begins; returns its start (for :meth:`finish`)."""
        self._write(step, "started")
        return time.monotonic()

    def finish(self, step: str, since: float) -> None:
        """A step of the child's own ended."""
        self._write(step, "finished", step_s=round(time.monotonic() - since, 1))

    def step_done(self, step: str, at_s: float) -> None:
        """A pipeline step ended (see :class:`dicom_node.process.Progress`)."""
        if self.echo is not None:
            self.echo.step_done(step, at_s)
        self._write(step, "finished", step_s=round(at_s - self._pipeline_at, 1))
        self._pipeline_at = at_s

    def windows(self, model: str, fraction: float) -> None:
        """A model's sliding window advanced (see :class:`dicom_node.process.Progress`)."""
        if self.echo is not None:
            self.echo.windows(model, fraction)
        self._write(f"segment {model}", "running", percent=round(fraction * 100))

    def close(self) -> None:
        os.close(self._fd)


class ProgressReader:
    """The node's side: the complete lines added since the last :meth:`new_entries`, with
    the fields of a progress line only."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / PROGRESS_FILE
        self._offset = 0

    def new_entries(self) -> list[dict]:
        """Progress lines written since the last call."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for the next look
        self._offset += len(complete)
        return [_entry(line) for line in complete.splitlines() if line.strip()]


def last_progress(folder: Path) -> dict | None:
    """The last complete progress line in ``folder`` (None when there is none)."""
    entries = ProgressReader(folder).new_entries()
    return entries[-1] if entries else None


def _entry(line: bytes) -> dict:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if isinstance(entry, dict):
        return {key: entry[key] for key in FIELDS if key in entry}
    return {"step": "unknown", "status": "note",
            "message": line.decode("utf-8", errors="replace")}
