"""Fat fraction maps (percent) from whichever Dixon images or echoes a scan provides.

The seed computed the proton-density fat fraction as fat / (fat + water) from the scanner's
fat-only and water-only images (Huysmans 2023, 2.1). Scans that provide only echoes, or only
in- and out-of-phase images, need the fat fraction computed here, and how it was computed
matters as much as the number: the two-point formula reads several points low (T2* decay
between the echoes, multi-peak fat), so every map says what was computed (``method``) and
what is known to bias it (``limits``), for the report. Sources, in the default order:

* ``water_fat``: the scanner's water and fat images, F / (F + W);
* ``fat_fraction``: the scanner's own FF map;
* ``complex_echoes``: three-point Dixon on magnitude + phase echoes (``dixon.complex_fit``);
* ``magnitude_echoes``: T2*-corrected magnitude fit of three echoes (``dixon.magnitude_fit``);
* ``ip_op``: the two-point formula on in-phase/out-of-phase magnitudes.

Voxels outside the body (air: both signals at noise level, the ratio meaningless) and near-
zero denominators are NaN, so that statistics exclude them explicitly rather than averaging
noise. The scanner-image sources are clipped to 0..100 %; the echo fits are not (they span
-30..130 %), so that noise averages out in a muscle's mean instead of being folded upwards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inference.dixon.complex_fit import fit_complex
from inference.dixon.echoes import IN_PHASE, EchoSet, dixon_triple, echo_phase_class
from inference.dixon.magnitude_fit import ETA_RANGE, fit_magnitude
from inference.dixon.spectrum import HAMILTON_2011

# factor that turns a scanner FF map's stored values into percent
FF_UNITS = {"percent": 1.0, "fraction": 100.0, "permille": 0.1}
SOURCES = ("water_fat", "fat_fraction", "complex_echoes", "magnitude_echoes", "ip_op")
FLOOR_FRACTION = 1e-3  # echo magnitudes below this share of the robust maximum count as it


@dataclass(frozen=True)
class FatFractionMap:
    """FF in percent (NaN = masked), which images it came from and how, and its known limits;
    ``undecided`` marks voxels whose water/fat assignment the method could not decide (only
    the magnitude-echo fit has such voxels)."""

    ff_pct: np.ndarray
    source: str
    method: str = ""
    limits: str = ""
    undecided: np.ndarray | None = None


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
    echoes: EchoSet | None = None,
) -> FatFractionMap:
    """FF from the first available source in ``prefer`` (Dixon role name -> array, and the
    echoes of the same grid when the scan has them).

    A scanner FF map is masked by the in-phase (or water + fat) signal where one is present;
    the echo fits need an out/in/out-of-phase (or in/out/in) triple of echoes, the complex
    one equally spaced and with phases; IP/OP comes last because of its fat-water ambiguity
    (see :func:`water_fat_from_ip_op`).
    """
    for source in prefer:
        if source not in SOURCES:
            raise ValueError(f"unknown FF source {source!r}; allowed {list(SOURCES)}")
        if source == "water_fat" and {"water", "fat"} <= images.keys():
            return FatFractionMap(
                ff_from_water_fat(images["water"], images["fat"], background_fraction), source,
                "F / (F + W) from the scanner's water and fat images",
                "as good as the scanner's separation (its fat model, T2* handling, water/fat "
                "swaps); magnitude images put a noise floor under low FF")
        if source == "fat_fraction" and "fat_fraction" in images:
            mask = None
            if "in_phase" in images:
                mask = signal_mask(images["in_phase"], background_fraction)
            elif {"water", "fat"} <= images.keys():
                mask = signal_mask(np.add(images["water"], images["fat"], dtype=np.float32), background_fraction)
            return FatFractionMap(
                ff_from_scanner_map(images["fat_fraction"], ff_units, mask), source,
                f"the scanner's FF map (stored in {ff_units})",
                "the scanner's own method; values clipped to 0..100 %")
        if source == "complex_echoes" and echoes is not None and echoes.phases is not None:
            triple = dixon_triple(echoes.echo_times_ms, echoes.field_strength_t, equally_spaced=True)
            if triple is not None:
                return _complex_map(echoes, triple, background_fraction)
        if source == "magnitude_echoes" and echoes is not None:
            triple = dixon_triple(echoes.echo_times_ms, echoes.field_strength_t)
            if triple is not None:
                return _magnitude_map(echoes, triple, background_fraction)
        if source == "ip_op" and {"in_phase", "out_of_phase"} <= images.keys():
            water, fat = water_fat_from_ip_op(images["in_phase"], images["out_of_phase"])
            return FatFractionMap(
                ff_from_water_fat(water, fat, background_fraction), source,
                "two-point Dixon: W = (IP + OP) / 2, F = (IP - OP) / 2",
                "assumes fat < water in every voxel (fat-dominant tissue reads 100 - FF); "
                "ignores the T2* decay between the echoes and the multi-peak fat spectrum, "
                "so it reads low: with OP 3.45 / IP 4.60 ms at 3 T by 2-3 points in healthy "
                "muscle and 8-15 points at 10-50 % (docs/fat-fraction.md)")
    raise ValueError(f"no FF source among {list(prefer)} in the images given ({sorted(images)})")


def _echo_mask(echoes: EchoSet, triple: tuple[int, int, int], background_fraction: float) -> np.ndarray:
    """The body: signal of the triple's in-phase-class echo (its middle one for out/in/out)."""
    return signal_mask(echoes.magnitudes[_in_phase_echo(echoes, triple)], background_fraction)


