"""From noise-free water and fat fractions to the Dixon images and echoes of one stack.

Real Dixon images are not the fractions themselves. The phantom reproduces what makes them
hard to quantify and to stitch:

* *Echo physics.* Each echo is the complex signal of ``inference.dixon.signal_model``: the
  6-peak fat spectrum (so "in phase" is only partly in phase), T2* decay per tissue
  (:func:`r2star_s`), a smooth B0 off-resonance field and a smooth coil phase. The
  in-phase and out-of-phase images of :func:`dixon_magnitudes` are these echo magnitudes;
  the water and fat images are the proton densities (what an ideal scanner separation gives).
* *Coil sensitivity.* Two surface-coil arrays, anterior (on the patient) and posterior (in
  the table), each falling off with distance from its plane as an on-axis loop does
  (``(1 + (d / R)^2)^-1.5``), combined as the root sum of squares; times a smooth low-order
  modulation (``bias_field``) and a falloff towards each stack's first and last slices.
* *Noise.* Every magnitude carries Rician noise: complex Gaussian noise of
  ``sigma = SIGNAL_SCALE / snr`` per channel after an optimal (sensitivity-weighted) combination
  of the two coils, which is single-channel Rician with the combined sensitivity. Echo
  phases come from the same complex noisy signal.

Every smooth field (sensitivity, B0, coil phase) depends on the patient position only, so
overlapping stacks agree on it. The truth stays the proton-density fat fraction.

T2* per tissue: tissue from ``PhantomVolumes.labels`` (> 0 muscle) and the fractions. Both
components of a voxel decay with its tissue's R2*: muscle (and other water-dominant tissue)
with the muscle value, fat-dominant tissue outside the muscles (adipose, marrow) with the fat
value. One R2* per voxel is the single-R2* model the fits assume, supported in tissue by MR
spectroscopy (water R2* and effective fat R2* not significantly different in liver: Hamilton
et al., ISMRM 2016, abstract 3852); the benchmark measures separately what a water/fat R2* gap
would cost (``benchmarks/ff_methods.py``). At 3 T, muscle water 35 1/s and fat 25 1/s: close
to the complex fit of the real 3 T thigh (median 31 1/s in its muscle, 26 1/s where its FF
exceeds 70 %, docs/fat-fraction.md) and not below the tissues' R2 (T2 29 ms muscle, 68 ms
subcutaneous fat at 3 T: de Bazelaire et al., Radiology 2004;230:652-659). Other fields:
``R2* = R2 + R2'``, the reversible part ``R2'`` proportional to B0 (susceptibility), R2 taken
field-independent (an approximation): at 1.5 T, muscle 34.8 and fat 19.9 1/s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from common.geometry import VolumeGeometry
from inference.dixon.echoes import IN_PHASE, OUT_OF_PHASE, phase_echo_time_ms
from inference.dixon.spectrum import GYROMAGNETIC_MHZ_PER_T, HAMILTON_2011
from inference.phantom.anatomy import PhantomVolumes
from inference.phantom.subject import Subject

SIGNAL_SCALE = 1000.0  # magnitude of a voxel of proton density 1 at coil sensitivity 1
BIAS_RANGE = 0.3  # the smooth modulation stays within 1 +- BIAS_RANGE
FALLOFF = 0.06  # relative intensity drop at the first and last slice of a stack
BIAS_STEP = 8  # in-plane step (pixels) of the grid the smooth fields are evaluated on
CHUNK = 16  # slices processed together (bounds the memory of the noise draws)
COIL_RADIUS_MM = 150.0  # loop radius of the surface-coil model
ANTERIOR_COIL_Y = -100.0  # LPS y of the anterior array's plane, relative to the body offset
POSTERIOR_COIL_Y = 120.0  # ... of the posterior array (in the table, posterior skin ~110)
B0_PPM = 0.3  # amplitude of each term of the off-resonance field, ppm of the field
COIL_PHASE_RAD = 1.5  # amplitude of each term of the coil phase, radians
# R2 (field-independent) and R2' at 3 T of muscle water and fat, 1/s (module docstring).
R2_S = {"muscle_water": 1000.0 / 29.0, "fat": 1000.0 / 68.0}
R2PRIME_3T_S = {"muscle_water": 35.0 - 1000.0 / 29.0, "fat": 25.0 - 1000.0 / 68.0}

# Amplitudes of the modulation's terms: linear, quadratic and mixed in the normalised
# coordinates, then a ripple along z (neighbouring coil elements).
_TERM_AMPLITUDES = np.array([0.12, 0.10, 0.10, 0.10, 0.12, 0.08, 0.06, 0.06, 0.06, 0.05])


def r2star_s(tissue: str, field_strength_t: float) -> float:
    """R2* (1/s) of ``muscle_water`` or ``fat`` at a field: ``R2 + R2'(3 T) * B0 / 3``."""
    return R2_S[tissue] + R2PRIME_3T_S[tissue] * field_strength_t / 3.0


