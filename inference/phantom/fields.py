"""Smooth random fields of patient position: sums of a few plane waves.

The phantom needs several smooth, deterministic, cheap textures: patchy fat replacement inside a
muscle, septa that thin out and vanish, gently curved muscle borders, bowel contents, the thin
fatty septa between fascicles and the fine grain of muscle. A sum of a handful of cosines with
random directions is smooth at a chosen scale and is a function of patient coordinates only,
so overlapping stacks and oblique grids see the same texture at the same place. On an axial
grid each wave separates into a row and a column factor, so a whole field is one small matrix
product instead of a cosine per wave and pixel.
"""

from __future__ import annotations

import numpy as np

# Field ids and (number of waves, in-plane wavelength range mm, z wavelength range mm,
# amplitude of the whole field: unit variance for textures, mm for displacements).
FAT_TEXTURE, SEPTUM_TEXTURE, WARP_A, WARP_P, VISCERA_TEXTURE, STREAK_TEXTURE, GRAIN = range(7)
FIELD_SPECS = {
    FAT_TEXTURE: (12, (6.0, 40.0), (30.0, 150.0), 1.0),
    SEPTUM_TEXTURE: (3, (15.0, 40.0), (30.0, 100.0), 1.0),
    WARP_A: (2, (50.0, 100.0), (150.0, 400.0), 2.5),
    WARP_P: (2, (50.0, 100.0), (150.0, 400.0), 2.5),
    VISCERA_TEXTURE: (6, (35.0, 70.0), (30.0, 80.0), 1.0),
    # Fat septa between fascicles: lines that run along the leg (long z wavelengths).
    STREAK_TEXTURE: (6, (12.0, 35.0), (100.0, 300.0), 1.0),
    # Fine grain of muscle (fibre bundles, small vessels): short in-plane wavelengths.
    GRAIN: (8, (3.0, 10.0), (15.0, 60.0), 1.0),
}


# OpenBLAS multiplies on the calling thread below m*n*k = 65536 * 4 (its default threshold).
SINGLE_THREAD_PRODUCT = 200_000


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


def evaluate_grid(waves: np.ndarray, field: int, xs: np.ndarray, ys: np.ndarray,
                  z: float) -> np.ndarray:
    """The field on the axial grid ``xs`` x ``ys`` of plane ``z`` (LPS mm): ``[ny, nx]`` float32.

    ``cos(kx x + ky y + c) = cos(kx x) cos(ky y + c) - sin(kx x) sin(ky y + c)``: the field is
    ``A @ B`` with ``A`` the row factors (one pair of columns per wave) and ``B`` the column
    factors. The product is taken in row blocks small enough that the BLAS library runs each
    on the calling thread: its own threads would compete with the renderer's for the cores.
    """
    rows = waves[waves[:, 0] == field]
    x = np.asarray(xs, dtype=np.float64)[None, :]
    y = np.asarray(ys, dtype=np.float64)[:, None]
    kx, ky, kz, phase, amp = (rows[:, c][None, :] for c in range(1, 6))
    row_phase = ky * y + kz * z + phase  # [ny, n]
    left = np.concatenate([amp * np.cos(row_phase), -amp * np.sin(row_phase)], axis=1)
    col_phase = kx.T * x  # [n, nx]
    right = np.concatenate([np.cos(col_phase), np.sin(col_phase)], axis=0).astype(np.float32)
    left = left.astype(np.float32)
    out = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    block = max(1, SINGLE_THREAD_PRODUCT // max(right.size, 1))
    for start in range(0, left.shape[0], block):
        np.matmul(left[start:start + block], right, out=out[start:start + block])
    return out
