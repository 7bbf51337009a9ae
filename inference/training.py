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

Data never overlaps: training phantoms use seeds >= 1000, validation phantoms 900..999, and
seeds below 900 are reserved for acceptance tests (enforced when the config is read).

Checkpoints: after every epoch ``OUT/checkpoint/state.pt`` holds the model, optimiser,
epoch, best weights so far, finished stages and every random generator's state; ``resume``
continues from it and gives the same weights as an uninterrupted run. Phantom data is not
stored: it is rendered again from its seeds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from myonode_config import config_path
from safetensors.torch import load_file

from inference.augment import AugmentSettings, augment
from inference.model_package import MODEL_KEYS, ModelPackage, ModelPackageError
from inference.muscles import load_muscles
from inference.segment import predict_legs
from inference.sliding_window import autocast_dtype, configure_cpu_threads, pick_device
from inference.training_data import (
    LegCase,
    PhantomSettings,
    list_site_cases,
    phantom_cases,
    sample_patch,
    site_cases,
    split_site_cases,
)
from inference.unet import UNet3D

DEFAULT_CONFIG = "training.yaml"
CHECKPOINT = Path("checkpoint") / "state.pt"
FOLD_SEED_STRIDE = 100_000  # training phantom seeds of fold f start at start + f * stride
MIN_TRAIN_SEED = 1000
VAL_SEEDS = range(900, 1000)
CHECKPOINT_VERSION = 1

# progress(event, text): event "line" (one line per epoch or step) or "tick" (a compact,
# overwritable per-iteration status)
TrainProgress = Callable[[str, str], None]


class TrainingConfigError(ValueError):
    """A training configuration that cannot be used; the message names the field."""


@dataclass(frozen=True)
class StageConfig:
    name: str  # package model key: "li" or "hi"
    infiltration: str  # phantom fat infiltration: "low" or "high"
    phantoms: int
    epochs: int
    learning_rate: float
    train_seed_start: int
    val_seeds: tuple[int, ...]
    init: str | None = None  # an earlier stage whose best fold initialises this one
    time_limit_min: float | None = None


