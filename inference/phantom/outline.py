"""The outlines of a leg section (deep fascia, skin) and the partial-volume helpers of bands.

A limb's outline is smooth and nearly convex: it is found along rays from the section's
centre as the smooth farthest exit from the muscles' seed ellipses and the bones, keeping only
its lowest angular harmonics; the skin lies a subcutaneous fat layer outside it. Thin layers
(septa, fascia, membranes) get their partial volume from the overlap of a voxel with a band.
"""

from __future__ import annotations

import numpy as np

N_ANGLES = 128  # angular samples of the fascia and skin outlines
OUTLINE_SOFTNESS = 4.0  # mm, smooth maximum of the seed ellipses along each ray


def outline(seeds: dict[str, np.ndarray], q: np.ndarray, centre: np.ndarray,
            shrink: np.ndarray, solids: list[tuple[float, float, float]],
            harmonics: float) -> np.ndarray:
    """Radius of the fascia around ``centre`` for N_ANGLES directions (nominal mm).

    Along each ray the farthest exit from any seed ellipse (scaled by ``shrink``) or bone
    (``solids``: circles (a, p, r) that must stay inside) is taken with a smooth maximum; only
    the lowest harmonics of that radius are kept, because a limb's outline is smooth and
    nearly convex (``harmonics``: Gaussian taper of the harmonic order).
    """
    phi = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
    ux, uy = np.cos(phi)[:, None], np.sin(phi)[:, None]
    sa = np.concatenate([seeds["a"], [c[0] for c in solids]])
    sp = np.concatenate([seeds["p"], [c[1] for c in solids]])
    qs = q / shrink[:, None] ** 2
    if solids:
        inv = np.array([1.0 / c[2] ** 2 for c in solids])
        qs = np.concatenate([qs, np.stack([inv, np.zeros_like(inv), inv], axis=1)])
    ox = (centre[0] - sa)[None, :]
    oy = (centre[1] - sp)[None, :]
    q11, q12, q22 = qs[:, 0][None, :], qs[:, 1][None, :], qs[:, 2][None, :]
    qa = q11 * ux * ux + 2 * q12 * ux * uy + q22 * uy * uy
    qb = q11 * ux * ox + q12 * (ux * oy + uy * ox) + q22 * uy * oy
    qc = q11 * ox * ox + 2 * q12 * ox * oy + q22 * oy * oy - 1.0
    disc = qb * qb - qa * qc
    root = np.sqrt(np.abs(disc)) * np.sign(disc)
    exits = (-qb + root) / qa
    # A ray that misses an ellipse continues the exit below the tangent value, but never
    # beyond the ellipse's extent in that direction (its support function).
    det = q11 * q22 - q12 * q12
    support = -(ux * ox + uy * oy) + np.sqrt((q22 * ux * ux - 2 * q12 * ux * uy
                                               + q11 * uy * uy) / det)
    exits = np.where(disc >= 0, exits, np.minimum(exits, support))
    top = exits.max(axis=1, keepdims=True)
    radius = top[:, 0] + OUTLINE_SOFTNESS * np.log(
        np.exp((exits - top) / OUTLINE_SOFTNESS).sum(axis=1))
    spectrum = np.fft.rfft(radius)
    order = np.arange(spectrum.size)
    spectrum *= np.exp(-0.5 * (order / harmonics) ** 2)
    return np.maximum(np.fft.irfft(spectrum, N_ANGLES), 5.0)


def lookup(tables: list[np.ndarray], phi: np.ndarray) -> list[np.ndarray]:
    """Linear interpolation of periodic N_ANGLES tables at angles ``phi`` (-pi..pi)."""
    pos = (phi + np.float32(np.pi)) * np.float32(N_ANGLES / (2 * np.pi))
    i0 = np.minimum(pos.astype(np.int32), N_ANGLES - 1)
    frac = pos - i0
    out = []
    for table in tables:
        t = np.append(table, table[0]).astype(np.float32)
        low = t[i0]
        out.append(low + (t[i0 + 1] - low) * frac)
    return out


def band_fraction(d: np.ndarray, near: np.ndarray, far: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel (box profile of ``width`` centred at ``d``) inside [-far, near]."""
    overlap = np.minimum(d + width / 2, near) - np.maximum(d - width / 2, -far)
    return np.clip(overlap / width, 0.0, 1.0)


def soft_min(x: np.ndarray, y: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum of ``x`` and ``y`` (polynomial, blending over a width ``k``)."""
    h = np.clip(0.5 + 0.5 * (y - x) / k, 0.0, 1.0)
    return y * (1 - h) + x * h - k * h * (1 - h)
