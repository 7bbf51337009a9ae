"""Stitched labels back onto one stack's own voxel grid (nearest neighbour).

A DICOM-SEG must sit on the images it references, so the stitched label volume is sampled at
every voxel centre of each stack. When the stack is a slab of the stitched grid (the usual
case: the grid takes the reference stack's in-plane grid and slice step) this is a plain
slice copy; otherwise each stack voxel takes the label of the nearest stitched voxel, and
voxels outside the stitched grid get 0. Nearest neighbour, because labels are categories.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from common.geometry import VolumeGeometry


def labels_on_stack(
    labels: np.ndarray, grid: VolumeGeometry, stack: VolumeGeometry
) -> np.ndarray:
    """``labels`` (on ``grid``) sampled at every voxel of ``stack``; same dtype, 0 outside."""
    if labels.shape != grid.shape:
        raise ValueError(f"labels {labels.shape} do not match the grid {grid.shape}")
    offset = stack.slab_offset_in(grid)
    out = np.zeros(stack.shape, dtype=labels.dtype)
    if offset is not None:
        lo, hi = max(offset, 0), min(offset + stack.shape[0], grid.shape[0])
        if lo < hi:
            out[lo - offset : hi - offset] = labels[lo:hi]
        return out
    # stack voxel (k, j, i) -> grid voxel coordinates, one affine for the whole volume
    to_grid = np.linalg.inv(grid.affine_lps()) @ stack.affine_lps()
    jj, ii = np.meshgrid(
        np.arange(stack.shape[1], dtype=float), np.arange(stack.shape[2], dtype=float),
        indexing="ij",
    )
    plane = np.stack([np.zeros_like(jj), jj, ii, np.ones_like(jj)], axis=0).reshape(4, -1)
    for k in range(stack.shape[0]):
        plane[0] = k
        coords = (to_grid @ plane)[:3]
        out[k] = ndimage.map_coordinates(
            labels, coords, order=0, mode="constant", cval=0, prefilter=False
        ).reshape(stack.shape[1:])
    return out
