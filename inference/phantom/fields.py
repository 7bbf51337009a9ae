"""Smooth random fields of patient position: sums of a few plane waves.

The phantom needs several smooth, deterministic, cheap textures: patchy fat replacement inside a
muscle, septa that thin out and vanish, gently curved muscle borders, bowel contents. A sum of a
handful of cosines with random directions is smooth at a chosen scale, costs one ``cos`` per
wave and point, and is a function of patient coordinates only, so overlapping stacks and
oblique grids see the same texture at the same place.
"""

from __future__ import annotations

import numpy as np

# Field ids and (number of waves, in-plane wavelength range mm, z wavelength range mm,
# amplitude of the whole field: unit variance for textures, mm for displacements).
FAT_TEXTURE, SEPTUM_TEXTURE, WARP_A, WARP_P, VISCERA_TEXTURE = range(5)
FIELD_SPECS = {
    FAT_TEXTURE: (12, (6.0, 40.0), (30.0, 150.0), 1.0),
    SEPTUM_TEXTURE: (3, (15.0, 40.0), (30.0, 100.0), 1.0),
    WARP_A: (2, (50.0, 100.0), (150.0, 400.0), 2.5),
    WARP_P: (2, (50.0, 100.0), (150.0, 400.0), 2.5),
    VISCERA_TEXTURE: (6, (35.0, 70.0), (30.0, 80.0), 1.0),
}


def draw_waves(rng: np.random.Generator) -> np.ndarray:
    """Wave table ``[n, 6]``: field id, kx, ky, kz (rad/mm), phase, amplitude.

    In-plane wavelengths are log-uniform in their range with amplitudes growing as the square
    root of the wavelength (more power at coarse scales, no visible lattice).
    """
    rows = []
    for field, (count, xy_range, z_range, amplitude) in FIELD_SPECS.items():
        lengths = np.exp(rng.uniform(np.log(xy_range[0]), np.log(xy_range[1]), count))
        weights = np.sqrt(lengths)
        weights *= amplitude * np.sqrt(2.0 / np.sum(weights**2))
        for length, weight in zip(lengths, weights):
            direction = rng.uniform(0.0, 2.0 * np.pi)
            k_xy = 2.0 * np.pi / length
            k_z = 2.0 * np.pi / rng.uniform(*z_range) * rng.choice([-1.0, 1.0])
            rows.append((field, k_xy * np.cos(direction), k_xy * np.sin(direction), k_z,
                         rng.uniform(0.0, 2.0 * np.pi), weight))
    return np.asarray(rows)


def evaluate(waves: np.ndarray, field: int, x: np.ndarray, y: np.ndarray,
             z: float) -> np.ndarray:
    """The field at points ``(x, y)`` of the axial plane ``z`` (LPS mm), float32."""
    out = np.zeros(np.shape(x), dtype=np.float32)
    for _, kx, ky, kz, phase, amp in waves[waves[:, 0] == field]:
        out += np.float32(amp) * np.cos(np.float32(kx) * x + np.float32(ky) * y
                                        + np.float32(kz * z + phase))
    return out
