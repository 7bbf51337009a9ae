"""Train a model package (LI and HI models, N folds each) on phantoms and/or site data.

The recipe follows Huysmans 2023 (2.2, 2.3.1) where it can on the hardware at hand:

* a 3D U-Net on single-leg patches (left legs mirrored), batch size 1, random patches along
  the leg, 2 patches per leg per epoch, Adam;
* a low-infiltration (LI) model first, then a high-infiltration (HI) model initialised from
  the best LI fold and fine-tuned on highly infiltrated scans; both go into one package with
  LI/HI routing at 20% overall muscle FF;
* N folds per stage. With phantom data a fold is a different set of training subjects and
  seeds; with site data also a different held-out share of the cases.

Departures, and why:

* loss = cross-entropy (the seed's) + soft Dice over the 18 muscles: background is ~90% of
  a patch and small muscles (pectineus, gracilis, gluteus minimus) only a few hundred voxels,
  so cross-entropy alone learns them late; the Dice term weighs every muscle equally
  (nnU-Net's default for the same reason);
* a polynomial learning-rate decay over a fixed number of epochs instead of halving on a
  validation plateau: training here runs a fixed, short budget, where a plateau rule would
  never fire;
* the model kept is the epoch with the best mean validation Dice (the seed stopped on
  validation loss).

The run's parts: its configuration (:mod:`inference.training.config`), the data of each job
(:mod:`~inference.training.stages`, :mod:`~inference.training.data`), loss and validation
(:mod:`~inference.training.loss`), checkpoints to resume from
(:mod:`~inference.training.checkpoint`) and the package it writes
(:mod:`~inference.training.packaging`); this module is the loop over stages, folds and epochs.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from inference.models.package import ModelPackage
from inference.models.unet import UNet3D
from inference.sliding_window import autocast_dtype, configure_cpu_threads, pick_device
from inference.training.augment import augment
from inference.training.checkpoint import (
    CHECKPOINT,
    cpu_state,
    job_key,
    open_state,
    save_atomic,
)
from inference.training.config import StageConfig, TrainingConfig, TrainProgress
from inference.training.data import LegCase, sample_patch
from inference.training.loss import segmentation_loss, validate
from inference.training.packaging import package_template, write_package
from inference.training.stages import StageData, site_split, stage_data


def _initial_weights(
    config: TrainingConfig, stage: StageConfig, fold: int, completed: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Starting weights of a job and where they come from.

    A stage that names an earlier one (``init: li``) starts from that stage's best fold of
    this run, with or without ``--init``: the seed fine-tunes its HI model from its LI model,
    and after fine-tuning LI on new data that LI is the better start for HI. Other stages
    start from the ``--init`` package's model of the same name, else from random weights.
    """
    if stage.init is not None:
        candidates = [(v["mean_dice"], k) for k, v in completed.items() if k.startswith(f"{stage.init}/")]
        best_dice, best_key = max(candidates)
        return completed[best_key]["state"], f"best {stage.init} fold {best_key} (val Dice {best_dice:.3f})"
    if config.init_package:
        source = ModelPackage.load(config.init_package)
        if stage.name in source.models:
            files = source.models[stage.name]
            name = files[fold % len(files)]
            return load_file(str(source.folder / name)), (
                f"package {config.init_package} ({source.name} {source.version}, {name})")
    return None, "random"


