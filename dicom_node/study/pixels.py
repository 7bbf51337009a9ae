"""Load the pixels of a stack's frames as real-world values (float32), phases in radians.

Stored values are converted with the DICOM Modality LUT (RescaleSlope/RescaleIntercept; per
frame from the Pixel Value Transformation functional group for multi-frame images), so that
water and fat of one stack share one scale and F/(F+W) is right. Each file is decoded once.

Echo phase images have no common unit: GE stores milliradians (-3142..3142), Philips
rescales to milliradians (RescaleType ``mrad``), Siemens spreads one turn over its 12-bit
range (0..4095, or with slope 2 and intercept -4096 over -4096..4094). :func:`phase_radians`
turns each into radians in [-pi, pi) (``config/dixon_rules.yaml`` documents the rules).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from common.study import ECHO_PHASE, Frame
from dicom_node.study.scan import functional_group


def _rescale_source(ds: Dataset, frame_number: int | None) -> Dataset:
    if frame_number is None:
        return ds
    return functional_group(ds, frame_number - 1, "PixelValueTransformationSequence") or ds


def rescale_of(ds: Dataset, frame_number: int | None) -> tuple[float, float]:
    """(slope, intercept) of one frame; identity when the dataset gives none."""
    source = _rescale_source(ds, frame_number)
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


_GE = re.compile(r"^\s*GE(\s|_|$)|GENERAL ELECTRIC", re.IGNORECASE)
GE_CREATOR = "GEMS_PARM_01"


def _is_ge(ds: Dataset) -> bool:
    if _GE.search(str(ds.get("Manufacturer", "") or "")):
        return True
    try:
        ds.private_block(0x0043, GE_CREATOR)
    except KeyError:
        return False
    return True


def phase_radians(values: np.ndarray, ds: Dataset, frame_number: int | None) -> np.ndarray:
    """Real-world phase values of one frame (after the rescale) as radians in [-pi, pi).

    GE or RescaleType MRAD: milliradians. RescaleType RAD or float pixel data: radians.
    Otherwise the stored pixel type's range (BitsStored, PixelRepresentation) after rescale
    is one turn from -pi: Siemens 0..4095 is -pi..pi (2048 = 0), and stored 0..4095 with
    slope 2 and intercept -4096 (or signed -4096..4095) is -4096 = -pi, 4096 = pi.
    """
    unit = str(_rescale_source(ds, frame_number).get("RescaleType", "") or "").strip().upper()
    if unit == "MRAD" or _is_ge(ds):
        radians = values / np.float32(1000.0)
    elif unit == "RAD" or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        radians = values.astype(np.float32)
    else:
        slope, intercept = rescale_of(ds, frame_number)
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
        lowest = -(2 ** (bits - 1)) if int(ds.get("PixelRepresentation", 0) or 0) else 0
        turn = 2**bits * abs(slope)
        radians = (values - np.float32(lowest * slope + intercept)) * np.float32(
            2 * np.pi / turn) - np.float32(np.pi)
    return (np.mod(radians + np.float32(np.pi), np.float32(2 * np.pi))
            - np.float32(np.pi)).astype(np.float32)


def load_slices(slots: list[Frame | None], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Stack the frames of one role into ``[k, j, i]`` float32 and a mask of present slices
(phase frames in radians).

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
            values = plane.astype(np.float32) * np.float32(slope) + np.float32(intercept)
            if frame.role == ECHO_PHASE:
                values = phase_radians(values, ds, frame.frame_number)
            volume[k] = values
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