def bias_field(subject: Subject, points_lps: np.ndarray) -> np.ndarray:
    """Smooth sensitivity modulation (about 0.7..1.3) at LPS points ``(..., 3)``.

    A low-order polynomial in patient coordinates plus a gentle ripple along the legs.
    """
    u, v, w = _normalised(subject, points_lps)
    c = subject.bias
    terms = (u, v, w, u * u, v * v, w * w, u * v, u * w, v * w)
    coef = _TERM_AMPLITUDES[:9] * c[:9]
    coef[4] = abs(coef[4])  # coil arrays lie in front of and behind the patient
    g = sum(coef[i] * terms[i] for i in range(len(terms)))
    wavelength = 250.0 + 50.0 * np.clip(c[10], -1.5, 1.5)
    g = g + _TERM_AMPLITUDES[9] * c[9] * np.cos(2 * np.pi * w * 350.0 / wavelength + c[11])
    return 1.0 + BIAS_RANGE * np.tanh(g / BIAS_RANGE)


def coil_sensitivity(subject: Subject, points_lps: np.ndarray) -> np.ndarray:
    """Combined sensitivity of the two arrays (root sum of squares, 1 midway between their
    planes) times :func:`bias_field`."""
    y = np.asarray(points_lps, dtype=float)[..., 1] - subject.offset_mm[1]
    anterior = _loop_profile(np.maximum(y - ANTERIOR_COIL_Y, 0.0))
    posterior = _loop_profile(np.maximum(POSTERIOR_COIL_Y - y, 0.0))
    midway = _loop_profile(0.5 * (POSTERIOR_COIL_Y - ANTERIOR_COIL_Y)) * np.sqrt(2.0)
    return np.hypot(anterior, posterior) / midway * bias_field(subject, points_lps)


def offresonance_ppm(subject: Subject, points_lps: np.ndarray) -> np.ndarray:
    """Smooth B0 inhomogeneity (ppm of the field; Hz = ppm x 42.577 x B0) at LPS points."""
    u, v, w = _normalised(subject, points_lps)
    c = np.random.default_rng([subject.seed, 7]).normal(0.0, 1.0, 7) * B0_PPM
    return c[0] * u + c[1] * v + c[2] * w + c[3] * u * u + c[4] * v * v + c[5] * u * v + c[6] * w * w


def coil_phase(subject: Subject, points_lps: np.ndarray) -> np.ndarray:
    """Smooth receive-coil phase (radians, unwrapped) at LPS points."""
    u, v, w = _normalised(subject, points_lps)
    rng = np.random.default_rng([subject.seed, 8])
    c = rng.normal(0.0, 1.0, 5) * COIL_PHASE_RAD
    return rng.uniform(-np.pi, np.pi) + c[0] * u + c[1] * v + c[2] * w + c[3] * u * v + c[4] * v * v


def stack_profile(n_slices: int) -> np.ndarray:
    """Relative intensity of each slice of a stack: 1 in the middle, 1 - FALLOFF at its ends."""
    if n_slices < 2:
        return np.ones(n_slices, dtype=np.float32)
    t = np.linspace(-1.0, 1.0, n_slices)
    return (1.0 - FALLOFF * t**4).astype(np.float32)