def _train_job(
    config: TrainingConfig,
    stage: StageConfig,
    fold: int,
    package: ModelPackage,
    data: StageData,
    state: dict[str, Any],
    checkpoint: Path,
    device: torch.device,
    emit: TrainProgress,
) -> dict[str, Any]:
    key = job_key(stage.name, fold)
    job_index = [s.name for s in config.stages].index(stage.name) * config.folds + fold
    current = state.get("current")
    model = UNet3D(package.network)
    if current is not None and current["job"] == key:
        model.load_state_dict(current["model"])
        init_note = current["init"]
    else:
        torch.manual_seed(config.seed * 1000 + job_index)
        model = UNet3D(package.network)
        weights, init_note = _initial_weights(config, stage, fold, state["completed"])
        if weights is not None:
            model.load_state_dict(weights)
        else:
            _prior_bias(model, data.train, package.network.num_classes)
            init_note += ", output bias = log class frequencies"
        current = {
            "job": key,
            "epoch": 0,
            "init": init_note,
            "history": [],
            "best": None,
            "elapsed_s": 0.0,
            "rng": np.random.default_rng([config.seed, job_index, 12345]).bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "optimizer": None,
        }
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=stage.learning_rate, weight_decay=config.weight_decay)
    if current["optimizer"] is not None:
        optimizer.load_state_dict(current["optimizer"])
    rng = np.random.default_rng()
    rng.bit_generator.state = current["rng"]
    torch.set_rng_state(current["torch_rng"])
    amp = autocast_dtype(device)
    amp = amp if amp == torch.bfloat16 else None  # fp16 would need loss scaling
    emit("line", f"{key}: start at epoch {current['epoch'] + 1}/{stage.epochs}, init {init_note}")

    patches = len(data.train) * config.patches_per_case
    per_epoch = max(1, math.ceil(patches / config.batch_size))
    total = stage.epochs * per_epoch
    spacing = package.spacing_mm
    for epoch in range(current["epoch"], stage.epochs):
        started = time.perf_counter()
        order = rng.permutation(np.repeat(np.arange(len(data.train)), config.patches_per_case))
        losses, ces, dices = [], [], []
        for it in range(per_epoch):
            step = epoch * per_epoch + it
            for group in optimizer.param_groups:
                group["lr"] = stage.learning_rate * (1.0 - step / total) ** config.lr_power
            chosen = order[it * config.batch_size : (it + 1) * config.batch_size]
            if chosen.size == 0:
                chosen = order[: config.batch_size]
            images, labels = [], []
            for index in chosen:
                foreground = config.foreground_fraction > 0 and rng.random() < config.foreground_fraction
                image, label = sample_patch(data.train[index], package.patch_size, rng, foreground)
                image, label = augment(image, label, spacing, config.augmentation, rng)
                images.append(image)
                labels.append(label)
            x = torch.from_numpy(np.stack(images)).to(device)
            y = torch.from_numpy(np.stack(labels).astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = model(x)
            loss, ce, dice_loss = segmentation_loss(logits.float(), y, config.loss_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            ces.append(ce)
            dices.append(dice_loss)
            emit("tick", f"{key} epoch {epoch + 1}/{stage.epochs} {_bar((it + 1) / per_epoch)} "
                         f"{it + 1}/{per_epoch} loss {np.mean(losses):.3f}")
        train_s = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "cross_entropy": float(np.mean(ces)),
            "dice_loss": float(np.mean(dices)),
            "lr": optimizer.param_groups[0]["lr"],
            "train_s": train_s,
        }
        elapsed = current["elapsed_s"] + (time.perf_counter() - started)
        last = epoch + 1 == stage.epochs
        over_time = stage.time_limit_min is not None and elapsed > 60.0 * stage.time_limit_min
        if (epoch + 1) % config.val_every == 0 or last or over_time:
            val_started = time.perf_counter()
            per_muscle = validate(model, data.val, package, config.val_overlap, device) if data.val else {}
            mean = float(np.mean(list(per_muscle.values()))) if per_muscle else float("nan")
            record.update(val_dice=per_muscle, val_mean_dice=mean, val_s=time.perf_counter() - val_started)
            best = current["best"]
            if best is None or not np.isfinite(best["mean_dice"]) or (np.isfinite(mean) and mean > best["mean_dice"]):
                current["best"] = {"state": cpu_state(model), "mean_dice": mean, "dice": per_muscle, "epoch": epoch + 1}
        elapsed = current["elapsed_s"] + (time.perf_counter() - started)
        record["epoch_s"] = time.perf_counter() - started
        current["history"].append(record)
        current.update(
            epoch=epoch + 1,
            model=cpu_state(model),
            optimizer=optimizer.state_dict(),
            rng=rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            elapsed_s=elapsed,
        )
        state["current"] = current
        save_atomic(state, checkpoint)
        val_text = f"val Dice {record['val_mean_dice']:.3f}" if "val_mean_dice" in record else "val -"
        emit("line", f"{key} epoch {epoch + 1}/{stage.epochs}: loss {record['loss']:.3f} (ce {record['cross_entropy']:.3f}, "
                     f"dice {record['dice_loss']:.3f}) {val_text} lr {record['lr']:.2e} time {record['epoch_s']:.0f} s")
        if over_time and not last:
            emit("line", f"{key}: time limit of {stage.time_limit_min} min reached after epoch {epoch + 1}")
            break
    best = current["best"]
    if best is None:  # nothing validated (no validation data): keep the last weights
        best = {"state": cpu_state(model), "mean_dice": float("nan"), "dice": {}, "epoch": current["epoch"]}
    result = {
        "state": best["state"],
        "mean_dice": best["mean_dice"],
        "dice": best["dice"],
        "best_epoch": best["epoch"],
        "epochs_run": current["epoch"],
        "history": current["history"],
        "init": current["init"],
        "train_time_s": current["elapsed_s"],
        "data": data.sources,
    }
    state["completed"][key] = result
    state["current"] = None
    save_atomic(state, checkpoint)
    return result


def _prior_bias(model: UNet3D, cases: Sequence[LegCase], n_classes: int) -> None:
    """Start the output layer at the training labels' class frequencies (log), so a fresh
    network predicts the prior instead of uniform odds: ~90% of a patch is background, and
    learning that first from a uniform start costs hundreds of steps (measured)."""
    counts = np.ones(n_classes)
    for case in cases:
        counts += np.bincount(case.labels.ravel(), minlength=n_classes)[:n_classes]
    with torch.no_grad():
        model.head.bias.copy_(torch.from_numpy(np.log(counts / counts.sum())).float())


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def train(
    config: TrainingConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: TrainProgress | None = None,
) -> Path:
    """Train every stage and fold of ``config`` and write the package to ``out_dir``."""
    out_dir = Path(out_dir)
    emit = progress or (lambda event, text: None)
    package = package_template(config)
    checkpoint = out_dir / CHECKPOINT
    state = open_state(config, out_dir, resume, emit)
    device = pick_device(None if config.device == "auto" else config.device)
    if device.type == "cpu":
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        else:
            configure_cpu_threads()
    site = site_split(config, package, emit)
    for stage in config.stages:
        for fold in range(config.folds):
            key = job_key(stage.name, fold)
            if key in state["completed"]:
                continue
            data = stage_data(config, stage, fold, package, site, emit)
            result = _train_job(config, stage, fold, package, data, state, checkpoint, device, emit)
            emit("line", f"{key}: best val Dice {result['mean_dice']:.3f} at epoch {result['best_epoch']}")
    written = write_package(config, package, state, out_dir, device)
    if not config.keep_checkpoint:
        shutil.rmtree(out_dir / CHECKPOINT.parent, ignore_errors=True)
    emit("line", f"package written to {written}")
    return written

