"""The complex gradient-echo signal of a water-fat voxel: one model for the fits and the phantom.

    S(t) = (W exp(-R2*_w t) + F c(t) exp(-R2*_f t)) exp(i (phi0 + 2 pi psi t))

with ``c(t)`` the multi-peak fat phasor (``spectrum.FatSpectrum.phasors``), ``phi0`` the
coil/receiver phase and ``psi`` the off-resonance (B0 inhomogeneity) in Hz. The fits assume
one R2* for water and fat (``R2*_w = R2*_f``, the usual single-R2* model: water and fat
R2* are not separable at clinical echo times); the phantom may give them different values,
which is then a model error the benchmark measures.
"""

from __future__ import annotations

import numpy as np

from inference.dixon.spectrum import HAMILTON_2011, FatSpectrum


def echo_signal(water, fat, echo_time_ms: float, field_strength_t: float, r2star_water_s,
                r2star_fat_s=None, phase_rad=0.0, offresonance_hz=0.0,
                spectrum: FatSpectrum = HAMILTON_2011) -> np.ndarray:
    """Complex64 signal at one echo time (arrays broadcast; R2* in 1/s, t in ms)."""
    t = echo_time_ms * 1e-3
    c = complex(spectrum.phasors([echo_time_ms], field_strength_t)[0])
    r2_fat = r2star_water_s if r2star_fat_s is None else r2star_fat_s
    w = np.asarray(water, dtype=np.float32) * np.exp(np.float32(-t) * np.asarray(r2star_water_s, np.float32))
    f = np.asarray(fat, dtype=np.float32) * np.exp(np.float32(-t) * np.asarray(r2_fat, np.float32))
    amplitude = (w + np.float32(c.real) * f) + 1j * (np.float32(c.imag) * f)
    phase = np.asarray(phase_rad, np.float32) + np.float32(2 * np.pi * t) * np.asarray(offresonance_hz, np.float32)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def magnitude_factors(fat_fraction, echo_times_ms, field_strength_t: float,
                      spectrum: FatSpectrum = HAMILTON_2011) -> np.ndarray:
    """``|1 - eta + eta c(t_n)|`` for fat fractions ``eta`` (any shape) -> shape ``(..., n)``:
    the magnitude of a unit-density voxel at each echo, before decay."""
    c = spectrum.phasors(echo_times_ms, field_strength_t)
    eta = np.asarray(fat_fraction, dtype=np.float64)[..., None]
    return np.abs(1.0 - eta + eta * c)
