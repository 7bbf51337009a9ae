"""The training configuration: ``config/training.yaml`` read, checked and overridden.

A run is described by one YAML file (stages LI/HI, folds, optimisation, validation, phantom
and augmentation settings); a site's file names only what it changes, and every unknown key
is an error naming the field. Data never overlaps: training phantoms use seeds >= 1000,
validation phantoms 900..999, and seeds below 900 are reserved for acceptance tests
(enforced here, when the config is read).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from myonode_config import config_path

from inference.models.package import MODEL_KEYS
from inference.training.augment import AugmentSettings
from inference.training.data import PhantomSettings

DEFAULT_CONFIG = "training.yaml"

FOLD_SEED_STRIDE = 100_000  # training phantom seeds of fold f start at start + f * stride

MIN_TRAIN_SEED = 1000

VAL_SEEDS = range(900, 1000)


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
    foreground_fraction: float = 0.0  # share of patches centred on a random muscle (inference.training.data.sample_patch)
    loss_weights: tuple[float, float] = (1.0, 1.0)  # cross-entropy, soft Dice
    weight_decay: float = 0.0
    lr_power: float = 0.9
    val_every: int = 1
    val_overlap: float = 0.25
    phantom: PhantomSettings = field(default_factory=PhantomSettings)
    augmentation: AugmentSettings = field(default_factory=AugmentSettings)
    keep_checkpoint: bool = False
    cpu_threads: int | None = None  # None: every core (configure_cpu_threads)
    site_data: str | None = None  # folder of NIfTI cases (inference/training/data.py)
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

