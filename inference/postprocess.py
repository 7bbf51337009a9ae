"""Clean a combined (both-leg) label volume as the seed did (Huysmans 2023, 2.2).

"Connected component analysis was performed on the stitched volume to retain only the two
largest, left and right leg components for each muscle ... Holes present inside a segmented
muscle volume were filled subsequently." Left and right muscles carry different labels
(n and 100 + n), so "two largest per muscle" is "the largest per label" here.

Both steps work on each label's own voxels or bounding box, so the cost scales with the
muscles, not with labels x volume.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

# background connectivity for hole detection: 6-neighbour in 3D, 4-neighbour within a slice
_FACE_3D = ndimage.generate_binary_structure(3, 1)
_FACE_IN_SLICE = np.zeros((3, 3, 3), dtype=bool)
_FACE_IN_SLICE[1] = ndimage.generate_binary_structure(2, 1)


def voxels_by_label(labels: np.ndarray, wanted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of all voxels of the ``wanted`` labels (default: every label > 0),
    grouped by label, and ``ends`` such that label ``v`` owns ``indices[ends[v-1]:ends[v]]``.

    One pass over the volume plus a stable radix sort of the (small integer) label values,
    so per-label work afterwards touches only that label's voxels.
    """
    flat = labels.reshape(-1)
    top = int(flat.max(initial=0)) if wanted is None else max(int(flat.max(initial=0)), int(wanted.max()))
    if wanted is None:
        indices = np.flatnonzero(flat)
    else:
        lookup = np.zeros(top + 1, dtype=bool)
        lookup[wanted] = True
        indices = np.flatnonzero(lookup[flat])
    group = flat[indices].astype(np.uint16 if top < 65536 else np.int64)
    order = np.argsort(group, kind="stable")
    return indices[order], np.cumsum(np.bincount(group[order], minlength=top + 1))


def keep_largest_components(
    labels: np.ndarray, connectivity: int = 3, block: tuple[int, int, int] = (4, 8, 8)
) -> np.ndarray:
    """Copy of ``labels`` with every label reduced to its largest connected component.

    ``connectivity`` 3 (26-neighbour, default) keeps a thin oblique muscle such as the
    sartorius in one piece where consecutive 2 mm slices touch only along an edge; 1 is
    face connectivity. Removed voxels become background (0).

    Speed: one stray voxel far away would stretch a label's bounding box over the whole
    volume, so components are first found on a coarse grid of ``block`` voxels (cheap).
    Voxels connected at full resolution lie in connected blocks, so every component lies in
    one coarse component; only coarse components at least as large as the best component
    found so far are labelled at full resolution, the rest are dropped unseen. Exact.
    """
    out = np.array(labels, copy=True)
    flat = out.reshape(-1)
    structure = ndimage.generate_binary_structure(3, connectivity)
    coarse_shape = tuple(-(-n // b) for n, b in zip(out.shape, block))
    indices, ends = voxels_by_label(out)
    for value in range(1, ends.size):
        voxels = indices[ends[value - 1] : ends[value]]
        if voxels.size == 0:
            continue
        kji = np.unravel_index(voxels, out.shape)
        block_of = np.ravel_multi_index(tuple(c // b for c, b in zip(kji, block)), coarse_shape)
        occupied = np.bincount(block_of, minlength=math.prod(coarse_shape)).reshape(coarse_shape)
        coarse, count = ndimage.label(occupied > 0, np.ones((3, 3, 3), dtype=bool))
        part_of = coarse.reshape(-1)[block_of]
        sizes = np.bincount(part_of, minlength=count + 1)
        best: np.ndarray = voxels[:0]
        for part in np.argsort(sizes[1:])[::-1] + 1:
            if sizes[part] < best.size:
                break
            best = max(best, _largest_component(out.shape, voxels[part_of == part], structure), key=len)
        flat[voxels] = 0
        flat[best] = value
    return out


def _bounding_box(kji: tuple[np.ndarray, ...]) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
    lows = [int(c.min()) for c in kji]
    box = tuple(slice(lo, int(c.max()) + 1) for lo, c in zip(lows, kji))
    return box, tuple(c - lo for c, lo in zip(kji, lows))


def _largest_component(shape: tuple[int, ...], voxels: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Flat indices of the largest connected component among ``voxels``."""
    box, local = _bounding_box(np.unravel_index(voxels, shape))
    mask = np.zeros(tuple(s.stop - s.start for s in box), dtype=bool)
    mask[local] = True
    components, count = ndimage.label(mask, structure)
    if count == 1:
        return voxels
    ids = components[local]
    return voxels[ids == np.bincount(ids).argmax()]


def fill_holes(labels: np.ndarray, per_slice: bool = False) -> np.ndarray:
    """Copy of ``labels`` with background enclosed by a label set to that label.

    A hole is a background region that cannot reach outside the label without crossing it:
    in 3D (default; a fully enclosed cavity) or, with ``per_slice``, within each axial slice
    (also closes channels running along the muscle, e.g. around a vessel). Only background
    voxels are filled; another label enclosed by a muscle is kept. Labels are filled from the
    smallest to the largest, so a hole inside a muscle that itself lies inside another goes
    to the inner (smaller) one.
    """
    out = np.array(labels, copy=True)
    boxes = ndimage.find_objects(out)
    counts = np.bincount(out.ravel(), minlength=len(boxes) + 1)
    structure = _FACE_IN_SLICE if per_slice else _FACE_3D
    for value in sorted(range(1, len(boxes) + 1), key=lambda v: counts[v]):
        box = boxes[value - 1]
        if box is None:
            continue
        crop = out[box]
        regions, count = ndimage.label(crop != value, structure)
        if count == 0:
            continue
        # regions touching the box's border reach outside; boxes are tight, so this is exact
        outside = np.zeros(count + 1, dtype=bool)
        faces = [regions[:, 0], regions[:, -1], regions[:, :, 0], regions[:, :, -1]]
        if not per_slice:
            faces += [regions[0], regions[-1]]
        for face in faces:
            outside[face] = True
        outside[0] = True
        crop[~outside[regions] & (crop == 0)] = value
    return out


def postprocess(labels: np.ndarray, connectivity: int = 3, per_slice_holes: bool = False) -> np.ndarray:
    """The seed's two steps in its order: largest component per label, then hole filling.

    Stray voxels removed by the first step become background and are then filled by the
    muscle that encloses them, if any.
    """
    return fill_holes(keep_largest_components(labels, connectivity), per_slice=per_slice_holes)