def echo_images(volumes: PhantomVolumes, geometry: VolumeGeometry, subject: Subject,
                rng: np.random.Generator, echo_times_ms: Sequence[float], field_strength_t: float,
                snr: float = 40.0, stack_falloff: bool = True) -> dict[str, list[np.ndarray]]:
    """Magnitude and phase (radians in [-pi, pi)) of each echo, float32 ``[k, j, i]``:
    ``{"magnitude": [...], "phase": [...]}`` in the order of ``echo_times_ms``."""
    _check(volumes, geometry)
    times = [float(t) for t in echo_times_ms]
    gain = _gain(subject, geometry, stack_falloff)
    field_hz = _smooth_volume(geometry, lambda p: offresonance_ppm(subject, p)) * np.float32(
        GYROMAGNETIC_MHZ_PER_T * field_strength_t)
    phase0 = _smooth_volume(geometry, lambda p: coil_phase(subject, p))
    decay = _DecayRates(volumes, field_strength_t)
    sigma = _sigma(snr)
    magnitudes = [np.empty(geometry.shape, dtype=np.float32) for _ in times]
    phases = [np.empty(geometry.shape, dtype=np.float32) for _ in times]
    streams = rng.spawn(len(times))

    def fill(n: int) -> None:
        for start in range(0, geometry.shape[0], CHUNK):
            block = slice(start, start + CHUNK)
            real, imag = _echo(volumes, block, gain[block], decay, times[n], field_strength_t)
            angle = phase0[block] + np.float32(2e-3 * np.pi * times[n]) * field_hz[block]
            cos, sin = np.cos(angle), np.sin(angle)
            real, imag = real * cos - imag * sin, real * sin + imag * cos
            real, imag = _add_noise(real, imag, sigma, streams[n])
            magnitudes[n][block] = np.hypot(real, imag)
            phases[n][block] = _wrap(np.arctan2(imag, real))

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(fill, range(len(times))))
    return {"magnitude": magnitudes, "phase": phases}


