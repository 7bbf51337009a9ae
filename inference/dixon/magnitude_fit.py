"""Fat fraction from multi-echo MAGNITUDE images, T2*-corrected, with the multi-peak fat model.

Why: the two-point formula ``FF = (IP - OP) / 2 IP`` reads low in muscle because the echoes
decay differently (the in-phase echo is later than the out-of-phase one) and because fat is
not one peak. With three echoes whose outer two share a phase class (e.g. out of phase at
3.45 and 5.75 ms, in phase at 4.60 ms at 3 T) the decay cancels exactly:

    |S_n| = rho * m_n(eta) * exp(-R2* t_n),   m_n(eta) = |1 - eta + eta c(t_n)|

has three unknowns (rho, eta, R2*) for three echoes. Taking logs, the combination
``d = sum_n v_n log|S_n|`` with ``v`` orthogonal to (1, 1, 1) and to the echo times removes
rho and R2*, leaving ``d = g(eta) = sum_n v_n log m_n(eta)``: one equation in eta, solved by
table look-up. R2* then follows from the decay (:func:`r2star_from_magnitudes`).

The ambiguity, explicitly: ``g`` has a minimum (where the out-of-phase signal is smallest,
near eta = 0.6 at 3 T) and is monotonic on either side, so every voxel has TWO solutions, a
water-dominant one and a fat-dominant one, and with three echoes both fit exactly: magnitude
data cannot tell them apart voxel by voxel. Both are returned; ``ambiguity.choose_branch``
picks one with an anatomical prior. Values are not clipped at 0 or 100 % (the table spans
-30..130 %) so that noise averages out in a muscle's mean instead of being folded upwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.dixon.ambiguity import choose_branch
from inference.dixon.signal_model import magnitude_factors
from inference.dixon.spectrum import HAMILTON_2011, FatSpectrum

ETA_RANGE = (-0.3, 1.3)  # fat fractions the look-up table spans
TABLE_SIZE = 4001
CHUNK_VOXELS = 4_000_000  # voxels processed together (bounds the temporaries)


@dataclass(frozen=True)
class MagnitudeFit:
    """Per voxel: the chosen fat fraction (fraction; NaN outside the body), whether the
    fat-dominant solution was chosen, and whether the choice is undecided."""

    fat_fraction: np.ndarray
    fat_dominant: np.ndarray
    undecided: np.ndarray


def fit_magnitude(magnitudes: list[np.ndarray], echo_times_ms, field_strength_t: float,
                  triple: tuple[int, int, int], body: np.ndarray, floor: float,
                  spectrum: FatSpectrum = HAMILTON_2011) -> MagnitudeFit:
    """Both solutions of the triple's magnitudes, then the anatomical choice, chunk by chunk
    of whole slices (``[k, j, i]``; ``floor`` as in :func:`magnitude_branches`)."""
    times = tuple(float(echo_times_ms[i]) for i in triple)
    table = branch_table(times, field_strength_t, spectrum)
    shape = body.shape
    ff = np.full(shape, np.nan, dtype=np.float32)
    fat_dominant = np.zeros(shape, dtype=bool)
    undecided = np.zeros(shape, dtype=bool)
    step = max(1, CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        block = slice(start, start + step)
        water, fat = magnitude_branches(tuple(magnitudes[i][block] for i in triple), table, floor)
        ff[block], fat_dominant[block], undecided[block] = choose_branch(water, fat, body[block])
    return MagnitudeFit(ff, fat_dominant, undecided)


@dataclass(frozen=True)
class BranchTable:
    """``g(eta)`` of one echo triple, split at its minimum into two monotonic branches."""

    weights: np.ndarray  # v, float64 [3]
    eta: np.ndarray  # float64 [TABLE_SIZE]
    g: np.ndarray  # float64 [TABLE_SIZE]
    turn: int  # index of the minimum of g

    @property
    def turning_fat_fraction(self) -> float:
        return float(self.eta[self.turn])

    def branches(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The water-dominant (eta <= turning point) and fat-dominant solutions of
        ``g(eta) = d``; ``d`` beyond a branch's range gives that branch's end value."""
        g_water, eta_water = self.g[: self.turn + 1][::-1], self.eta[: self.turn + 1][::-1]
        g_fat, eta_fat = self.g[self.turn:], self.eta[self.turn:]
        water = np.interp(d, g_water, eta_water).astype(np.float32)
        fat = np.interp(d, g_fat, eta_fat).astype(np.float32)
        return water, fat


def branch_table(echo_times_ms: tuple[float, float, float], field_strength_t: float,
                 spectrum: FatSpectrum = HAMILTON_2011) -> BranchTable:
    """The look-up table of ``g`` for three echo times (ascending)."""
    t = np.asarray(echo_times_ms, dtype=np.float64)
    weights = np.cross(np.ones(3), t)
    weights /= np.abs(weights).max()
    eta = np.linspace(*ETA_RANGE, TABLE_SIZE)
    g = np.log(magnitude_factors(eta, t, field_strength_t, spectrum)) @ weights
    if g[np.argmax(np.abs(g))] > 0:  # middle echo out of phase: orient g to have a minimum
        weights, g = -weights, -g
    turn = int(np.argmin(g))
    # The two out-of-phase-like echoes null at slightly different fat fractions, so g can
    # wiggle within a few per cent of its minimum; each branch keeps its monotonic envelope.
    g[: turn + 1] = np.minimum.accumulate(g[: turn + 1])
    g[turn:] = np.minimum.accumulate(g[turn:][::-1])[::-1]
    return BranchTable(weights, eta, g, turn)


def magnitude_branches(magnitudes: tuple[np.ndarray, np.ndarray, np.ndarray],
                       table: BranchTable, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Both fat-fraction solutions (fractions, float32) of three magnitude images; values
    below ``floor`` count as ``floor`` (the log of a zero-signal voxel)."""
    d = np.zeros(np.shape(magnitudes[0]), dtype=np.float32)
    for weight, image in zip(table.weights, magnitudes):
        d += np.float32(weight) * np.log(np.maximum(np.asarray(image, np.float32), np.float32(floor)))
    return table.branches(d)


def r2star_from_magnitudes(magnitudes: list[np.ndarray], echo_times_ms, fat_fraction: np.ndarray,
                           field_strength_t: float, floor: float,
                           spectrum: FatSpectrum = HAMILTON_2011) -> np.ndarray:
    """R2* (1/s) as the least-squares decay rate of ``|S_n| / m_n(eta)`` over the echoes."""
    t = np.asarray(echo_times_ms, dtype=np.float64) * 1e-3
    slope_weights = (t - t.mean()) / np.sum((t - t.mean()) ** 2)
    eta = np.asarray(fat_fraction, dtype=np.float64)
    factors = magnitude_factors(np.clip(eta, *ETA_RANGE), echo_times_ms, field_strength_t, spectrum)
    rate = np.zeros(eta.shape, dtype=np.float64)
    for n, image in enumerate(magnitudes):
        signal = np.maximum(np.asarray(image, np.float64), floor)
        rate -= slope_weights[n] * (np.log(signal) - np.log(np.maximum(factors[..., n], 1e-6)))
    return rate.astype(np.float32)
