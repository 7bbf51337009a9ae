"""Fat fraction from COMPLEX multi-echo images (magnitude + phase): three-point Dixon with B0.

Why: the phase says on which side of the water/fat ambiguity a voxel lies, which magnitude
data cannot, and a phase-constrained solve (water and fat share one initial phase, so both are
real and signed) is free of the noise floor that biases magnitude fat fractions near 0 and
near the out-of-phase null. Steps, for an equally spaced out/in/out-of-phase triple
``t_a < t_b < t_c`` (or in/out/in) and slice by slice:

1. *Closed-form candidates.* With ``y = exp((i 2 pi psi - R2*) dt)`` the signal model
   ``S_n = e^{i phi0} e^{(i 2 pi psi - R2*) t_n} (W + F c_n)`` makes
   ``(c_c - c_b) S_a y^2 + (c_a - c_c) S_b y + (c_b - c_a) S_c = 0`` (the data vector is
   orthogonal to the model's null vector), a quadratic: two roots, i.e. two candidate
   (off-resonance psi, R2*) pairs per voxel, about half the fat-water period apart: the true
   one and the water/fat-swapped one.
2. *Smooth field map.* ``S_c conj(S_a)`` has phase ``2 pi psi (t_c - t_a)`` for both
   candidates (the swap cancels), so its spatially smoothed phase is a swap-free field map,
   known modulo ``1 / (t_c - t_a)`` (435 Hz at 3 T). It is unwrapped on a coarse grid by
   quality-guided region growing (best-signal cells first) and each connected part of the
   body is placed so that its median field lies within half a period of 0 Hz: the scanner
   centres its frequency on water. Each voxel takes the candidate nearest this map.
   (A root whose R2* is far outside the physical range loses: near the out-of-phase null,
   where the map is least reliable, the swapped root decays backwards.)
3. *Solve.* The chosen candidates' field is smoothed once more (B0 varies slowly) and, with
   R2* from the chosen root (clipped to 0..500 1/s), water and fat follow from a linear
   phase-constrained least-squares fit over all echoes (initial phase in closed form:
   Bydder et al., Magn Reson Imaging 2011;29:216-221).

Phase calibration (:func:`calibrate_phase`): echoes from separate acquisitions (or with
eddy-current delays) carry a small echo-dependent phase error, and vendors differ in the
sign of the phase. The error is modelled as the quadratic-in-echo-time phase
``theta(t) = -(delta/2) u (2 - u)``, ``u = (t - t_a) / (t_b - t_a)`` (second difference
``delta`` over the triple), found as the ``delta`` with the lowest summed phase-
constrained residual; the real Siemens thigh has ``delta`` ~0.09 rad, which alone would bias
muscle FF by about -1 point. The sign is the one whose field map picks roots that fit better.
"""

from __future__ import annotations

import heapq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.dixon.spectrum import HAMILTON_2011, FatSpectrum

R2STAR_LIMITS = (0.0, 500.0)  # 1/s: R2* used in the solve is clipped to this range
R2STAR_SLACK = 100.0  # 1/s: a root decaying backwards faster than this is not physical
SMOOTH_FRACTION = 1 / 64  # Gaussian sigma of the swap-free field map, fraction of the slice
FINAL_SMOOTH_PX = 1.5  # sigma of the final field map smoothing, pixels
COARSE_FRACTION = 1 / 48  # coarse unwrapping cell size, fraction of the slice
MIN_COVERAGE = 0.25  # cells with less reliable signal than this are not unwrapped
MIN_COHERENCE = 0.5  # ... nor cells whose pair phases disagree (|sum| / sum of |.|)
RELIABLE_FRACTION = 0.15  # field maps are estimated where the signal reaches this share of
# the slice's 99th percentile (speckle of background noise removed by an opening)
SAMPLE = 50_000  # voxels of the whole set used for the first guess of its echo phase error
DELTA_GRID = np.linspace(-0.6, 0.6, 25)  # radians, echo phase second difference searched
CHOSEN_STEPS = np.linspace(-0.06, 0.06, 5)  # radians around the first guess (step 2)
WORKERS = 2  # slices fitted in parallel threads
SIGN_SLICES = 3  # slices (the most body) on which the phase sign convention is decided
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class ComplexFit:
    """Per voxel (NaN outside the mask): fat fraction (fraction), field map (Hz), R2* (1/s)."""

    fat_fraction: np.ndarray
    field_hz: np.ndarray
    r2star: np.ndarray
    conjugated: bool  # the phases were read with the opposite sign convention
    echo_phase_error: np.ndarray  # per slice: second difference removed, radians


