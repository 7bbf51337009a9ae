"""Random perturbations of a training patch, so the network learns anatomy, not one scanner.

Huysmans 2023 (2.2) used "affine transformation and adding of Gaussian noise". We add the
two intensity effects that differ between sites and that per-volume normalisation does not
remove: a per-channel intensity scale and a smooth multiplicative bias field (receive-coil
sensitivity). No left-right flips: the legs are already mirrored to one side, and a flip
would swap lateral and medial muscles.

The affine is built in millimetres (the voxels are anisotropic) and applied with one
``grid_sample`` call: trilinear for the image, nearest for the labels; samples outside the
patch repeat its border (air in-plane, neighbouring anatomy along the legs). Every random
number comes from the caller's numpy generator, so a resumed training run continues with the
same draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random perturbations (``augmentation:`` in training.yaml)."""

    probability: float = 0.8  # chance that the spatial transform is applied to a patch
    rotation_deg: float = 10.0  # about the slice normal (legs rotate about their long axis)
    tilt_deg: float = 3.0  # about the two in-plane axes (slab not quite axial)
    scale: tuple[float, float] = (0.9, 1.1)  # isotropic size factor (subject size)
    noise_sd: tuple[float, float] = (0.0, 0.05)  # Gaussian noise SD, in normalised units
    intensity_scale: tuple[float, float] = (0.9, 1.1)  # per channel
    bias_field: float = 0.2  # largest relative change of the smooth multiplicative field


def _rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about patient-frame axis 0 (x = i), 1 (y = j) or 2 (z = k)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    m = np.eye(3)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def _spatial_theta(shape: Sequence[int], spacing: Sequence[float], settings: AugmentSettings,
                   rng: np.random.Generator) -> np.ndarray:
    """The 3x4 ``affine_grid`` matrix (x = i, y = j, z = k; normalised coordinates)."""
    rotation = (
        _rotation(2, rng.uniform(-settings.rotation_deg, settings.rotation_deg))
        @ _rotation(0, rng.uniform(-settings.tilt_deg, settings.tilt_deg))
        @ _rotation(1, rng.uniform(-settings.tilt_deg, settings.tilt_deg))
    )
    scale = rng.uniform(*settings.scale)
    # normalised coordinate -> mm, per axis in (i, j, k) order (align_corners=True)
    half = np.array([max(n - 1, 1) / 2.0 * s for n, s in zip(shape[::-1], spacing[::-1])])
    matrix = np.diag(1.0 / half) @ (rotation / scale) @ np.diag(half)
    return np.concatenate([matrix, np.zeros((3, 1))], axis=1)


def _bias(shape: Sequence[int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a random quadratic polynomial over the patch, within ``1 +- amplitude``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    k, j, i = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [k, j, i, k * k, j * j, i * i, j * i, k * j, k * i]
    coef = rng.normal(0.0, 1.0, len(terms))
    field = sum(c * t for c, t in zip(coef, terms))
    field = field - field.mean()
    peak = float(np.abs(field).max())
    limit = math.log1p(amplitude)
    if peak > 0:
        field = field * (rng.uniform(0.0, limit) / peak)
    return np.exp(field).astype(np.float32)


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    settings: AugmentSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """A perturbed copy of one patch: ``image`` ``[C, k, j, i]`` float32, ``labels``
    ``[k, j, i]`` integers; ``spacing`` (dz, dy, dx) mm of the patch's voxels."""
    shape = labels.shape
    out = np.array(image, dtype=np.float32, copy=True)
    out_labels = np.array(labels, copy=True)
    if rng.random() < settings.probability:
        theta = torch.from_numpy(_spatial_theta(shape, spacing, settings, rng)).float()[None]
        grid = F.affine_grid(theta, [1, 1, *shape], align_corners=True)
        moved = F.grid_sample(torch.from_numpy(out)[None], grid, mode="bilinear",
                              padding_mode="border", align_corners=True)
        moved_labels = F.grid_sample(torch.from_numpy(out_labels.astype(np.float32))[None, None], grid,
                                     mode="nearest", padding_mode="border", align_corners=True)
        out = moved[0].numpy()
        out_labels = moved_labels[0, 0].numpy().round().astype(labels.dtype)
    if settings.bias_field > 0:
        out *= _bias(shape, settings.bias_field, rng)[None]
    scales = rng.uniform(*settings.intensity_scale, size=out.shape[0]).astype(np.float32)
    out *= scales.reshape(-1, 1, 1, 1)
    sd = rng.uniform(*settings.noise_sd)
    if sd > 0:
        out += rng.normal(0.0, sd, out.shape).astype(np.float32)
    return out, out_labels
