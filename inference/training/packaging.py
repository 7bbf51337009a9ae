"""What a training run writes: the model package (model.yaml + safetensors weights), its
training history and configuration, and the model card.

The package's metadata comes from the training config's ``package`` section (or from the
``--init`` package being fine-tuned); the card says what the model is, what it was trained on,
how well it validated, and on which machine and for how long it trained.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from common.muscles import load_muscles
from inference.models.package import ModelPackage, ModelPackageError
from inference.training.checkpoint import job_key
from inference.training.config import TrainingConfig, TrainingConfigError


def package_template(config: TrainingConfig) -> ModelPackage:
    """The package the config describes (metadata only; weights come at the end)."""
    spec = dict(config.package)
    threshold = spec.pop("hi_threshold_ff_pct", 20.0)
    if config.init_package:
        source = ModelPackage.load(config.init_package)
        for key in ("labels", "inputs", "spacing_mm", "patch_size", "network"):
            spec[key] = source.to_dict()[key]
    # The default label set is every muscle of the model's region (config/muscles.yaml).
    region_muscles = load_muscles().for_region(spec.get("anatomy", "thigh")).muscles
    labels = spec.get("labels") or [m.code for m in region_muscles]
    network = dict(spec.get("network") or {})
    network.setdefault("in_channels", len(spec.get("inputs") or []))
    network.setdefault("num_classes", len(labels) + 1)
    stage_names = [s.name for s in config.stages]
    d = {
        "format_version": 1,
        "name": spec.get("name", "thigh"),
        "version": str(spec.get("version", "0.1")),
        "anatomy": spec.get("anatomy", "thigh"),
        "intended_use": spec.get("intended_use", ""),
        "training_data": spec.get("training_data", ""),
        "labels": list(labels),
        "inputs": spec.get("inputs"),
        "spacing_mm": spec.get("spacing_mm"),
        "patch_size": spec.get("patch_size"),
        "network": network,
        "models": {name: {"folds": fold_files(name, config.folds)} for name in stage_names},
    }
    if len(stage_names) == 2:
        d["routing"] = {"hi_threshold_ff_pct": threshold}
    unknown = sorted(set(spec) - set(d) - {"hi_threshold_ff_pct"})
    if unknown:
        raise TrainingConfigError(f"package: unknown key(s) {unknown}")
    try:
        return ModelPackage.from_dict(d, where="training config package")
    except ModelPackageError as exc:
        raise TrainingConfigError(str(exc)) from exc


def fold_files(stage: str, folds: int) -> list[str]:
    return [f"{stage}/fold{n + 1}.safetensors" for n in range(folds)]


def _training_data_text(config: TrainingConfig, state: Mapping[str, Any]) -> str:
    parts = []
    for stage in config.stages:
        jobs = [v for k, v in state["completed"].items() if k.startswith(f"{stage.name}/")]
        phantoms = sum(j["data"]["phantoms"] for j in jobs)
        sites = sorted({c for j in jobs for c in j["data"]["site_train"]})
        text = f"{stage.name}: {phantoms} synthetic phantom subjects ({stage.infiltration} infiltration"
        text += f", seeds from {stage.train_seed_start})"
        if sites:
            text += f" and {len(sites)} site cases"
        parts.append(text)
    return "; ".join(parts) + ". Synthetic data from inference/phantom, not patient data."


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu}, {cores} cores, {platform.system()} {platform.release()}, torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text


def write_package(config: TrainingConfig, package: ModelPackage, state: Mapping[str, Any], out_dir: Path, device: torch.device) -> Path:
    """Write the package with the best weights of every job, its history, config and card."""
    weights = {
        stage.name: [state["completed"][job_key(stage.name, f)]["state"] for f in range(config.folds)]
        for stage in config.stages
    }
    package = dataclasses.replace(package, training_data=_training_data_text(config, state))
    saved = package.save(out_dir, weights)
    history = {k: {kk: vv for kk, vv in v.items() if kk != "state"} for k, v in state["completed"].items()}
    with open(out_dir / "training_history.json", "w", encoding="utf-8") as handle:
        json.dump(history, handle, indent=1)
    with open(out_dir / "training.yaml", "w", encoding="utf-8") as handle:
        yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
    (out_dir / "MODEL_CARD.md").write_text(model_card(config, saved, state, device), encoding="utf-8")
    return out_dir


def model_card(config: TrainingConfig, package: ModelPackage, state: Mapping[str, Any], device: torch.device) -> str:
    """MODEL_CARD.md: what the model is, what it was trained on, how well it validated."""
    completed = state["completed"]
    total_s = sum(v["train_time_s"] for v in completed.values())
    lines = [
        f"# Model card: {package.name} {package.version}",
        "",
        ("**Trained on synthetic phantom data only. NOT for clinical use.** "
        "Validation figures below are on held-out synthetic phantoms; they say nothing about "
        "real patient scans."),
        "",
        "## What it does",
        "",
        (f"Segments the {len(package.labels)} thigh muscles of Huysmans et al. 2023 (Table 1) in "
        "each leg of a stitched Dixon study: single-leg 3D U-Net (left leg mirrored), "
        "sliding window, LI/HI routing at "
        f"{package.hi_threshold_ff_pct if package.hi_threshold_ff_pct is not None else '-'}% overall muscle FF."),
        "",
        f"- inputs: {', '.join(f'{s.role} ({s.normalisation})' for s in package.inputs)}",
        (f"- model resolution: {' x '.join(f'{v:g}' for v in package.spacing_mm)} mm (slice x row x column); "
        "inputs are resampled to it and labels interpolated back to the input grid"),
        (f"- patch: {' x '.join(str(v) for v in package.patch_size)} voxels; network widths "
        f"{list(package.network.widths)}, strides {[list(s) for s in package.network.strides]}"),
        "- models: " + ", ".join(f"{k} ({len(v)} fold{'s' if len(v) > 1 else ''})" for k, v in package.models.items()),
        "",
        "## Training data",
        "",
        package.training_data,
        "",
        ("Phantom studies have 1, 2 or 3 stacks of 280 mm (23% overlap) rendered at the model "
        "spacing, per-stack Rician noise and coil falloff, random SNR "
        f"{config.phantom.snr[0]:g}-{config.phantom.snr[1]:g} and global intensity scale "
        f"{config.phantom.intensity_scale[0]:g}-{config.phantom.intensity_scale[1]:g}. Augmentation: "
        f"rotation +-{config.augmentation.rotation_deg:g} deg, tilt +-{config.augmentation.tilt_deg:g} deg, "
        f"scale {config.augmentation.scale[0]:g}-{config.augmentation.scale[1]:g}, Gaussian noise, "
        "per-channel intensity scale, smooth bias field. Loss: cross-entropy + soft Dice."),
        "",
        "## Validation (held-out phantom subjects, Dice at the model resolution)",
        "",
    ]
    codes = list(package.labels)
    order = [job_key(s.name, f) for s in config.stages for f in range(config.folds)]
    keys = [k for k in order if k in completed]
    lines.append("| muscle | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for code in codes:
        cells = [f"{completed[k]['dice'][code]:.3f}" if code in completed[k]["dice"] else "-" for k in keys]
        lines.append(f"| {code} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{completed[k]['mean_dice']:.3f}**" for k in keys) + " |")
    lines.append("")
    for k in keys:
        v = completed[k]
        data = v["data"]
        lines.append(
            f"- {k}: best epoch {v['best_epoch']}/{v['epochs_run']}, init {v['init']}, "
            f"{data['phantoms']} training phantoms, validation phantom seeds {data['val_seeds']}, "
            f"training time {v['train_time_s'] / 60:.1f} min"
        )
    lines += [
        "",
        "## Provenance",
        "",
        f"- command: `{config.command or 'inference.training.loop.train(...)'}`",
        (f"- finished: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} "
        f"(started {state.get('started', '?')})"),
        f"- machine: {_machine(device)}",
        f"- total training time: {total_s / 60:.1f} min",
        (f"- seed {config.seed}, {config.folds} fold(s); full configuration in training.yaml, "
        "per-epoch history in training_history.json"),
        "",
    ]
    return "\n".join(lines)

