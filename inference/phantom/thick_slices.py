"""Thick slices of 2D multi-slice protocols: the signal averaged over each slice's thickness.

A 2D multi-slice Dixon slice (5-10 mm on real thigh protocols) shows the mean signal of the
slab it excites, so muscle ends and oblique boundaries inside the slab blur into partial
volume. Sampling the anatomy only at the slice centre would hide that, and the truth FF of a
thick voxel is the FF of that mixture, not of its centre. The slab is integrated with the
midpoint rule at sub-steps of at most ``MAX_SUBSTEP_MM`` (the 3D reference slice), using an
odd number of samples so the middle sample is the slice centre, which gives the labels.
The slice profile is taken as rectangular (a real excitation profile has soft edges).
"""

from __future__ import annotations

import math

import numpy as np

from common.geometry import VolumeGeometry
from inference.phantom.anatomy import PhantomVolumes, render
from inference.phantom.subject import Subject

MAX_SUBSTEP_MM = 2.0


def substep_offsets(thickness_mm: float) -> np.ndarray:
    """Offsets (mm, along the slice normal) of the samples that integrate one thick slice.

    Midpoint rule over ``[-T/2, T/2]`` with an odd count, so 0 (the slice centre) is one of
    them: 10 mm gives -4, -2, 0, 2, 4.
    """
    if not thickness_mm > 0:
        raise ValueError("slice thickness must be positive")
    count = math.ceil(thickness_mm / MAX_SUBSTEP_MM - 1e-9)
    count += 1 - count % 2
    return ((np.arange(count) + 0.5) / count - 0.5) * thickness_mm


def render_thick(subject: Subject, grid: VolumeGeometry, thickness_mm: float) -> PhantomVolumes:
    """The subject on ``grid`` with every slice ``thickness_mm`` thick.

    Water and fat are the means over the slab (so F/(F+W) is the FF of the partial-volume
    mixture a scanner measures); labels are those at the slice centre.
    """
    offsets = substep_offsets(thickness_mm)
    normal = np.asarray(grid.slice_dir, dtype=float)
    centre = render(subject, grid)
    water = centre.water.astype(np.float64)
    fat = centre.fat.astype(np.float64)
    for offset in offsets[offsets != 0.0]:
        origin = np.asarray(grid.origin, dtype=float) + offset * normal
        shifted = VolumeGeometry(grid.shape, grid.spacing, tuple(origin.tolist()),
                                 grid.row_dir, grid.col_dir, grid.slice_dir)
        sample = render(subject, shifted)
        water += sample.water
        fat += sample.fat
    return PhantomVolumes(centre.labels, (water / len(offsets)).astype(np.float32),
                          (fat / len(offsets)).astype(np.float32))