def fit_complex(magnitudes: list[np.ndarray], phases: list[np.ndarray], echo_times_ms,
                field_strength_t: float, triple: tuple[int, int, int], body: np.ndarray,
                spectrum: FatSpectrum = HAMILTON_2011) -> ComplexFit:
    """Fit every slice of ``[k, j, i]`` echo images; ``triple`` indexes the equally spaced
    out/in/out (or in/out/in) echoes, ``body`` the voxels to fit."""
    times = np.asarray(echo_times_ms, dtype=np.float64)
    phasors = spectrum.phasors(times, field_strength_t)
    conjugate, errors = calibrate_phase(magnitudes, phases, times, phasors, triple, body)
    out = [np.full(body.shape, np.nan, dtype=np.float32) for _ in range(3)]

    def fit(k: int) -> None:
        voxels = np.flatnonzero(body[k].reshape(-1))
        if voxels.size == 0:
            return
        signals = _slice_signals(magnitudes, phases, k, voxels, conjugate, times, triple, errors[k])
        for target, values in zip(out, _fit_slice(signals, voxels, body.shape[1:], times,
                                                  phasors, triple)):
            target[k].reshape(-1)[voxels] = values

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:  # NumPy releases the GIL
        list(pool.map(fit, range(body.shape[0])))
    return ComplexFit(out[0], out[1], out[2], conjugate, errors)


