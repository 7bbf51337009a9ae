"""Synthetic two-leg anatomy, ankle to hip, as label, water and fat volumes.

A test phantom must make a segmentation model earn its result the way real Dixon images do:
healthy muscles have the same intensity and are told apart only by thin fat septa and by their
place in the anatomy, fat-replaced muscles blend into the fat around them, and subjects differ
in sex, age, size, body fat, shape, rotation, position and fat replacement. Everything random
about a subject is drawn once from its seed into a :class:`Subject`; :func:`render` then
samples the anatomy on any voxel grid, so the same subject gives the same truth whatever the
stacks or their orientation.

Patient coordinates are DICOM LPS mm. The knee joint line is at ``z = 0``; the anatomy runs
from the sole (about 470 mm below it) to the lower abdomen (about 640 mm above it), scaled by
the subject's length; :func:`region_z_range_mm` gives the thigh (knee to hip,
:attr:`Subject.z_range_mm`) and the calf (ankle to just above the knee). At mid-thigh the thighs are
centred at ``x`` about +-(85..125) mm (patient right is negative ``x``) and ``y`` about
10..25 mm; the scanner table (posterior skin) is at ``y`` about 110 mm; the hips span about
+-200 mm in ``x`` and -110..110 mm in ``y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from common.geometry import VolumeGeometry
from inference.phantom import population
from inference.phantom.atlas import CELLS
from inference.phantom.calf_layout import CALF_BOTTOM_H, CALF_TOP_H
from inference.phantom.fields import draw_waves
from inference.phantom.infiltration import Infiltration, draw_fat_parameters
from inference.phantom.leg import muscle_structures
from inference.phantom.section import SectionRenderer
from inference.phantom.subject import Subject

__all__ = ["PhantomVolumes", "make_subject", "region_z_range_mm", "render"]


@dataclass
class PhantomVolumes:
    """Noise-free truth on a grid: labels and the water and fat signal fractions."""

    labels: np.ndarray  # int16 [k, j, i]: 0 background, right muscle n -> n, left -> 100 + n
    water: np.ndarray  # float32 [k, j, i]: water signal fraction of the voxel (0..1)
    fat: np.ndarray  # float32 [k, j, i]: fat signal fraction; water + fat = proton density


def make_subject(seed: int, infiltration: Infiltration) -> Subject:
    """Draw a subject. The anatomy depends on ``seed`` only; the fat pattern on both."""
    if infiltration not in ("low", "high"):
        raise ValueError(f"infiltration must be 'low' or 'high', not {infiltration!r}")
    rng = np.random.default_rng([seed, 0])
    person = population.draw_person(rng)
    body = population.body_factors(rng, person)
    jitter = np.empty((2, len(CELLS), 6))
    common_shift = rng.normal(0.0, 2.5, (len(CELLS), 2))
    structures = sorted({c.name for c in CELLS})
    common_size = {name: rng.lognormal(0.0, 0.08) for name in structures}
    aged = [population.age_size_factor(c.name, c.code, person["age_years"])
            if c.tissue == "muscle" else 1.0 for c in CELLS]
    for side in range(2):
        jitter[side, :, 0:2] = common_shift + rng.normal(0.0, 1.0, (len(CELLS), 2))
        jitter[side, :, 2] = [common_size[c.name] * aged[i] * (1 + rng.normal(0.0, 0.03))
                              for i, c in enumerate(CELLS)]
        jitter[side, :, 3] = rng.uniform(0.0, 2.5, len(CELLS))  # wobble amplitude mm
        jitter[side, :, 4] = rng.uniform(120.0, 300.0, len(CELLS))  # wobble wavelength mm
        jitter[side, :, 5] = rng.uniform(0.0, 2.0 * np.pi, len(CELLS))  # wobble phase
    anatomy = {
        "leg_scale": tuple(float(v) for v in 1.0 + rng.uniform(-0.03, 0.03, 2)),
        "subcutaneous_shape": (float(rng.uniform(0.1, 0.5)), float(rng.uniform(0.0, 0.35))),
        "rotation_deg": tuple(float(v) for v in np.clip(rng.uniform(-4.0, 15.0)
                                                        + rng.normal(0.0, 3.0, 2), -6.0, 18.0)),
        "abduction_deg": tuple(float(v) for v in rng.uniform(-1.0, 3.0, 2)),
        "knee_lift_mm": tuple(float(v) for v in rng.normal(0.0, 6.0, 2)),
        "offset_mm": (float(rng.uniform(-15.0, 15.0)), float(rng.uniform(-10.0, 10.0))),
        "bladder_fill": float(rng.uniform(0.5, 1.2)),
        "calf_ratio": float(np.clip(rng.normal(1.0, 0.025), 0.94, 1.06)),
        "calf_spread_deg": tuple(float(v) for v in rng.uniform(-1.5, 2.5, 2)),
        "fascia_mm": float(rng.uniform(0.5, 0.9)),
        "texture": float(rng.uniform(0.015, 0.04)),
    }
    waves = draw_waves(rng)
    bias = rng.normal(0.0, 1.0, 12)
    fat_rng = np.random.default_rng([seed, 1, 0 if infiltration == "low" else 1])
    disease, stage, fat_params = draw_fat_parameters(
        fat_rng, infiltration, tuple(code for _, code in muscle_structures()),
        person["age_years"])
    for array in (jitter, fat_params, waves, bias):
        array.flags.writeable = False
    return Subject(seed=seed, infiltration=infiltration, disease=disease, stage=stage,
                   cell_jitter=jitter, fat_params=fat_params, waves=waves, bias=bias,
                   **person, **body, **anatomy)


def region_z_range_mm(subject: Subject, region: str) -> tuple[float, float]:
    """LPS z (low, high) of a region: "thigh" knee to hip, "calf" ankle to just above the knee."""
    if region == "thigh":
        return subject.z_range_mm
    if region == "calf":
        return (subject.z_at(CALF_BOTTOM_H), subject.z_at(CALF_TOP_H))
    raise ValueError(f"region must be 'thigh' or 'calf', not {region!r}")


def render(subject: Subject, geometry: VolumeGeometry) -> PhantomVolumes:
    """Sample the subject on ``geometry``: axial grids directly, others via an axial grid."""
    axes = _axis_permutation(geometry)
    if axes is not None:
        return _render_axis_aligned(subject, geometry, axes)
    return _render_oblique(subject, geometry)


@lru_cache(maxsize=4)
def _renderer(subject: Subject) -> SectionRenderer:
    """The subject's precomputed anatomy tables (reused when it is rendered again)."""
    return SectionRenderer(subject)


