"""Move volumes between a scan's grid and a model's grid (orientation and spacing).

A network only ever saw one orientation (rows running to patient left, columns to posterior,
slices to the head) and one voxel spacing, so the pipeline brings every scan into that frame
and the result back onto the scan's own grid:

* :class:`Canonical` permutes and flips the array axes of any (near) axis-aligned grid into
  that orientation. It is exact (no interpolation); an oblique grid is assigned the patient
  axis each of its directions is closest to, so the tilt stays in the data as in training.
* :func:`model_grid` is the grid of the same field of view at the model's spacing, with the
  same centre. Both grids then share their orientation, so resampling is separable: one 1D
  linear interpolation per axis (exactly trilinear), done in chunks of slices so that a
  full-size study never needs more than a few copies of a slab in memory.
* Images are smoothed before they are DOWN-sampled (a Gaussian whose variance matches a box
  of the coarse voxel, ``(f^2 - 1) / 12`` in fine voxels for a factor ``f``): a coarse voxel
  sees the signal of its whole extent, as the phantom's partial-volume rendering and a real
  coarse acquisition do, not a point sample of the noise.
* Labels travel as class scores: scores (probabilities, or one-hot masks) are interpolated
  linearly and the argmax is taken, which keeps boundaries smooth and aligned where
  nearest-neighbour labels would be blocky and shifted by up to half a coarse voxel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from common.geometry import VolumeGeometry

# patient axis (LPS x, y, z) each canonical array axis (k, j, i) runs along
_CANONICAL_AXES = (2, 1, 0)


@dataclass(frozen=True)
class Canonical:
    """How the array axes of a grid map to the canonical ``[k->+z, j->+y, i->+x]`` order.

    ``source_axis[a]`` is the input array axis that becomes canonical axis ``a``; ``flip[a]``
    says whether it runs backwards.
    """

    source_axis: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    geometry: VolumeGeometry  # the canonical grid (same voxel centres, reordered)

    @classmethod
    def of(cls, geometry: VolumeGeometry) -> Canonical:
        dirs = np.array([geometry.slice_dir, geometry.col_dir, geometry.row_dir], dtype=float)
        dominant = np.argmax(np.abs(dirs), axis=1)  # patient axis of each array axis
        if sorted(dominant.tolist()) != [0, 1, 2]:
            raise ValueError(f"grid directions {dirs.tolist()} do not map to distinct patient axes")
        source = tuple(int(np.flatnonzero(dominant == patient)[0]) for patient in _CANONICAL_AXES)
        flip = tuple(bool(dirs[s, p] < 0) for s, p in zip(source, _CANONICAL_AXES))
        shape = tuple(geometry.shape[s] for s in source)
        spacing = tuple(geometry.spacing[s] for s in source)
        new_dirs = [dirs[s] * (-1.0 if f else 1.0) for s, f in zip(source, flip)]
        first = [shape[a] - 1 if flip[a] else 0 for a in range(3)]
        corner = np.zeros(3)
        for a in range(3):
            corner[source[a]] = first[a]
        origin = geometry.voxel_to_lps(corner)
        canonical = VolumeGeometry(
            shape,
            spacing,
            tuple(float(v) for v in origin),
            tuple(float(v) for v in new_dirs[2]),
            tuple(float(v) for v in new_dirs[1]),
            tuple(float(v) for v in new_dirs[0]),
        )
        return cls(source, flip, canonical)

    @property
    def is_identity(self) -> bool:
        return self.source_axis == (0, 1, 2) and not any(self.flip)

    def forward(self, volume: np.ndarray) -> np.ndarray:
        """Input-grid array ``[..., k, j, i]`` into canonical order (a view where possible)."""
        lead = volume.ndim - 3
        out = np.transpose(volume, tuple(range(lead)) + tuple(lead + s for s in self.source_axis))
        flips = tuple(lead + a for a in range(3) if self.flip[a])
        return np.flip(out, axis=flips) if flips else out

    def backward(self, volume: np.ndarray) -> np.ndarray:
        """Canonical array ``[..., k, j, i]`` back into the input grid's order."""
        lead = volume.ndim - 3
        flips = tuple(lead + a for a in range(3) if self.flip[a])
        out = np.flip(volume, axis=flips) if flips else volume
        inverse = np.argsort(self.source_axis)
        return np.transpose(out, tuple(range(lead)) + tuple(lead + int(s) for s in inverse))


def model_grid(geometry: VolumeGeometry, spacing: Sequence[float]) -> VolumeGeometry:
    """The grid with ``spacing`` (dz, dy, dx) covering the extent of ``geometry``, same centre
    and orientation (at least one voxel per axis)."""
    shape = tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(geometry.shape, geometry.spacing, spacing)
    )
    centre = geometry.voxel_to_lps(np.array([(n - 1) / 2.0 for n in geometry.shape]))
    dirs = [np.asarray(geometry.slice_dir), np.asarray(geometry.col_dir), np.asarray(geometry.row_dir)]
    origin = centre - sum((n - 1) / 2.0 * t * d for n, t, d in zip(shape, spacing, dirs))
    return VolumeGeometry(
        shape,
        tuple(float(t) for t in spacing),
        tuple(float(v) for v in origin),
        geometry.row_dir,
        geometry.col_dir,
        geometry.slice_dir,
    )


