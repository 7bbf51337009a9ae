"""The data of one training job (a stage and a fold): phantoms rendered from seeds, validation
phantoms, and a site's cases split between training and validation.

With phantom data a fold is a different set of training subjects and seeds; with site data
also a different held-out share of the cases. Site cases go to the LI or HI stage by their
overall muscle FF, with the package's routing threshold.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.models.package import ModelPackage
from inference.training.config import (
    FOLD_SEED_STRIDE,
    StageConfig,
    TrainingConfig,
    TrainProgress,
)
from inference.training.data import (
    LegCase,
    list_site_cases,
    phantom_cases,
    site_cases,
    split_site_cases,
)


@dataclass
class StageData:
    """Training and validation legs of one job, and where they came from (for the model card)."""

    train: list[LegCase]
    val: list[LegCase]
    sources: dict[str, Any]


def site_split(config: TrainingConfig, package: ModelPackage, emit: TrainProgress) -> dict[str, list[tuple[Path, list[LegCase], float]]]:
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


def stage_data(
    config: TrainingConfig,
    stage: StageConfig,
    fold: int,
    package: ModelPackage,
    site: Mapping[str, list[tuple[Path, list[LegCase], float]]],
    emit: TrainProgress,
) -> StageData:
    """Render the phantoms of ``stage`` and ``fold`` and add its share of the site cases."""
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