def _axis_permutation(geometry: VolumeGeometry) -> list[tuple[int, float]] | None:
    """For a grid whose slices are axial, the (patient axis, sign) of each array axis."""
    dirs = [geometry.slice_dir, geometry.col_dir, geometry.row_dir]
    result = []
    for vector in dirs:
        v = np.asarray(vector, dtype=float)
        axis = int(np.argmax(np.abs(v)))
        if abs(abs(v[axis]) - 1.0) > 1e-6:
            return None
        result.append((axis, float(np.sign(v[axis]))))
    if result[0][0] != 2 or {result[1][0], result[2][0]} != {0, 1}:
        return None
    return result


def _render_axis_aligned(subject: Subject, geometry: VolumeGeometry,
                         axes: list[tuple[int, float]]) -> PhantomVolumes:
    origin = np.asarray(geometry.origin, dtype=float)
    coords = {}
    for array_axis, (patient_axis, sign) in enumerate(axes):
        n = geometry.shape[array_axis]
        values = origin[patient_axis] + sign * geometry.spacing[array_axis] * np.arange(n)
        coords[patient_axis] = (values, sign, array_axis)
    xs, ys, zs = (np.sort(coords[axis][0]) for axis in range(3))
    labels, water, fat = _renderer(subject).render_grid(xs, ys, zs)
    # The renderer's arrays are [z, y, x] ascending; bring them to the grid's axis order.
    order = [2, 1, 0]  # patient axis of each rendered array axis
    flips = tuple(ax for ax, pat in enumerate(order) if coords[pat][1] < 0)
    target = [coords[pat][2] for pat in order]  # where each rendered axis must go
    permutation = np.argsort(target)

    def arrange(array: np.ndarray) -> np.ndarray:
        if flips:
            array = np.flip(array, axis=flips)
        return np.ascontiguousarray(array.transpose(permutation))

    return PhantomVolumes(arrange(labels), arrange(water), arrange(fat))


def _render_oblique(subject: Subject, geometry: VolumeGeometry) -> PhantomVolumes:
    """Render an axial grid around ``geometry`` and resample (labels nearest, rest linear)."""
    nk, nj, ni = geometry.shape
    corners = np.array([[k, j, i] for k in (0, nk - 1) for j in (0, nj - 1)
                        for i in (0, ni - 1)], dtype=float)
    points = geometry.voxel_to_lps(corners)
    pixel = min(geometry.spacing[1], geometry.spacing[2])
    dz = min(geometry.spacing[0], 2.0 * pixel)
    low = points.min(axis=0) - [pixel, pixel, dz]
    high = points.max(axis=0) + [pixel, pixel, dz]
    xs = np.arange(low[0], high[0] + pixel, pixel)
    ys = np.arange(low[1], high[1] + pixel, pixel)
    zs = np.arange(low[2], high[2] + dz, dz)
    labels, water, fat = _renderer(subject).render_grid(xs, ys, zs)
    out_labels = np.zeros(geometry.shape, dtype=np.int16)
    out_water = np.zeros(geometry.shape, dtype=np.float32)
    out_fat = np.zeros(geometry.shape, dtype=np.float32)
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    steps = np.array([dz, pixel, pixel])
    start = np.array([zs[0], ys[0], xs[0]])
    for k in range(nk):
        kji = np.stack([np.full(jj.shape, k, dtype=float), jj, ii], axis=-1)
        lps = geometry.voxel_to_lps(kji)
        idx = (lps[..., ::-1] - start) / steps  # fractional (z, y, x) indices
        coords = np.moveaxis(idx, -1, 0)
        out_labels[k] = ndimage.map_coordinates(labels, coords, order=0, mode="constant")
        out_water[k] = ndimage.map_coordinates(water, coords, order=1, mode="constant")
        out_fat[k] = ndimage.map_coordinates(fat, coords, order=1, mode="constant")
    return PhantomVolumes(out_labels, out_water, out_fat)
