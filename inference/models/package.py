"""Model packages: a folder with ``model.yaml`` and one safetensors file per fold.

Why a folder and not a pickled checkpoint: a site must be able to read what a model is for,
which labels and inputs it expects and how it was trained before running it, and loading it
must never execute code (safetensors holds tensors only).

``model.yaml``::

    format_version: 1
    name: huysmans-thigh
    version: "1.0"
    anatomy: thigh
    intended_use: free text
    training_data: free text
    labels: [RF, VL, VM, ...]          # muscle codes in class order; class 0 is background
    inputs:                            # network channels in order
      - role: in_phase
        normalisation: {method: percentile_range, lower_pct: 0.5, upper_pct: 99.5}
      - role: out_of_phase
        normalisation: {method: percentile_range, lower_pct: 0.5, upper_pct: 99.5}
    spacing_mm: [2.0, 1.2, 1.2]        # [dz, dy, dx] the network was trained at
    patch_size: [80, 384, 192]         # [k, j, i] of one single-leg patch
    network: {...}                     # inference.models.unet.UNetConfig mapping
    models:                            # low / high fat infiltration models (seed 2.3.1)
      li: {folds: [li/fold1.safetensors, ...]}
      hi: {folds: [hi/fold1.safetensors, ...]}
    routing: {hi_threshold_ff_pct: 20}  # required when both li and hi are present

LI and HI share one network config because the seed's HI models are the LI model fine-tuned
on HI scans (same architecture). A package may hold only ``li`` or only ``hi``.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from inference.models.unet import UNet3D, UNetConfig, UNetConfigError

FORMAT_VERSION = 1
MODEL_FILE = "model.yaml"
ROLES = ("water", "fat", "in_phase", "out_of_phase", "fat_fraction")
MODEL_KEYS = ("li", "hi")
NORMALISATIONS: dict[str, dict[str, Any]] = {
    # the seed used raw intensities (one scanner, one protocol; its discussion section)
    "none": {},
    # Rohm 2021 range-normalised 0..100; robust percentiles instead of min/max
    "percentile_range": {"lower_pct": 0.5, "upper_pct": 99.5, "scale": 1.0, "clip": True},
    # Musclesense (Kanber): zero mean, unit SD; optionally only over voxels above
    # foreground_fraction x p99 so that air does not dominate the statistics
    "zscore": {"foreground_fraction": 0.0},
}
_TOP_KEYS = {
    "format_version", "name", "version", "anatomy", "intended_use", "training_data", "labels",
    "inputs", "spacing_mm", "patch_size", "network", "models", "routing",
}


class ModelPackageError(ValueError):
    """A malformed package; ``problems`` lists every defect found, each naming its field."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"invalid model package {where}:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class InputSpec:
    """One network input channel: the Dixon role it is fed from and how it is scaled."""

    role: str
    normalisation: str = "none"
    params: Mapping[str, Any] = field(default_factory=dict)

    def normalise(self, volume: np.ndarray) -> np.ndarray:
        """Scale a whole (both-leg) volume; do it before splitting so both legs match."""
        data = np.asarray(volume, dtype=np.float32)
        p = {**NORMALISATIONS[self.normalisation], **self.params}
        if self.normalisation == "percentile_range":
            lo, hi = np.percentile(data, [p["lower_pct"], p["upper_pct"]])
            out = (data - lo) / max(float(hi - lo), 1e-12)
            if p["clip"]:
                out = np.clip(out, 0.0, 1.0)
            return (out * p["scale"]).astype(np.float32)
        if self.normalisation == "zscore":
            sample = data
            if p["foreground_fraction"] > 0:
                sample = data[data > p["foreground_fraction"] * np.percentile(data, 99.0)]
            return ((data - sample.mean()) / max(float(sample.std()), 1e-12)).astype(np.float32)
        return data

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "normalisation": {"method": self.normalisation, **self.params}}


