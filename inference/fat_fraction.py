"""Fat fraction maps (percent) from whichever Dixon images a scan provides.

The seed computed the proton-density fat fraction as fat / (fat + water) from the scanner's
fat-only and water-only images (Huysmans 2023, 2.1). Voxels outside the body (air: both
signals at noise level, the ratio meaningless) and near-zero denominators are NaN, so that
statistics exclude them explicitly rather than averaging noise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# factor that turns a scanner FF map's stored values into percent
FF_UNITS = {"percent": 1.0, "fraction": 100.0, "permille": 0.1}
SOURCES = ("water_fat", "fat_fraction", "ip_op")


@dataclass(frozen=True)
class FatFractionMap:
    """FF in percent (NaN = masked) and which images it came from."""

    ff_pct: np.ndarray
    source: str


def robust_max(data: np.ndarray, percentile: float = 99.0, sample: int = 2_000_000) -> float:
    """A high percentile of the finite values: unlike the maximum, a few bright artefact
    voxels cannot move it. Taken on a regular subsample of at most ``sample`` voxels
    (deterministic), which is plenty for a percentile and ~20x faster on a whole scan."""
    flat = np.asarray(data).reshape(-1)
    flat = flat[:: max(1, flat.size // sample)]
    flat = flat[np.isfinite(flat)]
    return float(np.percentile(flat, percentile)) if flat.size else 0.0


def signal_mask(signal: np.ndarray, background_fraction: float = 0.05, percentile: float = 99.0) -> np.ndarray:
    """Voxels whose total signal reaches ``background_fraction`` of a robust maximum."""
    data = np.asarray(signal, dtype=np.float32)
    threshold = background_fraction * robust_max(data, percentile)
    return np.isfinite(data) & (data >= threshold) & (data > 0)


def ff_from_water_fat(
    water: np.ndarray,
    fat: np.ndarray,
    background_fraction: float = 0.05,
    percentile: float = 99.0,
    min_denominator: float = 1e-6,
) -> np.ndarray:
    """100 * F / (F + W); NaN where F + W is background or below ``min_denominator``.

    Values are clipped to [0, 100]: magnitude W and F are non-negative, so a value outside
    only arises from negative inputs (e.g. the IP/OP difference below), i.e. noise.
    """
    w = np.asarray(water, dtype=np.float32)
    f = np.asarray(fat, dtype=np.float32)
    total = w + f
    valid = signal_mask(total, background_fraction, percentile) & (total > min_denominator)
    ff = np.full(total.shape, np.nan, dtype=np.float32)
    np.divide(100.0 * f, total, out=ff, where=valid)
    return np.clip(ff, 0.0, 100.0, out=ff)  # NaN stays NaN


def water_fat_from_ip_op(in_phase: np.ndarray, out_of_phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-point Dixon: W = (IP + OP) / 2, F = (IP - OP) / 2.

    This ASSUMES fat < water in every voxel. Magnitude images give |W + F| and |W - F|, so
    the formulas above swap W and F wherever fat dominates: subcutaneous and intermuscular
    fat, bone marrow and heavily infiltrated (end-stage) muscle come out with FF = 100 - true
    FF (never above 50%). Magnitude OP cannot resolve this; it needs phase information
    (complex data) or the scanner's own water/fat/FF images, which are preferred.
    """
    ip = np.asarray(in_phase, dtype=np.float32)
    op = np.asarray(out_of_phase, dtype=np.float32)
    return (ip + op) / 2.0, (ip - op) / 2.0


def ff_from_scanner_map(
    ff_map: np.ndarray, units: str = "percent", mask: np.ndarray | None = None
) -> np.ndarray:
    """A scanner FF map in percent: ``units`` is ``percent``, ``fraction`` (0..1) or
    ``permille`` (0..1000, e.g. percent x 10 in integer pixels). Values are clipped to
    [0, 100]; outside ``mask`` (e.g. :func:`signal_mask` of the in-phase image) NaN, because
    scanner maps carry noise-level ratios in the air."""
    if units not in FF_UNITS:
        raise ValueError(f"units must be one of {list(FF_UNITS)}, got {units!r}")
    ff = np.clip(np.asarray(ff_map, dtype=np.float32) * FF_UNITS[units], 0.0, 100.0)
    if mask is not None:
        ff = np.where(mask, ff, np.float32(np.nan))
    return ff


def fat_fraction_map(
    images: Mapping[str, np.ndarray],
    prefer: Sequence[str] = SOURCES,
    ff_units: str = "percent",
    background_fraction: float = 0.05,
) -> FatFractionMap:
    """FF from the first available source in ``prefer`` (Dixon role name -> array).

    Default order follows the seed (its own F/(F+W)); then a scanner FF map, masked by the
    in-phase (or water + fat) signal where one is present; IP/OP last because of its
    fat-water ambiguity (see :func:`water_fat_from_ip_op`).
    """
    for source in prefer:
        if source not in SOURCES:
            raise ValueError(f"unknown FF source {source!r}; allowed {list(SOURCES)}")
        if source == "water_fat" and {"water", "fat"} <= images.keys():
            return FatFractionMap(
                ff_from_water_fat(images["water"], images["fat"], background_fraction), source
            )
        if source == "fat_fraction" and "fat_fraction" in images:
            mask = None
            if "in_phase" in images:
                mask = signal_mask(images["in_phase"], background_fraction)
            elif {"water", "fat"} <= images.keys():
                mask = signal_mask(np.add(images["water"], images["fat"], dtype=np.float32), background_fraction)
            return FatFractionMap(ff_from_scanner_map(images["fat_fraction"], ff_units, mask), source)
        if source == "ip_op" and {"in_phase", "out_of_phase"} <= images.keys():
            water, fat = water_fat_from_ip_op(images["in_phase"], images["out_of_phase"])
            return FatFractionMap(ff_from_water_fat(water, fat, background_fraction), source)
    raise ValueError(f"no FF source among {list(prefer)} in the images given ({sorted(images)})")