def same_spacing(a: Sequence[float], b: Sequence[float], rtol: float = 1e-3) -> bool:
    return all(abs(x - y) <= rtol * max(abs(x), abs(y)) for x, y in zip(a, b))


def axis_positions(source: VolumeGeometry, target: VolumeGeometry, axis: int) -> np.ndarray:
    """Fractional source indices of the target's voxel centres along one array axis.

    Both grids must share their orientation (e.g. :func:`model_grid` of the other)."""
    dirs = (source.slice_dir, source.col_dir, source.row_dir)
    direction = np.asarray(dirs[axis], dtype=float)
    offset = float(np.dot(np.asarray(target.origin) - np.asarray(source.origin), direction))
    n = target.shape[axis]
    return (offset + np.arange(n) * target.spacing[axis]) / source.spacing[axis]


def _interp_axis(data: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``data`` at fractional ``positions`` along ``axis``; positions
    outside the data take the edge value (the scan's border continues, as in training)."""
    n = data.shape[axis]
    if n == 1:
        return np.repeat(data, positions.size, axis=axis)
    pos = np.clip(positions, 0.0, n - 1.0)
    low = np.minimum(np.floor(pos).astype(np.intp), n - 2)
    frac = (pos - low).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    a = np.take(data, low, axis=axis)
    b = np.take(data, low + 1, axis=axis)
    b -= a
    b *= frac
    a += b
    return a


def _antialias(data: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Gaussian smoothing along ``axis`` before down-sampling by ``factor`` (box-matched)."""
    if factor <= 1.0 + 1e-6:
        return data
    sigma = math.sqrt(factor * factor - 1.0) / math.sqrt(12.0)
    return ndimage.gaussian_filter1d(data, sigma, axis=axis, mode="nearest", truncate=3.0)


def resample_image(
    volume: np.ndarray, source: VolumeGeometry, target: VolumeGeometry, chunk: int = 32
) -> np.ndarray:
    """Linear resampling of a ``[k, j, i]`` image onto ``target`` (same orientation), with
    anti-aliasing on down-sampled axes. In-plane work is done ``chunk`` slices at a time."""
    data = np.asarray(volume, dtype=np.float32)
    if source.shape == target.shape and same_spacing(source.spacing, target.spacing) and np.allclose(
        source.origin, target.origin, atol=1e-3 * min(source.spacing)
    ):
        return data.copy()
    factors = [t / s for s, t in zip(source.spacing, target.spacing)]
    pos = [axis_positions(source, target, a) for a in range(3)]
    planes = []
    for start in range(0, data.shape[0], chunk):
        block = data[start : start + chunk]
        for axis in (2, 1):
            block = _interp_axis(_antialias(block, factors[axis], axis), pos[axis], axis)
        planes.append(block)
    slab = np.concatenate(planes, axis=0)
    return np.ascontiguousarray(_interp_axis(_antialias(slab, factors[0], 0), pos[0], 0))


def resample_scores_argmax(
    scores: np.ndarray,
    source: VolumeGeometry,
    target: VolumeGeometry,
    box: tuple[slice, slice, slice] | None = None,
    chunk: int = 8,
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Argmax over classes of ``scores`` ``[C, k, j, i]`` (on ``source``) linearly
    interpolated at the voxels of ``target`` inside ``box`` (default: all).

    Returns ``(labels, box)`` with int16 labels of the box's shape. Memory stays bounded:
    ``chunk`` target slices are interpolated at a time (``C x chunk x box rows x box
    columns`` floats).
    """
    box = box or tuple(slice(0, n) for n in target.shape)
    pos = [axis_positions(source, target, a)[box[a]] for a in range(3)]
    out = np.empty(tuple(s.stop - s.start for s in box), dtype=np.int16)
    for start in range(0, out.shape[0], chunk):
        pk = pos[0][start : start + chunk]
        lo = max(int(np.floor(pk.min())), 0)
        hi = min(int(np.floor(pk.max())) + 2, scores.shape[1])
        lo = min(lo, hi - 1)
        block = scores[:, lo:hi]
        block = _interp_axis(block, pos[2], 3)
        block = _interp_axis(block, pos[1], 2)
        block = _interp_axis(block, pk - lo, 1)
        out[start : start + chunk] = block.argmax(axis=0)
    return out, box


def resample_labels(
    labels: np.ndarray, source: VolumeGeometry, target: VolumeGeometry, chunk: int = 32
) -> np.ndarray:
    """A label volume on another grid: each label's mask is resampled like an image (with
    anti-aliasing when down-sampling) and every target voxel takes the label of the largest
    value (background included). Used for site training data, one label at a time."""
    values = np.unique(labels)
    best = np.full(target.shape, -1.0, dtype=np.float32)
    out = np.zeros(target.shape, dtype=labels.dtype)
    for value in values:
        score = resample_image((labels == value).astype(np.float32), source, target, chunk)
        better = score > best
        best[better] = score[better]
        out[better] = value
    return out
