"""The segmentation pipeline: stitched Dixon volumes in, a two-leg muscle label volume out.

Huysmans 2023 (2.2, 2.3.1): split the volume at the mid-sagittal plane, mirror the left leg
onto the right, segment each leg with a patch network over the whole length, mirror back,
keep the largest component of every muscle and fill holes; scans of overall muscle FF above
20% go to a model fine-tuned on highly infiltrated scans (LI/HI routing). Steps here:

1. the package's input roles (in-phase/out-of-phase derived from water/fat if needed);
2. canonical orientation and the model's voxel spacing (``resample.py``: exact axis
   permutation, then linear interpolation with anti-aliasing);
3. per-channel normalisation (``InputSpec``) on the whole volume, a crop to the body's
   bounding box (air carries no information and costs most of the compute), the leg split
   from the image (``legs.py``), the left half mirrored;
4. Gaussian-weighted sliding window per leg, fold ensemble by softmax averaging (or majority
   vote), the two legs joined again;
5. class probabilities linearly interpolated back onto the input grid slab by slab and the
   argmax taken (never nearest-neighbour labels), right leg muscle n -> n, left -> 100 + n;
6. LI/HI routing on the overall muscle FF of the LI labels, then post-processing.

:func:`prepare_legs` and :func:`predict_legs` are shared with training, so a model is trained
on exactly what inference feeds it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from inference.fat_fraction import fat_fraction_map
from inference.legs import LegSplit, body_mask, find_midline
from inference.models.package import ModelPackage
from inference.models.unet import UNet3D
from inference.postprocess import postprocess
from inference.resample import (
    Canonical,
    axis_positions,
    model_grid,
    resample_image,
    resample_scores_argmax,
    same_spacing,
)
from inference.sliding_window import (
    configure_cpu_threads,
    pick_device,
    sliding_window_inference,
    window_starts,
)

Progress = Callable[[str, float], None]
ENSEMBLES = ("mean", "vote")
BODY_MARGIN = 4  # model voxels kept around the body's bounding box
BODY_MIN_VOXELS = 5  # a row/column needs this many body voxels to count (ignores stray noise)


@dataclass
class Segmentation:
    labels: np.ndarray  # int16 [k, j, i] on the INPUT grid; right muscle n -> n, left -> 100 + n
    model: str  # "li" or "hi": which model produced the labels
    routing_ff_pct: float | None  # overall muscle FF (from the LI labels) used for routing
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LegInputs:
    """Both legs of a normalised volume on the model grid, ready for the network.

    ``crop`` (rows, columns) is the body box of the model grid the legs were cut from;
    ``split`` cuts that box at the midline; ``right``/``left`` are ``[C, k, j, w]`` with the
    medial side last (left mirrored); ``pad_values`` is each channel's background value.
    """

    split: LegSplit
    crop: tuple[slice, slice]
    right: np.ndarray
    left: np.ndarray
    pad_values: np.ndarray
    midline_method: str


def required_images(images: Mapping[str, np.ndarray], roles: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The ``roles`` a package needs; in-phase = W + F and out-of-phase = |W - F| are made
    from water and fat when absent (the Dixon signal model), with a note saying so."""
    out: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for role in roles:
        if role in images:
            out[role] = np.asarray(images[role], dtype=np.float32)
        elif role in ("in_phase", "out_of_phase") and {"water", "fat"} <= images.keys():
            water = np.asarray(images["water"], dtype=np.float32)
            fat = np.asarray(images["fat"], dtype=np.float32)
            out[role] = water + fat if role == "in_phase" else np.abs(water - fat)
            notes.append(f"{role} derived from water and fat ({'W + F' if role == 'in_phase' else '|W - F|'})")
        else:
            raise ValueError(f"the model needs the {role} image; given: {sorted(images)}")
    return out, notes


def anatomy_image(images: Mapping[str, np.ndarray]) -> np.ndarray:
    """The image the body and the midline are found on: total signal (in-phase, or W + F),
    else the sum of whatever is given."""
    if "in_phase" in images:
        return images["in_phase"]
    if {"water", "fat"} <= images.keys():
        return images["water"] + images["fat"]
    return sum(np.asarray(v, dtype=np.float32) for k, v in images.items() if k != "fat_fraction")


def body_box(anatomy: np.ndarray, margin: int = BODY_MARGIN) -> tuple[slice, slice]:
    """Rows and columns holding the body (over all slices), plus ``margin``; all if empty."""
    mask = body_mask(anatomy)
    box = []
    for axis in (1, 2):
        counts = mask.sum(axis=tuple(a for a in (0, 1, 2) if a != axis))
        hit = np.flatnonzero(counts >= BODY_MIN_VOXELS)
        n = anatomy.shape[axis]
        if hit.size == 0:
            box.append(slice(0, n))
        else:
            box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return box[0], box[1]


