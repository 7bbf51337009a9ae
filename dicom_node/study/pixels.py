"""Load the pixels of a stack's frames as real-world values (float32).

Stored values are converted with the DICOM Modality LUT (RescaleSlope/RescaleIntercept; per
frame from the Pixel Value Transformation functional group for multi-frame images), so that
water and fat of one stack share one scale and F/(F+W) is right. Each file is decoded once.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from common.study import Frame
from dicom_node.study.scan import functional_group


def rescale_of(ds: Dataset, frame_number: int | None) -> tuple[float, float]:
    """(slope, intercept) of one frame; identity when the dataset gives none."""
    source: Dataset | None = ds
    if frame_number is not None:
        source = functional_group(ds, frame_number - 1, "PixelValueTransformationSequence") or ds
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def load_slices(slots: list[Frame | None], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the frames of one role into ``[k, j, i]`` float32 and a mask of present slices.

    Missing slots stay zero and are marked False in the mask, so the caller decides how to
    fill them.
    """
    volume = np.zeros((len(slots), *shape), dtype=np.float32)
    present = np.zeros(len(slots), dtype=bool)
    by_path: dict[Path, list[tuple[int, Frame]]] = defaultdict(list)
    for k, frame in enumerate(slots):
        if frame is not None:
            by_path[frame.path].append((k, frame))
    for path, entries in by_path.items():
        ds = pydicom.dcmread(path, force=True)  # scanned already: a DICOM dataset
        pixels = ds.pixel_array
        for k, frame in entries:
            plane = pixels[frame.frame_number - 1] if frame.frame_number is not None else pixels
            if plane.shape != shape:
                raise ValueError(
                    f"{path}: frame is {plane.shape[0]}x{plane.shape[1]}, the stack is "
                    f"{shape[0]}x{shape[1]}"
                )
            slope, intercept = rescale_of(ds, frame.frame_number)
            volume[k] = plane.astype(np.float32) * slope + intercept
            present[k] = True
    return volume, present


def fill_missing_slices(volume: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Fill absent slices by linear interpolation between the nearest present ones.

    A lost slice would otherwise be a plane of zeros through every muscle; interpolation is
    what a reader would accept, and the caller reports it as a warning.
    """
    if present.all() or not present.any():
        return volume
    have = np.flatnonzero(present)
    for k in np.flatnonzero(~present):
        below = have[have < k]
        above = have[have > k]
        if below.size and above.size:
            lo, hi = below[-1], above[0]
            t = (k - lo) / (hi - lo)
            volume[k] = (1 - t) * volume[lo] + t * volume[hi]
        else:
            volume[k] = volume[below[-1] if below.size else above[0]]
    return volume