def calibrate_phase(magnitudes, phases, times: np.ndarray, phasors: np.ndarray,
                    triple: tuple[int, int, int], body: np.ndarray) -> tuple[bool, np.ndarray]:
    """The phase sign convention (True: reversed) and the echo phase error (rad, per slice:
    one value for the whole set).

    1. A first guess of the error on a subsample of the whole set: the lowest residual at the
       better of the two roots per voxel (fast, blind to the sign, but biased by noise, since
       the better root is sometimes the swapped one).
    2. Sign and error together on the ``SIGN_SLICES`` slices with the most body: the residual
       at the roots each sign's field map chooses, at ``CHOSEN_STEPS`` around the guess, its
       minimum refined by a parabola. One value serves all slices: a per-slice estimate is
       noisier (+-0.03 rad, +-0.3 points of FF) than the slice-to-slice differences of one
       acquisition; stacks acquired separately are best fitted as separate echo sets.
    """
    flat = np.flatnonzero(body.reshape(-1))
    sample = flat[:: max(1, flat.size // SAMPLE)]
    signals = [_complex(np.asarray(m).reshape(-1)[sample], np.asarray(p).reshape(-1)[sample])
               for m, p in zip(magnitudes, phases)]
    guess = _best_error(signals, times, phasors, triple, DELTA_GRID)
    counts = body.reshape(body.shape[0], -1).sum(axis=1)
    slices = [int(k) for k in np.argsort(counts)[::-1][:SIGN_SLICES] if counts[k] > 0]
    best = None
    for conjugate in (False, True):
        grid = (-guess if conjugate else guess) + CHOSEN_STEPS
        costs = [_chosen_cost(magnitudes, phases, slices, body, conjugate, times, phasors, triple, d)
                 for d in grid]
        if best is None or min(costs) < best[2]:
            best = (conjugate, _parabola_minimum(grid, costs), min(costs))
    conjugate, overall, _ = best
    return conjugate, np.full(body.shape[0], overall, dtype=np.float64)


def _chosen_cost(magnitudes, phases, slices, body, conjugate, times, phasors, triple, delta) -> float:
    """Summed phase-constrained residual, over the reliable voxels of ``slices``, at the roots
    the field map chooses for one sign convention and echo phase error."""
    total = 0.0
    for k in slices:
        voxels = np.flatnonzero(body[k].reshape(-1))
        signals = _slice_signals(magnitudes, phases, k, voxels, conjugate, times, triple, delta)
        psi, rate, reliable = _choose_roots(signals, voxels, body.shape[1:], times, phasors, triple)
        chosen = [s[reliable] for s in signals]
        total += float(np.nansum(constrained_residual(chosen, times, phasors, psi[reliable],
                                                      rate[reliable])))
    return total


def _parabola_minimum(grid: np.ndarray, costs: list[float]) -> float:
    """The minimum of ``costs`` on ``grid``, refined by a parabola through it and its
    neighbours (the grid point itself at an end or without curvature)."""
    i = int(np.argmin(costs))
    if i == 0 or i == len(grid) - 1:
        return float(grid[i])
    left, mid, right = costs[i - 1], costs[i], costs[i + 1]
    curvature = left - 2 * mid + right
    if curvature <= 0:
        return float(grid[i])
    shift = np.clip(0.5 * (left - right) / curvature, -1.0, 1.0)
    return float(grid[i] + shift * (grid[i + 1] - grid[i]))


def _best_error(signals, times, phasors, triple, grid) -> float:
    """The echo phase error on ``grid`` (refined by a parabola) with the lowest summed
    phase-constrained residual at the better root of each voxel."""
    costs = []
    for delta in grid:
        corrected = _corrected(signals, times, triple, delta)
        psi, rate = candidate_roots(corrected, times, phasors, triple)
        best = np.minimum(*(constrained_residual(corrected, times, phasors, psi[i], rate[i])
                            for i in range(2)))
        costs.append(float(np.nansum(best)))
    return _parabola_minimum(np.asarray(grid), costs)


def _corrected(signals, times, triple, delta: float) -> list[np.ndarray]:
    """Echo signals with the quadratic phase error of second difference ``delta`` removed."""
    a, b, _ = triple
    out = []
    for n, signal in enumerate(signals):
        u = (times[n] - times[a]) / (times[b] - times[a])
        theta = -0.5 * delta * u * (2.0 - u)
        out.append(signal * np.complex64(np.exp(-1j * theta)))
    return out


def _slice_signals(magnitudes, phases, k: int, voxels: np.ndarray, conjugate: bool, times,
                   triple, delta: float) -> list[np.ndarray]:
    """Complex signals of slice ``k`` at ``voxels`` (flat indices), sign and error corrected."""
    sign = np.float32(-1.0 if conjugate else 1.0)
    raw = [_complex(np.asarray(m[k]).reshape(-1)[voxels], sign * np.asarray(p[k], np.float32).reshape(-1)[voxels])
           for m, p in zip(magnitudes, phases)]
    return _corrected(raw, times, triple, delta)


def candidate_roots(signals: list[np.ndarray], times: np.ndarray, phasors: np.ndarray,
                    triple: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The two (off-resonance Hz, R2* 1/s) solutions of the triple's quadratic, ``[2, ...]``."""
    a, b, c = triple
    step = (times[b] - times[a]) * 1e-3
    ca, cb, cc = (complex(phasors[i]) for i in triple)  # Python scalars keep complex64
    qa = (cc - cb) * signals[a]
    qb = (ca - cc) * signals[b]
    qc = (cb - ca) * signals[c]
    root = np.sqrt(qb * qb - 4 * qa * qc)
    root = np.where((np.conj(qb) * root).real < 0, -root, root)
    half = -(qb + root) / 2  # stable form: y1 = half / qa, y2 = qc / half
    tiny = np.complex64(1e-30)
    y = np.stack([half / np.where(qa == 0, tiny, qa), qc / np.where(half == 0, tiny, half)])
    y = np.where(y == 0, tiny, y)
    psi = np.angle(y) / np.float32(2 * np.pi * step)
    rate = -np.log(np.abs(y)) / np.float32(step)
    return psi.astype(np.float32), rate.astype(np.float32)


def constrained_solve(signals: list[np.ndarray], times: np.ndarray, phasors: np.ndarray,
                      psi: np.ndarray, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real water and fat (same initial phase) by least squares over all echoes, at a given
    off-resonance and R2* per voxel."""
    q0, q1, n00, n01, n11 = _normal_terms(signals, times, phasors, psi, rate)
    phase = 0.5 * np.angle(n00 * q0 * q0 + 2 * n01 * q0 * q1 + n11 * q1 * q1)
    turn = np.exp(-1j * phase)
    a0, a1 = (turn * q0).real, (turn * q1).real
    water = n00 * a0 + n01 * a1
    fat = n01 * a0 + n11 * a1
    sign = np.where(water + fat < 0, np.float32(-1.0), np.float32(1.0))  # phi0 vs phi0 + pi
    return (sign * water).astype(np.float32), (sign * fat).astype(np.float32)


def constrained_residual(signals: list[np.ndarray], times: np.ndarray, phasors: np.ndarray,
                         psi: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """``||S - e^{i phi0} A (W, F)||^2`` at the phase-constrained optimum."""
    q0, q1, n00, n01, n11 = _normal_terms(signals, times, phasors, psi, rate)
    energy = sum(np.abs(s) ** 2 for s in signals)
    hermitian = n00 * np.abs(q0) ** 2 + 2 * n01 * (np.conj(q0) * q1).real + n11 * np.abs(q1) ** 2
    bilinear = np.abs(n00 * q0 * q0 + 2 * n01 * q0 * q1 + n11 * q1 * q1)
    return energy - 0.5 * (hermitian + bilinear)


def _normal_terms(signals, times, phasors, psi, rate):
    """``q = A^H S`` and ``N = Re(A^H A)^-1`` of the two-column model ``A = E [1, c]``
    (``E_n = exp((i 2 pi psi - R2*) t_n)``), in single precision."""
    rate = np.clip(np.asarray(rate, np.float32), *R2STAR_LIMITS)
    exponent = (-rate - 1j * np.float32(2 * np.pi) * np.asarray(psi, np.float32)).astype(np.complex64)
    q0 = q1 = m00 = m01 = m11 = 0
    for n, signal in enumerate(signals):
        t = np.float32(times[n] * 1e-3)
        back = np.exp(exponent * t) * signal  # conj(E_n) S_n
        c = complex(phasors[n])
        q0 = q0 + back
        q1 = q1 + c.conjugate() * back
        d2 = np.exp(rate * (-2 * t))
        m00 = m00 + d2
        m01 = m01 + np.float32(c.real) * d2
        m11 = m11 + np.float32(abs(c) ** 2) * d2
    det = m00 * m11 - m01 * m01
    return q0, q1, m11 / det, -m01 / det, m00 / det


def _complex(magnitude, phase) -> np.ndarray:
    return (np.asarray(magnitude, np.float32) * np.exp(1j * np.asarray(phase, np.float32))).astype(np.complex64)


def _scatter(values: np.ndarray, voxels: np.ndarray, shape, fill=0) -> np.ndarray:
    out = np.full(int(np.prod(shape)), fill, dtype=values.dtype)
    out[voxels] = values
    return out.reshape(shape)


def _choose_roots(signals, voxels, shape, times, phasors, triple):
    """Per voxel of a slice (``voxels`` of a ``shape`` slice): the candidate (off-resonance,
    R2*) nearest the swap-free field map, and which voxels are reliable enough to estimate
    field maps on."""
    a, b, c = triple
    psi, rate = candidate_roots(signals, times, phasors, triple)
    reliable = reliable_mask(_scatter(np.abs(signals[b]), voxels, shape),
                             _scatter(np.ones(voxels.size, bool), voxels, shape, False))
    product = _scatter(signals[c] * np.conj(signals[a]), voxels, shape) * reliable
    reference = reference_field(product, (times[c] - times[a]) * 1e-3, reliable).reshape(-1)[voxels]
    step = (times[b] - times[a]) * 1e-3
    # distance to the field map in cycles (at most 0.5); an implausible R2* counts as a whole
    # cycle, so near the out-of-phase null (where the map is least sure) the root with a
    # physical decay wins
    distance = [np.abs(((psi[i] - reference) * step + 0.5) % 1.0 - 0.5)
                + ((rate[i] < -R2STAR_SLACK) | (rate[i] > R2STAR_LIMITS[1])) for i in range(2)]
    pick = distance[1] < distance[0]
    chosen_psi = np.where(pick, psi[1], psi[0])
    chosen_rate = np.clip(np.where(pick, rate[1], rate[0]), *R2STAR_LIMITS)
    return chosen_psi, chosen_rate, reliable.reshape(-1)[voxels]


def _fit_slice(signals, voxels, shape, times, phasors, triple):
    """Fat fraction, field map (Hz) and R2* at the slice's ``voxels``."""
    a, b, _ = triple
    chosen_psi, chosen_rate, reliable = _choose_roots(signals, voxels, shape, times, phasors, triple)
    step = (times[b] - times[a]) * 1e-3
    weight = np.where(reliable, np.abs(signals[b]), 0).astype(np.float32)
    field = smooth_phase_field(chosen_psi, weight, voxels, shape, step, FINAL_SMOOTH_PX)
    water, fat = constrained_solve(signals, times, phasors, field, chosen_rate)
    total = water + fat
    with np.errstate(divide="ignore", invalid="ignore"):
        ff = np.where(total > 0, fat / total, np.nan).astype(np.float32)
    return ff, field, chosen_rate


def reliable_mask(magnitude: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Body pixels of a slice with enough signal for a phase, isolated noise speckle removed."""
    if not body.any():
        return body
    level = RELIABLE_FRACTION * np.percentile(magnitude[body], 99)
    return ndimage.binary_opening(body & (magnitude >= level), _CROSS)


def smooth_phase_field(psi: np.ndarray, weight: np.ndarray, voxels: np.ndarray, shape,
                       step_s: float, sigma_px: float) -> np.ndarray:
    """A field map (Hz at ``voxels``, periodic in ``1 / step_s``) smoothed in the slice as a
    weighted phasor; each voxel keeps the period of its own value."""
    phasor = _scatter(weight * np.exp(1j * np.float32(2 * np.pi * step_s) * psi), voxels, shape)
    smooth = (ndimage.gaussian_filter(phasor.real, sigma_px)
              + 1j * ndimage.gaussian_filter(phasor.imag, sigma_px)).reshape(-1)[voxels]
    wrapped = np.angle(smooth) / np.float32(2 * np.pi * step_s)
    period = np.float32(1.0 / step_s)
    return (wrapped + period * np.round((psi - wrapped) / period)).astype(np.float32)


def reference_field(pair_product: np.ndarray, pair_s: float, reliable: np.ndarray) -> np.ndarray:
    """Swap-free field map (Hz) of a slice from ``S_c conj(S_a)`` (zero where unreliable):
    smoothed, then unwrapped beyond its period ``1 / pair_s`` on a coarse grid; each
    connected part's median within +- half a period of 0 Hz."""
    rows, cols = reliable.shape
    sigma = max(2.0, max(rows, cols) * SMOOTH_FRACTION)
    smooth = (ndimage.gaussian_filter(pair_product.real, sigma)
              + 1j * ndimage.gaussian_filter(pair_product.imag, sigma))
    fine = np.angle(smooth)
    cell = max(2, round(max(rows, cols) * COARSE_FRACTION))
    coarse_rows, coarse_cols = -(-rows // cell), -(-cols // cell)
    padded = np.zeros((coarse_rows * cell, coarse_cols * cell), dtype=np.complex64)
    padded[:rows, :cols] = pair_product
    cover = np.zeros(padded.shape, dtype=np.float32)
    cover[:rows, :cols] = reliable
    sums = padded.reshape(coarse_rows, cell, coarse_cols, cell).sum(axis=(1, 3))
    spread = np.abs(padded).reshape(coarse_rows, cell, coarse_cols, cell).sum(axis=(1, 3))
    coverage = cover.reshape(coarse_rows, cell, coarse_cols, cell).mean(axis=(1, 3))
    valid = (coverage >= MIN_COVERAGE) & (np.abs(sums) >= MIN_COHERENCE * np.maximum(spread, 1e-30))
    if not valid.any():
        return (fine / (2 * np.pi * pair_s)).astype(np.float32)
    coarse = _unwrap_cells(np.angle(sums), np.abs(sums), valid)
    _, (near_r, near_c) = ndimage.distance_transform_edt(~valid, return_indices=True)
    coarse = coarse[near_r, near_c]
    centre_r = (np.arange(rows) + 0.5) / cell - 0.5
    centre_c = (np.arange(cols) + 0.5) / cell - 0.5
    grid_r, grid_c = np.meshgrid(centre_r, centre_c, indexing="ij")
    up = ndimage.map_coordinates(coarse, [grid_r, grid_c], order=1, mode="nearest")
    absolute = fine + 2 * np.pi * np.round((up - fine) / (2 * np.pi))
    return (absolute / (2 * np.pi * pair_s)).astype(np.float32)


def _unwrap_cells(phase: np.ndarray, weight: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Quality-guided unwrapping of a small grid of phases (radians): grow each connected part
    from its strongest cell, strongest neighbours first; then shift each part by whole turns so
    that its weighted median phase lies in [-pi, pi)."""
    parts, count = ndimage.label(valid)
    out = np.zeros_like(phase)
    done = np.zeros(valid.shape, dtype=bool)
    rows, cols = valid.shape
    for part in range(1, count + 1):
        members = np.flatnonzero(parts.reshape(-1) == part)
        seed = int(members[np.argmax(weight.reshape(-1)[members])])
        r0, c0 = divmod(seed, cols)
        out[r0, c0] = phase[r0, c0]
        heap = [(0.0, r0, c0, r0, c0)]
        while heap:
            _, r, c, fr, fc = heapq.heappop(heap)
            if done[r, c]:
                continue
            turns = np.round((out[fr, fc] - phase[r, c]) / (2 * np.pi))
            out[r, c] = phase[r, c] + 2 * np.pi * turns
            done[r, c] = True
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < rows and 0 <= nc < cols and valid[nr, nc] and not done[nr, nc]:
                    heapq.heappush(heap, (-float(weight[nr, nc]), nr, nc, r, c))
        values, weights = out.reshape(-1)[members], weight.reshape(-1)[members]
        order = np.argsort(values)
        cumulative = np.cumsum(weights[order])
        median = values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])]
        out.reshape(-1)[members] -= 2 * np.pi * np.round(median / (2 * np.pi))
    return out