def prepare_legs(channels: np.ndarray, anatomy: np.ndarray, left_is_high_i: bool = True) -> tuple[LegInputs, list[str]]:
    """Crop normalised ``channels`` ``[C, k, j, i]`` to the body and split them into legs."""
    rows, cols = body_box(anatomy)
    cropped = anatomy[:, rows, cols]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        midline, method = find_midline(cropped)
    notes = [str(w.message) for w in caught]
    split = LegSplit(columns=cropped.shape[-1], midline=midline, left_is_high_i=left_is_high_i)
    pad = channels.reshape(channels.shape[0], -1).min(axis=1).astype(np.float32)
    halves: list[list[np.ndarray]] = [[], []]
    for c in range(channels.shape[0]):
        right, left = split.split(channels[c][:, rows, cols], pad_value=float(pad[c]))
        halves[0].append(right)
        halves[1].append(left)
    legs = LegInputs(split, (rows, cols), np.stack(halves[0]), np.stack(halves[1]), pad, method)
    return legs, notes


def pad_to_patch(volume: np.ndarray, patch: Sequence[int], pad_values: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad ``[C, k, j, i]`` (centred, per-channel value) to at least ``patch``; returns the
    padded array and the slices that crop it back."""
    before = [max(p - n, 0) // 2 for n, p in zip(volume.shape[1:], patch)]
    after = [max(p - n, 0) - b for n, p, b in zip(volume.shape[1:], patch, before)]
    if not any(before) and not any(after):
        return volume, tuple(slice(0, n) for n in volume.shape[1:])
    out = np.empty((volume.shape[0], *[n + b + a for n, b, a in zip(volume.shape[1:], before, after)]), dtype=np.float32)
    out[...] = pad_values.reshape(-1, 1, 1, 1)
    crop = tuple(slice(b, b + n) for b, n in zip(before, volume.shape[1:]))
    out[(slice(None), *crop)] = volume
    return out, crop


class _Counted:
    """A network that reports each forward call (sliding-window progress)."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], tick: Callable[[], None]) -> None:
        self.net, self.tick = net, tick

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.tick()
        return out


def predict_legs(
    networks: Sequence[UNet3D],
    halves: Sequence[np.ndarray],
    pad_values: np.ndarray,
    patch: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    ensemble: str = "mean",
    progress: Callable[[float], None] | None = None,
) -> list[np.ndarray]:
    """Class scores ``[classes, k, j, w]`` of each single-leg volume ``[C, k, j, w]``.

    ``ensemble="mean"`` averages the folds' softmax probabilities (soft voting);
    ``"vote"`` gives each fold's argmax one vote (the seed's majority voting) and returns
    vote fractions, which interpolate and argmax like probabilities. Legs smaller than the
    patch are padded with each channel's background value (``pad_values``) first.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    padded = [pad_to_patch(half, patch, pad_values) for half in halves]
    total = sum(len(networks) * -(-len(_windows(p.shape[1:], patch, overlap)) // batch_size) for p, _ in padded)
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0] / max(total, 1))

    counted = [_Counted(net, tick) for net in networks]
    n_classes = networks[0].config.num_classes
    out = []
    for volume, crop in padded:
        image = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        if ensemble == "mean":
            scores = sliding_window_inference(counted, image, patch, overlap, batch_size, device)
            result = scores[(slice(None), *crop)].float().cpu().numpy()
        else:
            result = np.zeros((n_classes, *(s.stop - s.start for s in crop)), dtype=np.float32)
            for net in counted:
                labels = sliding_window_inference(net, image, patch, overlap, batch_size, device, output="labels")
                labels = labels[crop].cpu().numpy()
                for c in range(n_classes):
                    result[c] += (labels == c) / np.float32(len(counted))
        out.append(np.ascontiguousarray(result))
    return out


def _windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    starts = [window_starts(n, p, overlap) for n, p in zip(shape, patch)]
    return [(k, j, i) for k in starts[0] for j in starts[1] for i in starts[2]]


def class_lookup(package: ModelPackage) -> tuple[np.ndarray, np.ndarray]:
    """Project label of every network class for the right and the left leg (0 stays 0)."""
    table = load_muscles()
    right = np.zeros(len(package.labels) + 1, dtype=np.int16)
    left = np.zeros_like(right)
    for c, code in enumerate(package.labels, start=1):
        right[c] = table.label_of(code, "right")
        left[c] = table.label_of(code, "left")
    return right, left


def _crop_geometry(grid: VolumeGeometry, crop: tuple[slice, slice]) -> VolumeGeometry:
    rows, cols = crop
    origin = grid.voxel_to_lps(np.array([0.0, rows.start, cols.start]))
    return VolumeGeometry(
        (grid.shape[0], rows.stop - rows.start, cols.stop - cols.start),
        grid.spacing,
        tuple(float(v) for v in origin),
        grid.row_dir,
        grid.col_dir,
        grid.slice_dir,
    )


def labels_on_input(
    right: np.ndarray,
    left: np.ndarray,
    legs: LegInputs,
    grid: VolumeGeometry,
    canonical: Canonical,
    lookup: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Join the legs' scores, bring them onto the input grid and label both sides."""
    joined = legs.split.join(right, left)  # [classes, k, rows, cols] of the body box
    crop_grid = _crop_geometry(grid, legs.crop)
    target = canonical.geometry
    # input voxels whose centres fall inside the body box's extent
    box = []
    for axis in range(3):
        pos = axis_positions(crop_grid, target, axis)
        inside = np.flatnonzero((pos >= -0.5) & (pos <= crop_grid.shape[axis] - 0.5))
        box.append(slice(int(inside[0]), int(inside[-1]) + 1) if inside.size else slice(0, 0))
    out = np.zeros(target.shape, dtype=np.int16)
    if any(s.stop <= s.start for s in box):
        return canonical.backward(out).copy()
    if same_spacing(crop_grid.spacing, target.spacing):
        classes = joined.argmax(axis=0).astype(np.int16)[
            tuple(slice(0, s.stop - s.start) for s in box)
        ]
    else:
        classes, _ = resample_scores_argmax(joined, crop_grid, target, tuple(box))
    # side of every input column: left where it lies on the left of the model midline
    column = axis_positions(crop_grid, target, 2)[box[2]]
    high = column >= legs.split.midline - 0.5
    is_left = high if legs.split.left_is_high_i else ~high
    right_lut, left_lut = lookup
    out[tuple(box)] = np.where(is_left[None, None, :], left_lut[classes], right_lut[classes])
    return np.ascontiguousarray(canonical.backward(out))


def overall_muscle_ff(labels: np.ndarray, ff_pct: np.ndarray) -> float:
    """Voxel-weighted mean FF over all muscle voxels (NaN voxels excluded)."""
    values = ff_pct[labels > 0]
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def segment(
    images: dict[str, np.ndarray],
    geometry: VolumeGeometry,
    package: ModelPackage,
    device: str = "auto",
    ff_pct: np.ndarray | None = None,
    overlap: float = 0.5,
    batch_size: int | None = None,
    progress: Progress | None = None,
    ensemble: str = "mean",
) -> Segmentation:
    """Segment the thigh muscles of both legs of a stitched Dixon study.

    ``images`` are float32 role volumes on ``geometry``; ``ff_pct`` the FF map (percent,
    NaN = background) for LI/HI routing, computed from the images if not given.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    report = progress or (lambda step, fraction: None)
    torch_device = pick_device(None if device == "auto" else device)
    if torch_device.type == "cpu":
        configure_cpu_threads()
    if batch_size is None:
        batch_size = 2 if torch_device.type == "cuda" else 1

    clock = time.perf_counter()
    report("prepare", 0.0)
    inputs, derived = required_images(images, package.roles)
    notes += derived
    for role, volume in inputs.items():
        if volume.shape != tuple(geometry.shape):
            raise ValueError(f"{role} image has shape {volume.shape}, geometry says {geometry.shape}")
    canonical = Canonical.of(geometry)
    grid = canonical.geometry
    if not same_spacing(grid.spacing, package.spacing_mm):
        grid = model_grid(canonical.geometry, package.spacing_mm)
    on_grid = {role: resample_image(canonical.forward(v), canonical.geometry, grid) for role, v in inputs.items()}
    channels = np.stack([spec.normalise(on_grid[spec.role]) for spec in package.inputs])
    legs, midline_notes = prepare_legs(channels, anatomy_image(on_grid), left_is_high_i=grid.row_dir[0] > 0)
    notes += midline_notes
    del on_grid, channels
    networks = package.build_networks(torch_device)
    lookup = class_lookup(package)
    timings["prepare"] = time.perf_counter() - clock
    report("prepare", 1.0)

    def run(key: str) -> np.ndarray:
        clock = time.perf_counter()
        right, left = predict_legs(
            networks[key], (legs.right, legs.left), legs.pad_values, package.patch_size, overlap,
            batch_size, torch_device, ensemble, progress=lambda f: report(key, f),
        )
        timings[key] = time.perf_counter() - clock
        clock = time.perf_counter()
        labels = labels_on_input(right, left, legs, grid, canonical, lookup)
        timings[f"labels_{key}"] = time.perf_counter() - clock
        return labels

    first = "li" if "li" in package.models else "hi"
    labels = run(first)
    model = first
    routing_ff = None
    if ff_pct is None:
        try:
            ff_pct = fat_fraction_map(images).ff_pct
        except ValueError:
            notes.append("no fat fraction available: LI/HI routing skipped")
    elif ff_pct.shape != tuple(geometry.shape):
        raise ValueError(f"ff_pct has shape {ff_pct.shape}, geometry says {geometry.shape}")
    if ff_pct is not None:
        value = overall_muscle_ff(labels, ff_pct)
        routing_ff = None if np.isnan(value) else value
        if routing_ff is None:
            notes.append("no muscle voxels with a valid FF: LI/HI routing skipped")
    if first == "li" and "hi" in package.models and routing_ff is not None:
        threshold = package.hi_threshold_ff_pct if package.hi_threshold_ff_pct is not None else 20.0
        if routing_ff > threshold:
            labels = run("hi")
            model = "hi"

    clock = time.perf_counter()
    report("postprocess", 0.0)
    labels = postprocess(labels).astype(np.int16)
    timings["postprocess"] = time.perf_counter() - clock
    report("postprocess", 1.0)
    timings["total"] = time.perf_counter() - started
    return Segmentation(labels, model, routing_ff, timings, notes)
