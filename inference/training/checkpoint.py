"""Checkpoints of a training run, so that training that does not finish in one sitting resumes.

After every epoch ``OUT/checkpoint/state.pt`` holds the model, optimiser, epoch, best weights
so far, finished jobs and every random generator's state; ``resume`` continues from it and
gives the same weights as an uninterrupted run. Phantom data is not stored: it is rendered
again from its seeds. A run resumes only with the configuration it was started with.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import torch

from inference.training.config import TrainingConfig, TrainingConfigError, TrainProgress

CHECKPOINT = Path("checkpoint") / "state.pt"

CHECKPOINT_VERSION = 1



def job_key(stage: str, fold: int) -> str:
    """The key of a job in the checkpoint and the package: ``li/fold1``."""
    return f"{stage}/fold{fold + 1}"


def save_atomic(state: dict, path: Path) -> None:
    """Write the checkpoint so that a crash leaves the old one or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (what a checkpoint and a package store)."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def comparable_config(config: TrainingConfig) -> dict[str, Any]:
    """The parts of a config that must not change when a run is resumed."""
    d = config.to_dict()
    for key in ("device", "keep_checkpoint", "command", "cpu_threads"):
        d.pop(key, None)
    return d


def open_state(config: TrainingConfig, out_dir: Path, resume: bool, emit: TrainProgress) -> dict[str, Any]:
    """The run's state: read from ``out_dir``'s checkpoint when resuming, else a new one.

    A checkpoint without ``resume``, one of another format, or one written with a different
    configuration is refused with the reason."""
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise TrainingConfigError(f"{out_dir} holds an unfinished training run ({CHECKPOINT}); resume it or use another folder")
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise TrainingConfigError(f"{checkpoint}: checkpoint format {state.get('version')} is not {CHECKPOINT_VERSION}")
        if state["config"] != comparable_config(config):
            old, new = state["config"], comparable_config(config)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise TrainingConfigError(f"cannot resume: the configuration differs in {changed}")
        emit("line", f"resuming from {checkpoint} ({len(state['completed'])} job(s) finished)")
        return state
    if resume:
        emit("line", f"no checkpoint in {out_dir}: starting a new run")
    return {"version": CHECKPOINT_VERSION, "config": comparable_config(config), "completed": {}, "current": None,
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