def _in_phase_echo(echoes: EchoSet, triple: tuple[int, int, int]) -> int:
    a, b, _ = triple
    middle = echo_phase_class(echoes.echo_times_ms[b], echoes.field_strength_t)
    return b if middle == IN_PHASE else a


def _times_text(echoes: EchoSet, triple: tuple[int, int, int]) -> str:
    times = "/".join(f"{echoes.echo_times_ms[i]:.2f}" for i in triple)
    return f"echoes {times} ms at {echoes.field_strength_t:g} T"


def _complex_map(echoes: EchoSet, triple: tuple[int, int, int],
                 background_fraction: float) -> FatFractionMap:
    body = _echo_mask(echoes, triple, background_fraction)
    fit = fit_complex(list(echoes.magnitudes), list(echoes.phases), echoes.echo_times_ms,
                      echoes.field_strength_t, triple, body)
    error = float(np.median(fit.echo_phase_error))
    sign = "phase sign reversed, " if fit.conjugated else ""
    a, _, c = triple
    reach_hz = 500.0 / (echoes.echo_times_ms[c] - echoes.echo_times_ms[a])
    method = (f"complex 3-point Dixon ({_times_text(echoes, triple)}, all "
              f"{len(echoes.echo_times_ms)} echoes in the solve): closed-form field/R2* "
              f"candidates, smoothed swap-free field map, phase-constrained water/fat least "
              f"squares, {HAMILTON_2011.name}, one R2*; {sign}echo phase error "
              f"{error:+.3f} rad removed")
    limits = (f"one R2* for water and fat (a water/fat R2* gap of 10 1/s reads ~+1 point at "
              f"40 %); fixed fat spectrum; field map assumed smooth and, in each connected part "
              f"of a slice, centred within +-{reach_hz:.0f} Hz of water; no T1 correction "
              f"(signal FF: T1-weighted unless the flip angle is low); motion between "
              f"separately acquired echoes not corrected")
    return FatFractionMap(_percent(fit.fat_fraction), "complex_echoes", method, limits)


def _magnitude_map(echoes: EchoSet, triple: tuple[int, int, int],
                   background_fraction: float) -> FatFractionMap:
    body = _echo_mask(echoes, triple, background_fraction)
    floor = FLOOR_FRACTION * robust_max(echoes.magnitudes[_in_phase_echo(echoes, triple)])
    fit = fit_magnitude(list(echoes.magnitudes), echoes.echo_times_ms,
                        echoes.field_strength_t, triple, body, max(floor, 1e-6))
    pair = "in-phase" if _in_phase_echo(echoes, triple) == triple[0] else "out-of-phase"
    method = (f"3-echo magnitude fit ({_times_text(echoes, triple)}): R2* from the two "
              f"{pair} echoes, {HAMILTON_2011.name}; water- or fat-dominant solution by an "
              f"anatomical prior (fat-dominant: subcutaneous shell, marrow)")
    share = 100.0 * fit.undecided.sum() / max(1, body.sum())
    limits = (f"magnitudes cannot tell water- from fat-dominant voxels: fat-dominant tissue "
              f"not joined to the subcutaneous fat reads below the turning point (~60 % at "
              f"3 T); {share:.1f} % of the body undecided (flagged); one R2* for water and fat; "
              f"fixed fat spectrum; no T1 correction; magnitude noise floor near the "
              f"out-of-phase null")
    return FatFractionMap(_percent(fit.fat_fraction), "magnitude_echoes", method, limits,
                          fit.undecided)


def _percent(fraction: np.ndarray) -> np.ndarray:
    """Fractions to percent within the fits' range (NaN stays NaN)."""
    low, high = 100.0 * ETA_RANGE[0], 100.0 * ETA_RANGE[1]
    return np.clip(np.float32(100.0) * fraction, low, high).astype(np.float32)
