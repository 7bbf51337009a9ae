"""The weighted Voronoi partition of a leg section into its structures.

Every structure has seed ellipses; a point belongs to the structure whose seed is nearest in
normalised distance ``(x - c)^T Q (x - c)``, which gives round, organically curved borders
whose positions follow the seeds' sizes. The second-nearest structure and the gradients of
both distances give the distance to the border, from which septa and fascia get their
partial volume.
"""

from __future__ import annotations

import numpy as np


def quadratic_forms(r: np.ndarray, e: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Q of each seed ellipse: (x - c)^T Q (x - c) = 1 on its boundary. Shape [n, 3]."""
    c, s = np.cos(ang), np.sin(ang)
    inv_major = 1.0 / (r * e) ** 2
    inv_minor = (e / r) ** 2
    q11 = c * c * inv_major + s * s * inv_minor
    q12 = c * s * (inv_major - inv_minor)
    q22 = s * s * inv_major + c * c * inv_minor
    return np.stack([q11, q12, q22], axis=1)


def two_nearest(a: np.ndarray, p: np.ndarray, seeds: dict, q: np.ndarray,
                groups: np.ndarray):
    """Nearest and second-nearest structure (different groups) by normalised distance.

    Returns the two distances and the seed indices (into ``seeds``) that attain them; the
    second index is -1 where only one structure is present.
    """
    n = a.size
    best = np.full(n, np.inf, dtype=np.float32)
    second = np.full(n, np.inf, dtype=np.float32)
    s1 = np.zeros(n, dtype=np.int32)
    s2 = np.full(n, -1, dtype=np.int32)
    ca = seeds["a"].astype(np.float32)
    cp = seeds["p"].astype(np.float32)
    for group in np.unique(groups):
        members = np.nonzero(groups == group)[0]
        value = None
        owner = None
        for m in members:
            da, dp = a - ca[m], p - cp[m]
            dist = q[m, 0] * da * da + (2 * q[m, 1]) * da * dp + q[m, 2] * dp * dp
            if value is None:
                value, owner = dist, np.full(n, m, dtype=np.int32)
            else:
                closer = dist < value
                value = np.where(closer, dist, value)
                owner = np.where(closer, m, owner)
        first = value < best
        s2 = np.where(first, s1, np.where(value < second, owner, s2))
        s1 = np.where(first, owner, s1)
        second = np.minimum(second, np.maximum(best, value))
        best = np.minimum(best, value)
    s2 = np.where(np.isfinite(second), s2, -1)
    return best, second, s1, s2


def gradient(a: np.ndarray, p: np.ndarray, seeds: dict, q: np.ndarray,
             index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of the normalised distance of seed ``index`` (per point; -1 gives zero)."""
    safe = np.maximum(index, 0)
    da = a - seeds["a"].astype(np.float32)[safe]
    dp = p - seeds["p"].astype(np.float32)[safe]
    qq = q[safe]
    valid = (index >= 0).astype(np.float32)
    return (2 * (qq[:, 0] * da + qq[:, 1] * dp) * valid,
            2 * (qq[:, 1] * da + qq[:, 2] * dp) * valid)