@dataclass(frozen=True)
class TrainingConfig:
    package: dict[str, Any]
    stages: tuple[StageConfig, ...]
    seed: int = 0
    folds: int = 1
    device: str = "auto"
    batch_size: int = 1
    patches_per_case: int = 2
    foreground_fraction: float = 0.0  # share of patches centred on a random muscle (training_data.sample_patch)
    loss_weights: tuple[float, float] = (1.0, 1.0)  # cross-entropy, soft Dice
    weight_decay: float = 0.0
    lr_power: float = 0.9
    val_every: int = 1
    val_overlap: float = 0.25
    phantom: PhantomSettings = field(default_factory=PhantomSettings)
    augmentation: AugmentSettings = field(default_factory=AugmentSettings)
    keep_checkpoint: bool = False
    cpu_threads: int | None = None  # None: every core (configure_cpu_threads)
    site_data: str | None = None  # folder of NIfTI cases (training_data.py)
    init_package: str | None = None  # fine-tune from this package's weights
    command: str = ""  # how training was started (for the model card)

    def with_overrides(
        self,
        phantoms: int | None = None,
        epochs: int | None = None,
        seed: int | None = None,
        device: str | None = None,
        site_data: str | None = None,
        init_package: str | None = None,
        command: str | None = None,
    ) -> TrainingConfig:
        """Command-line overrides: ``phantoms`` and ``epochs`` apply to every stage."""
        stages = tuple(
            dataclasses.replace(
                s,
                phantoms=s.phantoms if phantoms is None else phantoms,
                epochs=s.epochs if epochs is None else epochs,
            )
            for s in self.stages
        )
        config = dataclasses.replace(
            self,
            stages=stages,
            seed=self.seed if seed is None else seed,
            device=self.device if device is None else device,
            site_data=self.site_data if site_data is None else str(site_data),
            init_package=self.init_package if init_package is None else str(init_package),
            command=self.command if command is None else command,
        )
        _check(config)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON/checkpoint safe)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _take(d: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise TrainingConfigError(f"{where} must be a mapping, got {d!r}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise TrainingConfigError(f"{where}: unknown key(s) {unknown}; allowed {sorted(allowed)}")
    return dict(d)


def _settings(cls: type, d: Any, where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = _take(d, names, where)
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    try:
        return cls(**values)
    except TypeError as exc:
        raise TrainingConfigError(f"{where}: {exc}") from exc


def load_training_config(path: str | Path | None = None) -> TrainingConfig:
    """Read a training YAML (default: the embedded ``config/training.yaml``) and check it."""
    source = Path(path) if path else config_path(DEFAULT_CONFIG)
    try:
        with open(source, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise TrainingConfigError(f"cannot read training config {source}: {exc}") from exc
    top = _take(
        raw,
        {"package", "seed", "folds", "device", "stages", "optimisation", "validation", "phantom",
         "augmentation", "keep_checkpoint", "cpu_threads", "site_data", "init_package"},
        str(source),
    )
    stage_keys = {f.name for f in dataclasses.fields(StageConfig)}
    stages = []
    for n, entry in enumerate(top.get("stages") or []):
        values = _take(entry, stage_keys, f"stages[{n}]")
        missing = sorted(stage_keys - set(values) - {"time_limit_min", "init"})
        if missing:
            raise TrainingConfigError(f"stages[{n}]: missing {missing}")
        values["val_seeds"] = tuple(int(v) for v in values["val_seeds"])
        stages.append(StageConfig(**values))
    opt = _take(top.get("optimisation"), {"batch_size", "patches_per_case", "foreground_fraction", "loss", "weight_decay", "lr_power"}, "optimisation")
    loss = _take(opt.get("loss"), {"cross_entropy", "dice"}, "optimisation.loss")
    val = _take(top.get("validation"), {"every", "overlap"}, "validation")
    config = TrainingConfig(
        package=dict(top.get("package") or {}),
        stages=tuple(stages),
        seed=int(top.get("seed", 0)),
        folds=int(top.get("folds", 1)),
        device=str(top.get("device", "auto")),
        batch_size=int(opt.get("batch_size", 1)),
        patches_per_case=int(opt.get("patches_per_case", 2)),
        foreground_fraction=float(opt.get("foreground_fraction", 0.0)),
        loss_weights=(float(loss.get("cross_entropy", 1.0)), float(loss.get("dice", 1.0))),
        weight_decay=float(opt.get("weight_decay", 0.0)),
        lr_power=float(opt.get("lr_power", 0.9)),
        val_every=int(val.get("every", 1)),
        val_overlap=float(val.get("overlap", 0.25)),
        phantom=_settings(PhantomSettings, top.get("phantom"), "phantom"),
        augmentation=_settings(AugmentSettings, top.get("augmentation"), "augmentation"),
        keep_checkpoint=bool(top.get("keep_checkpoint", False)),
        cpu_threads=None if top.get("cpu_threads") is None else int(top["cpu_threads"]),
        site_data=top.get("site_data"),
        init_package=top.get("init_package"),
    )
    _check(config)
    return config


def _check(config: TrainingConfig) -> None:
    problems = []
    if not config.stages:
        problems.append("stages: at least one stage is needed")
    names = [s.name for s in config.stages]
    for n, stage in enumerate(config.stages):
        where = f"stages[{n}] ({stage.name})"
        if stage.name not in MODEL_KEYS:
            problems.append(f"{where}: name must be one of {list(MODEL_KEYS)}")
        if stage.infiltration not in ("low", "high"):
            problems.append(f"{where}: infiltration must be low or high")
        if stage.init is not None and stage.init not in names[:n]:
            problems.append(f"{where}: init must name an earlier stage, got {stage.init!r}")
        if stage.epochs < 1 or stage.phantoms < 0:
            problems.append(f"{where}: epochs must be >= 1 and phantoms >= 0")
        if stage.train_seed_start < MIN_TRAIN_SEED:
            problems.append(f"{where}: train_seed_start must be >= {MIN_TRAIN_SEED} (lower seeds are held out)")
        bad = [s for s in stage.val_seeds if s not in VAL_SEEDS]
        if bad:
            problems.append(f"{where}: val_seeds must lie in 900..999 (seeds < 900 are acceptance data), got {bad}")
        if not stage.learning_rate > 0:
            problems.append(f"{where}: learning_rate must be > 0")
    if len(set(names)) != len(names):
        problems.append("stages: a stage name is used twice")
    if config.folds < 1 or config.batch_size < 1 or config.patches_per_case < 1 or config.val_every < 1:
        problems.append("folds, batch_size, patches_per_case and validation.every must be >= 1")
    if not 0.0 <= config.foreground_fraction <= 1.0:
        problems.append(f"optimisation.foreground_fraction must be in [0, 1], got {config.foreground_fraction}")
    if not 0 <= config.val_overlap < 1:
        problems.append("validation.overlap must be in [0, 1)")
    if min(config.loss_weights) < 0 or sum(config.loss_weights) <= 0:
        problems.append("optimisation.loss weights must be >= 0 and not all 0")
    if problems:
        raise TrainingConfigError("invalid training config:\n  - " + "\n  - ".join(problems))


def package_template(config: TrainingConfig) -> ModelPackage:
    """The package the config describes (metadata only; weights come at the end)."""
    spec = dict(config.package)
    threshold = spec.pop("hi_threshold_ff_pct", 20.0)
    if config.init_package:
        source = ModelPackage.load(config.init_package)
        for key in ("labels", "inputs", "spacing_mm", "patch_size", "network"):
            spec[key] = source.to_dict()[key]
    labels = spec.get("labels") or [m.code for m in load_muscles().muscles]
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
        "models": {name: {"folds": _fold_files(name, config.folds)} for name in stage_names},
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


def _fold_files(stage: str, folds: int) -> list[str]:
    return [f"{stage}/fold{n + 1}.safetensors" for n in range(folds)]


# --------------------------------------------------------------------------------------
# loss and metrics


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: tuple[float, float]) -> tuple[torch.Tensor, float, float]:
    """Weighted cross-entropy + soft Dice loss; returns (loss, ce, dice loss).

    Soft Dice per muscle over the whole batch, averaged over the muscles PRESENT in the
    batch's labels (background left out); a patch without any muscle has no Dice term. A
    muscle absent from a patch must not score: with a smoothing term such a muscle's "Dice"
    is 1 / (predicted mass + 1), which pushes its probability down everywhere in the ~98% of
    thin patches that miss a small muscle, and in thigh-phantom 0.1.0/0.2.0 kept the
    pectineus at a validation Dice of 0. False positives of absent muscles are left to the
    cross-entropy term. (nnU-Net's tiny smoothing has the same effect: no gradient there.)"""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, 2, 3, 4)
    overlap = (probs * onehot).sum(dims)[1:]
    truth = onehot.sum(dims)[1:]
    dice = (2.0 * overlap + 1.0) / (probs.sum(dims)[1:] + truth + 1.0)
    present = truth > 0
    dice_loss = 1.0 - dice[present].mean() if bool(present.any()) else probs.new_zeros(())
    loss = weights[0] * ce + weights[1] * dice_loss
    return loss, float(ce.detach()), float(dice_loss.detach())


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[int, float]:
    """Dice of every class present in ``truth`` (absent muscles are not scored)."""
    out = {}
    for c in range(1, n_classes):
        t = truth == c
        size = int(t.sum())
        if size == 0:
            continue
        p = predicted == c
        out[c] = 2.0 * float((p & t).sum()) / (size + float(p.sum()))
    return out


def validate(
    model: UNet3D,
    cases: Sequence[LegCase],
    package: ModelPackage,
    overlap: float,
    device: torch.device,
) -> dict[str, float]:
    """Mean Dice per muscle code over the validation legs (sliding window, like inference)."""
    model.eval()
    scores: dict[int, list[float]] = {}
    for case in cases:
        probs = predict_legs([model], [case.image.astype(np.float32)], case.pad_values, package.patch_size, overlap, device=device)[0]
        for c, value in dice_per_class(probs.argmax(axis=0), case.labels, len(package.labels) + 1).items():
            scores.setdefault(c, []).append(value)
    model.train()
    return {package.labels[c - 1]: float(np.mean(v)) for c, v in sorted(scores.items())}


# --------------------------------------------------------------------------------------
# data


@dataclass
class StageData:
    train: list[LegCase]
    val: list[LegCase]
    sources: dict[str, Any]


def _site_split(config: TrainingConfig, package: ModelPackage, emit: TrainProgress) -> dict[str, list[tuple[Path, list[LegCase], float]]]:
    """Site cases read once: folder, legs and overall muscle FF, by stage name."""
    if not config.site_data:
        return {}
    threshold = package.hi_threshold_ff_pct if package.hi_threshold_ff_pct is not None else 20.0
    stage_of = {"low": [s.name for s in config.stages if s.infiltration == "low"],
                "high": [s.name for s in config.stages if s.infiltration == "high"]}
    by_stage: dict[str, list] = {s.name: [] for s in config.stages}
    for folder in list_site_cases(config.site_data):
        legs, overall, notes = site_cases(folder, package)
        for note in notes:
            emit("line", f"  {note}")
        level = "high" if np.isfinite(overall) and overall > threshold else "low"
        targets = stage_of[level] or [config.stages[0].name]
        for name in targets:
            by_stage[name].append((folder, legs, overall))
        emit("line", f"  site case {folder.name}: overall muscle FF {overall:.1f}% -> {', '.join(targets)}")
    return by_stage


def _stage_data(
    config: TrainingConfig,
    stage: StageConfig,
    fold: int,
    package: ModelPackage,
    site: Mapping[str, list[tuple[Path, list[LegCase], float]]],
    emit: TrainProgress,
) -> StageData:
    train: list[LegCase] = []
    val: list[LegCase] = []
    seeds = [stage.train_seed_start + fold * FOLD_SEED_STRIDE + n for n in range(stage.phantoms)]
    started = time.perf_counter()
    for n, seed in enumerate(seeds):
        rng = np.random.default_rng([config.seed, fold, seed])
        legs, notes = phantom_cases(seed, stage.infiltration, package, config.phantom, rng)
        train += legs
        for note in notes:
            emit("line", f"  {note}")
        emit("tick", f"{stage.name} fold {fold + 1}: rendering phantom {n + 1}/{len(seeds)}")
    for seed in stage.val_seeds:
        rng = np.random.default_rng([seed, 7])  # fixed whatever the training seed
        legs, _ = phantom_cases(seed, stage.infiltration, package, config.phantom, rng)
        val += legs
    cases = site.get(stage.name, [])
    folders = [c[0] for c in cases]
    train_folders, val_folders = split_site_cases(folders, config.folds, fold)
    for folder, legs, _ in cases:
        (val if folder in val_folders else train).extend(legs)
    emit(
        "line",
        f"{stage.name} fold {fold + 1}: {len(seeds)} training phantoms ({stage.infiltration}), "
        f"{len(stage.val_seeds)} validation phantoms, {len(train_folders)}/{len(val_folders)} site cases "
        f"train/val, {len(train)} training legs, rendered in {time.perf_counter() - started:.0f} s",
    )
    sources = {
        "phantom_seeds": [seeds[0], seeds[-1]] if seeds else [],
        "phantoms": len(seeds),
        "infiltration": stage.infiltration,
        "val_seeds": list(stage.val_seeds),
        "site_train": [p.name for p in train_folders],
        "site_val": [p.name for p in val_folders],
    }
    return StageData(train, val, sources)


# --------------------------------------------------------------------------------------
# checkpoints


def _save_atomic(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


def _comparable(config: TrainingConfig) -> dict[str, Any]:
    """The parts of a config that must not change when a run is resumed."""
    d = config.to_dict()
    for key in ("device", "keep_checkpoint", "command", "cpu_threads"):
        d.pop(key, None)
    return d


# --------------------------------------------------------------------------------------
# training


def _job_key(stage: str, fold: int) -> str:
    return f"{stage}/fold{fold + 1}"


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
    key = _job_key(stage.name, fold)
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
                current["best"] = {"state": _cpu_state(model), "mean_dice": mean, "dice": per_muscle, "epoch": epoch + 1}
        elapsed = current["elapsed_s"] + (time.perf_counter() - started)
        record["epoch_s"] = time.perf_counter() - started
        current["history"].append(record)
        current.update(
            epoch=epoch + 1,
            model=_cpu_state(model),
            optimizer=optimizer.state_dict(),
            rng=rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            elapsed_s=elapsed,
        )
        state["current"] = current
        _save_atomic(state, checkpoint)
        val_text = f"val Dice {record['val_mean_dice']:.3f}" if "val_mean_dice" in record else "val -"
        emit("line", f"{key} epoch {epoch + 1}/{stage.epochs}: loss {record['loss']:.3f} (ce {record['cross_entropy']:.3f}, "
                     f"dice {record['dice_loss']:.3f}) {val_text} lr {record['lr']:.2e} time {record['epoch_s']:.0f} s")
        if over_time and not last:
            emit("line", f"{key}: time limit of {stage.time_limit_min} min reached after epoch {epoch + 1}")
            break
    best = current["best"]
    if best is None:  # nothing validated (no validation data): keep the last weights
        best = {"state": _cpu_state(model), "mean_dice": float("nan"), "dice": {}, "epoch": current["epoch"]}
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
    _save_atomic(state, checkpoint)
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
    if checkpoint.exists() and not resume:
        raise TrainingConfigError(f"{out_dir} holds an unfinished training run ({CHECKPOINT}); resume it or use another folder")
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        if state.get("version") != CHECKPOINT_VERSION:
            raise TrainingConfigError(f"{checkpoint}: checkpoint format {state.get('version')} is not {CHECKPOINT_VERSION}")
        if state["config"] != _comparable(config):
            old, new = state["config"], _comparable(config)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise TrainingConfigError(f"cannot resume: the configuration differs in {changed}")
        emit("line", f"resuming from {checkpoint} ({len(state['completed'])} job(s) finished)")
    else:
        if resume:
            emit("line", f"no checkpoint in {out_dir}: starting a new run")
        state = {"version": CHECKPOINT_VERSION, "config": _comparable(config), "completed": {}, "current": None,
                 "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    device = pick_device(None if config.device == "auto" else config.device)
    if device.type == "cpu":
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        else:
            configure_cpu_threads()
    site = _site_split(config, package, emit)
    for stage in config.stages:
        for fold in range(config.folds):
            key = _job_key(stage.name, fold)
            if key in state["completed"]:
                continue
            data = _stage_data(config, stage, fold, package, site, emit)
            result = _train_job(config, stage, fold, package, data, state, checkpoint, device, emit)
            emit("line", f"{key}: best val Dice {result['mean_dice']:.3f} at epoch {result['best_epoch']}")
    written = _write_package(config, package, state, out_dir, device)
    if not config.keep_checkpoint:
        shutil.rmtree(out_dir / CHECKPOINT.parent, ignore_errors=True)
    emit("line", f"package written to {written}")
    return written


# --------------------------------------------------------------------------------------
# package and model card


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


def _write_package(config: TrainingConfig, package: ModelPackage, state: Mapping[str, Any], out_dir: Path, device: torch.device) -> Path:
    weights = {
        stage.name: [state["completed"][_job_key(stage.name, f)]["state"] for f in range(config.folds)]
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
    order = [_job_key(s.name, f) for s in config.stages for f in range(config.folds)]
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
        f"- command: `{config.command or 'inference.training.train(...)'}`",
        (f"- finished: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')} "
        f"(started {state.get('started', '?')})"),
        f"- machine: {_machine(device)}",
        f"- total training time: {total_s / 60:.1f} min",
        (f"- seed {config.seed}, {config.folds} fold(s); full configuration in training.yaml, "
        "per-epoch history in training_history.json"),
        "",
    ]
    return "\n".join(lines)
