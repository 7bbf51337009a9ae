"""From noise-free water and fat fractions to the four Dixon magnitude images of one stack.

Real Dixon images are not the fractions themselves: a smooth receive-coil sensitivity
multiplies them, each stack darkens a little towards its first and last slices (coil coverage),
and every magnitude image carries Rician noise. These are the effects that make stitching need
blending and make background statistics non-Gaussian, so the phantom reproduces them; the
coil sensitivity depends on the patient position only, so overlapping stacks agree on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.geometry import VolumeGeometry
from inference.phantom.anatomy import PhantomVolumes
from inference.phantom.subject import Subject

SIGNAL_SCALE = 1000.0  # magnitude of a voxel of proton density 1 at coil sensitivity 1
BIAS_RANGE = 0.3  # the sensitivity stays within 1 +- BIAS_RANGE
FALLOFF = 0.06  # relative intensity drop at the first and last slice of a stack
BIAS_STEP = 8  # in-plane step (pixels) of the grid the sensitivity is evaluated on
CHUNK = 16  # slices processed together (bounds the memory of the noise draws)

# Amplitudes of the sensitivity's terms: linear, quadratic and mixed in the normalised
# coordinates, then a ripple along z (neighbouring coil elements).
_TERM_AMPLITUDES = np.array([0.12, 0.10, 0.10, 0.10, 0.12, 0.08, 0.06, 0.06, 0.06, 0.05])


def bias_field(subject: Subject, points_lps: np.ndarray) -> np.ndarray:
    """Coil sensitivity (about 0.7..1.3) at LPS points ``(..., 3)``; same shape without 3.

    Smooth in patient coordinates: a low-order polynomial (sensitivity grows towards the
    anterior and posterior coil arrays) plus a gentle ripple along the legs.
    """
    points = np.asarray(points_lps, dtype=float)
    c = subject.bias
    z_lo, z_hi = subject.z_range_mm
    u = (points[..., 0] - subject.offset_mm[0]) / 250.0
    v = points[..., 1] / 150.0
    w = (points[..., 2] - 0.5 * (z_lo + z_hi)) / 350.0
    terms = (u, v, w, u * u, v * v, w * w, u * v, u * w, v * w)
    coef = _TERM_AMPLITUDES[:9] * c[:9]
    coef[4] = abs(coef[4])  # coil arrays lie in front of and behind the patient
    g = sum(coef[i] * terms[i] for i in range(len(terms)))
    wavelength = 250.0 + 50.0 * np.clip(c[10], -1.5, 1.5)
    g = g + _TERM_AMPLITUDES[9] * c[9] * np.cos(2 * np.pi * w * 350.0 / wavelength + c[11])
    return 1.0 + BIAS_RANGE * np.tanh(g / BIAS_RANGE)


def _bias_volume(subject: Subject, geometry: VolumeGeometry) -> np.ndarray:
    """Sensitivity on the grid: exact on a coarse in-plane grid, bilinear in between."""
    nk, nj, ni = geometry.shape
    cj = np.unique(np.append(np.arange(0, nj, BIAS_STEP), nj - 1))
    ci = np.unique(np.append(np.arange(0, ni, BIAS_STEP), ni - 1))
    kk, jj, ii = np.meshgrid(np.arange(nk), cj, ci, indexing="ij")
    coarse = bias_field(subject, geometry.voxel_to_lps(np.stack([kk, jj, ii], axis=-1)))
    wj = _linear_weights(cj, nj)
    wi = _linear_weights(ci, ni)
    return np.einsum("jb,kbc,ic->kji", wj, coarse, wi, optimize=True).astype(np.float32)


def _linear_weights(knots: np.ndarray, n: int) -> np.ndarray:
    """Matrix ``[n, len(knots)]`` of linear interpolation from knot positions to 0..n-1."""
    weights = np.zeros((n, knots.size))
    pos = np.arange(n)
    upper = np.clip(np.searchsorted(knots, pos, side="right"), 1, knots.size - 1)
    lower = upper - 1
    span = knots[upper] - knots[lower]
    frac = np.where(span > 0, (pos - knots[lower]) / np.maximum(span, 1), 0.0)
    weights[pos, lower] = 1.0 - frac
    weights[pos, upper] += frac
    return weights


def stack_profile(n_slices: int) -> np.ndarray:
    """Relative intensity of each slice of a stack: 1 in the middle, 1 - FALLOFF at its ends."""
    if n_slices < 2:
        return np.ones(n_slices, dtype=np.float32)
    t = np.linspace(-1.0, 1.0, n_slices)
    return (1.0 - FALLOFF * t**4).astype(np.float32)


def dixon_magnitudes(volumes: PhantomVolumes, geometry: VolumeGeometry, subject: Subject,
                     rng: np.random.Generator, snr: float = 40.0,
                     stack_falloff: bool = True) -> dict[str, np.ndarray]:
    """Water, fat, in-phase and out-of-phase magnitudes of one stack, float32 ``[k, j, i]``.

    ``W = water * SIGNAL_SCALE * sensitivity`` (likewise ``F``), ``IP = W + F``,
    ``OP = |W - F|``; each image then gets its own Rician noise: the magnitude of the signal
    plus complex Gaussian noise of ``sigma = SIGNAL_SCALE / snr`` per channel (``snr`` is the
    SNR of a voxel of proton density 1; ``inf`` gives noise-free images).
    """
    if volumes.water.shape != tuple(geometry.shape):
        raise ValueError(f"volumes {volumes.water.shape} do not match grid {geometry.shape}")
    gain = _bias_volume(subject, geometry) * np.float32(SIGNAL_SCALE)
    if stack_falloff:
        gain *= stack_profile(geometry.shape[0])[:, None, None]
    sigma = 0.0 if not np.isfinite(snr) else SIGNAL_SCALE / float(snr)
    roles = ("water", "fat", "in_phase", "out_of_phase")
    out = {role: np.empty(geometry.shape, dtype=np.float32) for role in roles}
    # One generator per role, so the roles can be drawn in parallel and stay reproducible.
    streams = dict(zip(roles, rng.spawn(len(roles))))

    water = volumes.water * gain
    fat = volumes.fat * gain

    def fill(role: str) -> None:
        for start in range(0, geometry.shape[0], CHUNK):
            block = slice(start, start + CHUNK)
            out[role][block] = _rician(_role_signal(role, water[block], fat[block]), sigma,
                                       streams[role])

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(fill, roles))
    return out


def _role_signal(role: str, water: np.ndarray, fat: np.ndarray) -> np.ndarray:
    """Noise-free magnitude of a Dixon role from the water and fat signals."""
    if role == "water":
        return water
    if role == "fat":
        return fat
    if role == "in_phase":
        return water + fat
    return np.abs(water - fat)


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """|signal + complex Gaussian noise|, drawn in polar form (Box-Muller).

    With noise of radius ``r`` and angle ``t`` the magnitude is
    ``sqrt(S^2 + 2 S r cos t + r^2)``; drawing ``r^2 = -2 sigma^2 ln U`` and ``t`` uniform is
    exact and needs two uniform draws, much cheaper than two Gaussian ones.
    """
    if sigma == 0.0:
        return signal.astype(np.float32)
    radius2 = rng.random(signal.shape, dtype=np.float32)
    np.subtract(np.float32(1.0), radius2, out=radius2)  # (0, 1]: the log stays finite
    np.log(radius2, out=radius2)
    radius2 *= np.float32(-2.0 * sigma * sigma)
    cross = rng.random(signal.shape, dtype=np.float32)
    cross *= np.float32(2.0 * np.pi)
    np.cos(cross, out=cross)
    cross *= np.sqrt(radius2)
    cross *= signal
    cross *= np.float32(2.0)
    cross += radius2
    cross += signal * signal
    np.maximum(cross, np.float32(0.0), out=cross)
    return np.sqrt(cross, out=cross)