@dataclass(frozen=True)
class ModelPackage:
    """A validated model package; ``folder`` is where its weight files are (None if unsaved)."""

    name: str
    version: str
    anatomy: str
    labels: tuple[str, ...]
    inputs: tuple[InputSpec, ...]
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    network: UNetConfig
    models: Mapping[str, tuple[str, ...]]  # "li"/"hi" -> fold weight files, relative paths
    hi_threshold_ff_pct: float | None = None
    intended_use: str = ""
    training_data: str = ""
    folder: Path | None = None

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(spec.role for spec in self.inputs)

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], allowed_codes: Iterable[str] | None = None, where: str = "model.yaml"
    ) -> ModelPackage:
        """Validate the metadata of ``model.yaml`` (weights are checked by :meth:`load`)."""
        problems: list[str] = []
        package = _parse(d, _allowed(allowed_codes), problems)
        if problems:
            raise ModelPackageError(where, problems)
        return package

    @classmethod
    def load(cls, folder: str | Path, allowed_codes: Iterable[str] | None = None) -> ModelPackage:
        """Read and fully validate a package folder without loading the weight data.

        ``allowed_codes`` are the muscle codes a label may use; by default those of
        ``config/muscles.yaml`` (``common.muscles.load_muscles``).
        """
        folder = Path(folder)
        yaml_path = folder / MODEL_FILE
        if not yaml_path.is_file():
            raise ModelPackageError(str(folder), [f"missing file {MODEL_FILE}"])
        try:
            with open(yaml_path, encoding="utf-8") as handle:
                d = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ModelPackageError(str(folder), [f"{MODEL_FILE} is not valid YAML: {exc}"]) from exc
        problems: list[str] = []
        package = _parse(d, _allowed(allowed_codes), problems)
        if package is not None:
            package = replace(package, folder=folder)
            problems += _check_weight_files(package)
        if problems:
            raise ModelPackageError(str(folder), problems)
        return package

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "anatomy": self.anatomy,
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "labels": list(self.labels),
            "inputs": [spec.to_dict() for spec in self.inputs],
            "spacing_mm": list(self.spacing_mm),
            "patch_size": list(self.patch_size),
            "network": self.network.to_dict(),
            "models": {key: {"folds": list(files)} for key, files in self.models.items()},
        }
        if self.hi_threshold_ff_pct is not None:
            d["routing"] = {"hi_threshold_ff_pct": self.hi_threshold_ff_pct}
        return d

    def save(
        self,
        folder: str | Path,
        weights: Mapping[str, Sequence[nn.Module | Mapping[str, torch.Tensor]]] | None = None,
        allowed_codes: Iterable[str] | None = None,
    ) -> ModelPackage:
        """Write a complete package and return it as loaded back (so it is validated).

        ``weights`` gives, per model key, one network or state dict per fold file; without it
        the weight files are copied from the folder this package was loaded from.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for key, files in self.models.items():
            if weights is not None:
                given = weights.get(key, ())
                if len(given) != len(files):
                    raise ModelPackageError(
                        str(folder), [f"models.{key}: {len(files)} fold files but {len(given)} weights given"]
                    )
            elif self.folder is None:
                raise ModelPackageError(str(folder), ["no weights given and the package has no source folder"])
            for index, name in enumerate(files):
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if weights is not None:
                    state = weights[key][index]
                    if isinstance(state, nn.Module):
                        state = state.state_dict()
                    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
                    save_file(tensors, str(target), metadata={"package": self.name, "model": key, "fold": str(index)})
                    _readable_like_other_files(target)
                elif (self.folder / name).resolve() != target.resolve():
                    shutil.copyfile(self.folder / name, target)
        with open(folder / MODEL_FILE, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False, allow_unicode=True)
        return ModelPackage.load(folder, allowed_codes)

    def build_networks(self, device: str | torch.device = "cpu") -> dict[str, list[UNet3D]]:
        """One network per fold for each model key, weights loaded, in eval mode on ``device``."""
        if self.folder is None:
            raise ModelPackageError(self.name, ["package has no folder to load weights from"])
        networks: dict[str, list[UNet3D]] = {}
        for key, files in self.models.items():
            networks[key] = []
            for name in files:
                net = UNet3D(self.network)
                net.load_state_dict(load_file(str(self.folder / name)), strict=True)
                networks[key].append(net.to(device).eval())
        return networks

    def model_for(self, overall_ff_pct: float) -> str:
        """Which model to use for a scan of this overall muscle FF% (seed: LI < 20 <= HI)."""
        if len(self.models) == 1:
            return next(iter(self.models))
        return "hi" if overall_ff_pct >= self.hi_threshold_ff_pct else "li"


def _allowed(allowed_codes: Iterable[str] | None) -> set[str]:
    if allowed_codes is not None:
        return set(allowed_codes)
    from common.muscles import (
        load_muscles,  # the project's muscle table (config/muscles.yaml)
    )

    return {muscle.code for muscle in load_muscles().muscles}


def _text(d: Mapping[str, Any], key: str, problems: list[str], required: bool = True) -> str:
    value = d.get(key)
    if value is None:
        if required:
            problems.append(f"{key} is missing")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        problems.append(f"{key} must be text, got {value!r}")
        return ""
    return str(value)


def _triple(value: Any, key: str, kind: type, problems: list[str]) -> tuple | None:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        problems.append(f"{key} must be a list of 3 numbers [k, j, i], got {value!r}")
        return None
    out = []
    for v in value:
        ok = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int)
        if not ok or not math.isfinite(v) or v <= 0:
            what = "positive finite numbers (mm)" if kind is float else "positive integers"
            problems.append(f"{key} must hold {what}, got {value!r}")
            return None
        out.append(kind(v))
    return tuple(out)


def _parse_inputs(raw: Any, problems: list[str]) -> tuple[InputSpec, ...]:
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        problems.append(f"inputs must be a non-empty list of {{role, normalisation}}, got {raw!r}")
        return ()
    specs = []
    for n, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or "role" not in entry:
            problems.append(f"inputs[{n}]: role is missing")
            continue
        role = entry["role"]
        if role not in ROLES:
            problems.append(f"inputs[{n}]: unknown role {role!r}; allowed {list(ROLES)}")
            continue
        norm = entry.get("normalisation", {"method": "none"})
        if not isinstance(norm, Mapping) or norm.get("method") not in NORMALISATIONS:
            problems.append(f"inputs[{n}] ({role}): normalisation.method must be one of {list(NORMALISATIONS)}")
            continue
        method = norm["method"]
        params = {k: v for k, v in norm.items() if k != "method"}
        unknown = sorted(set(params) - set(NORMALISATIONS[method]))
        if unknown:
            problems.append(f"inputs[{n}] ({role}): unknown {method} parameters {unknown}")
            continue
        if method == "percentile_range":
            merged = {**NORMALISATIONS[method], **params}
            if not 0 <= merged["lower_pct"] < merged["upper_pct"] <= 100:
                problems.append(f"inputs[{n}] ({role}): need 0 <= lower_pct < upper_pct <= 100")
                continue
        specs.append(InputSpec(role, method, {**NORMALISATIONS[method], **params}))
    roles = [spec.role for spec in specs]
    duplicated = sorted({r for r in roles if roles.count(r) > 1})
    if duplicated:
        problems.append(f"inputs: role(s) {duplicated} given more than once")
    return tuple(specs)


def _parse_models(d: Mapping[str, Any], problems: list[str]) -> tuple[dict[str, tuple[str, ...]], float | None]:
    raw = d.get("models")
    models: dict[str, tuple[str, ...]] = {}
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"models must map li and/or hi to {{folds: [...]}}, got {raw!r}")
        return models, None
    for key, entry in raw.items():
        if key not in MODEL_KEYS:
            problems.append(f"models: unknown model {key!r}; allowed {list(MODEL_KEYS)}")
            continue
        folds = entry.get("folds") if isinstance(entry, Mapping) else None
        if not isinstance(folds, Sequence) or isinstance(folds, str) or not folds:
            problems.append(f"models.{key}.folds must be a non-empty list of weight files")
            continue
        for name in folds:
            path = PurePosixPath(str(name))
            if path.is_absolute() or ".." in path.parts or path.suffix != ".safetensors":
                problems.append(f"models.{key}.folds: {name!r} must be a relative *.safetensors path inside the package")
        models[key] = tuple(str(name) for name in folds)
    files = [name for names in models.values() for name in names]
    if len(set(files)) != len(files):
        problems.append("models: a weight file is listed more than once")
    threshold = None
    routing = d.get("routing")
    if len(raw) == 2 and not (isinstance(routing, Mapping) and "hi_threshold_ff_pct" in routing):
        problems.append("routing.hi_threshold_ff_pct is missing (needed to choose between li and hi)")
    elif routing is not None:
        value = routing.get("hi_threshold_ff_pct") if isinstance(routing, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
            problems.append(f"routing.hi_threshold_ff_pct must be a number in (0, 100), got {value!r}")
        else:
            threshold = float(value)
    return models, threshold


def _parse(d: Any, allowed_codes: set[str], problems: list[str]) -> ModelPackage | None:
    if not isinstance(d, Mapping):
        problems.append(f"{MODEL_FILE} must hold a mapping, got {type(d).__name__}")
        return None
    unknown = sorted(set(d) - _TOP_KEYS)
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if d.get("format_version") != FORMAT_VERSION:
        problems.append(f"format_version must be {FORMAT_VERSION}, got {d.get('format_version')!r}")
    name = _text(d, "name", problems)
    version = _text(d, "version", problems)
    anatomy = _text(d, "anatomy", problems)
    intended_use = _text(d, "intended_use", problems, required=False)
    training_data = _text(d, "training_data", problems, required=False)

    labels = d.get("labels")
    if not isinstance(labels, Sequence) or isinstance(labels, str) or not labels:
        problems.append(f"labels must be a non-empty list of muscle codes, got {labels!r}")
        labels = []
    else:
        bad = [code for code in labels if code not in allowed_codes]
        if bad:
            problems.append(f"labels: unknown muscle code(s) {bad}; allowed {sorted(allowed_codes)}")
        if len(set(labels)) != len(labels):
            problems.append("labels: a muscle code is listed more than once")
    inputs = _parse_inputs(d.get("inputs"), problems)
    spacing = _triple(d.get("spacing_mm"), "spacing_mm", float, problems)
    patch = _triple(d.get("patch_size"), "patch_size", int, problems)

    network = None
    try:
        network = UNetConfig.from_dict(d.get("network", {}))
    except UNetConfigError as exc:
        problems.append(str(exc))
    if network is not None:
        if labels and network.num_classes != len(labels) + 1:
            problems.append(
                f"network.num_classes is {network.num_classes} but labels give {len(labels)} muscles + background"
            )
        if inputs and network.in_channels != len(inputs):
            problems.append(f"network.in_channels is {network.in_channels} but {len(inputs)} inputs are listed")
        if patch is not None and network.norm == "instance" and math.prod(network.bottom_shape(patch)) < 2:
            problems.append(f"patch_size {list(patch)} leaves one voxel at the bottom level; instance norm needs more")
    models, threshold = _parse_models(d, problems)
    if problems:
        return None
    return ModelPackage(
        name=name,
        version=version,
        anatomy=anatomy,
        labels=tuple(labels),
        inputs=inputs,
        spacing_mm=spacing,
        patch_size=patch,
        network=network,
        models=models,
        hi_threshold_ff_pct=threshold,
        intended_use=intended_use,
        training_data=training_data,
    )


def _check_weight_files(package: ModelPackage) -> list[str]:
    """Every fold file exists and holds exactly the network's tensors with its shapes."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in UNet3D(package.network).state_dict().items()}
    problems = []
    for key, files in package.models.items():
        for name in files:
            path = package.folder / name
            where = f"models.{key}: {name}"
            if not path.is_file():
                problems.append(f"{where}: missing file")
                continue
            try:
                with safe_open(str(path), framework="pt") as handle:
                    shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
            except Exception as exc:  # safetensors raises its own error types for corrupt files
                problems.append(f"{where}: not a readable safetensors file ({exc})")
                continue
            missing = sorted(set(expected) - set(shapes))
            extra = sorted(set(shapes) - set(expected))
            if missing:
                problems.append(f"{where}: missing tensor(s) {missing}")
            if extra:
                problems.append(f"{where}: unexpected tensor(s) {extra} for this network config")
            for tensor, shape in shapes.items():
                if tensor in expected and shape != expected[tensor]:
                    problems.append(
                        f"{where}: tensor {tensor} has shape {list(shape)}, network config expects {list(expected[tensor])}"
                    )
    return problems


def _readable_like_other_files(path: Path) -> None:
    """safetensors writes its files with mode 0600; give them the mode any new file gets
    (0666 less the umask), so a node running as another user can read a site's package."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

