"""Slices of the phantom around one leg, and the regions the anatomy tests measure in them.

Shared by the thigh and calf anatomy tests, which look at the same renderer at other levels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from common.geometry import VolumeGeometry
from inference.phantom.anatomy import PhantomVolumes, render
from inference.phantom.section import SectionRenderer


def leg_slice(subject, h: float, side: int, pixel: float, n: int,
              centre: tuple[float, float]) -> tuple[PhantomVolumes, VolumeGeometry]:
    """One axial slice of ``n`` x ``n`` pixels around one leg at nominal height ``h``."""
    leg = SectionRenderer(subject).legs[side]
    x, y = leg.to_global(*centre, h)
    origin = (x - (n - 1) / 2 * pixel, y - (n - 1) / 2 * pixel, subject.z_at(h))
    grid = VolumeGeometry((1, n, n), (2.0, pixel, pixel), origin, (1, 0, 0), (0, 1, 0),
                          (0, 0, 1))
    return render(subject, grid), grid


def deep_region(labels: np.ndarray, pixel: float) -> np.ndarray:
    """Between and inside the muscles: labelled voxels closed over gaps of a few mm."""
    closed = ndimage.binary_closing(labels > 0, iterations=round(4.0 / pixel))
    return ndimage.binary_fill_holes(closed)


def muscle_mass(water: np.ndarray) -> np.ndarray:
    """The region inside the deep fascia: the largest lean component with what it encloses."""
    lean, _ = ndimage.label(water > 0.3)
    sizes = np.bincount(lean.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(lean == np.argmax(sizes))