def dixon_magnitudes(volumes: PhantomVolumes, geometry: VolumeGeometry, subject: Subject,
                     rng: np.random.Generator, snr: float = 40.0, stack_falloff: bool = True,
                     field_strength_t: float = 3.0,
                     echo_times_ms: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Water, fat, in-phase and out-of-phase magnitudes of one stack, float32 ``[k, j, i]``.

    ``W = water * SIGNAL_SCALE * sensitivity`` (likewise ``F``); in- and out-of-phase are the
    echo magnitudes (multi-peak fat, T2* decay) at the first out-of-phase and in-phase echo
    times of the field, or at ``echo_times_ms = (op, ip)``. Each image gets its own Rician
    noise of ``sigma = SIGNAL_SCALE / snr`` (``snr`` is the SNR of a voxel of proton density
    1; ``inf`` gives noise-free images).
    """
    _check(volumes, geometry)
    if echo_times_ms is None:
        echo_times_ms = (phase_echo_time_ms(field_strength_t, OUT_OF_PHASE),
                         phase_echo_time_ms(field_strength_t, IN_PHASE))
    op_ms, ip_ms = (float(t) for t in echo_times_ms)
    gain = _gain(subject, geometry, stack_falloff)
    decay = _DecayRates(volumes, field_strength_t)
    sigma = _sigma(snr)
    roles = ("water", "fat", "in_phase", "out_of_phase")
    out = {role: np.empty(geometry.shape, dtype=np.float32) for role in roles}
    # One generator per role, so the roles can be drawn in parallel and stay reproducible.
    streams = dict(zip(roles, rng.spawn(len(roles))))

    def fill(role: str) -> None:
        for start in range(0, geometry.shape[0], CHUNK):
            block = slice(start, start + CHUNK)
            if role in ("water", "fat"):
                signal = getattr(volumes, role)[block] * gain[block]
            else:
                real, imag = _echo(volumes, block, gain[block], decay,
                                   ip_ms if role == "in_phase" else op_ms, field_strength_t)
                signal = np.hypot(real, imag)
            out[role][block] = _rician(signal, sigma, streams[role])

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(fill, roles))
    return out


class _DecayRates:
    """Per-voxel R2* of the water and the fat component (1/s), computed once per stack."""

    def __init__(self, volumes: PhantomVolumes, field_strength_t: float) -> None:
        muscle = np.float32(r2star_s("muscle_water", field_strength_t))
        fat = np.float32(r2star_s("fat", field_strength_t))
        fat_tissue = (volumes.labels <= 0) & (volumes.fat > volumes.water)
        self.water = np.where(fat_tissue, fat, muscle).astype(np.float32)
        self.fat = self.water


def _echo(volumes: PhantomVolumes, block: slice, gain: np.ndarray, decay: _DecayRates,
          echo_time_ms: float, field_strength_t: float) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of the echo before the coil phase and off-resonance."""
    t = np.float32(echo_time_ms * 1e-3)
    c = complex(HAMILTON_2011.phasors([echo_time_ms], field_strength_t)[0])
    water = volumes.water[block] * np.exp(-t * decay.water[block])
    fat = volumes.fat[block] * np.exp(-t * decay.fat[block])
    real = (water + np.float32(c.real) * fat) * gain
    imag = (np.float32(c.imag) * fat) * gain
    return real, imag


def _check(volumes: PhantomVolumes, geometry: VolumeGeometry) -> None:
    if volumes.water.shape != tuple(geometry.shape):
        raise ValueError(f"volumes {volumes.water.shape} do not match grid {geometry.shape}")


def _sigma(snr: float) -> float:
    return 0.0 if not np.isfinite(snr) else SIGNAL_SCALE / float(snr)


def _gain(subject: Subject, geometry: VolumeGeometry, stack_falloff: bool) -> np.ndarray:
    gain = _smooth_volume(geometry, lambda p: coil_sensitivity(subject, p)) * np.float32(SIGNAL_SCALE)
    if stack_falloff:
        gain *= stack_profile(geometry.shape[0])[:, None, None]
    return gain


def _normalised(subject: Subject, points_lps: np.ndarray):
    """Patient coordinates scaled to about -1..1 over the legs (x, y about the body offset)."""
    points = np.asarray(points_lps, dtype=float)
    z_lo, z_hi = subject.z_range_mm
    u = (points[..., 0] - subject.offset_mm[0]) / 250.0
    v = points[..., 1] / 150.0
    w = (points[..., 2] - 0.5 * (z_lo + z_hi)) / 350.0
    return u, v, w


def _loop_profile(distance_mm):
    return (1.0 + (np.asarray(distance_mm) / COIL_RADIUS_MM) ** 2) ** -1.5


def _smooth_volume(geometry: VolumeGeometry, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A smooth field of patient position on the grid: exact on a coarse in-plane grid,
    bilinear in between."""
    nk, nj, ni = geometry.shape
    cj = np.unique(np.append(np.arange(0, nj, BIAS_STEP), nj - 1))
    ci = np.unique(np.append(np.arange(0, ni, BIAS_STEP), ni - 1))
    kk, jj, ii = np.meshgrid(np.arange(nk), cj, ci, indexing="ij")
    coarse = function(geometry.voxel_to_lps(np.stack([kk, jj, ii], axis=-1)))
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


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Radians into [-pi, pi) (arctan2 gives (-pi, pi]; +pi becomes -pi)."""
    return np.where(angle >= np.float32(np.pi), angle - np.float32(2 * np.pi), angle).astype(np.float32)


def _add_noise(real: np.ndarray, imag: np.ndarray, sigma: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Complex Gaussian noise of ``sigma`` per channel, drawn in polar form (Box-Muller)."""
    if sigma == 0.0:
        return real, imag
    radius = rng.random(real.shape, dtype=np.float32)
    np.subtract(np.float32(1.0), radius, out=radius)  # (0, 1]: the log stays finite
    np.log(radius, out=radius)
    radius *= np.float32(-2.0 * sigma * sigma)
    np.sqrt(radius, out=radius)
    angle = rng.random(real.shape, dtype=np.float32) * np.float32(2.0 * np.pi)
    return real + radius * np.cos(angle), imag + radius * np.sin(angle)


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
