"""Vessels and nerves of the phantom: deep paths per subject and the superficial veins.

Vessels are what a segmentation model must learn to leave out of a muscle: bright round
spots in their fat sheaths between the muscles, and the saphenous veins in the subcutaneous
fat. Deep vessels follow paths of the atlases (``layout.py`` above the knee, ``calf_layout.py``
below it, joined here into one path from the ankle to the groin) and move with the fat
compartment they run in; the superficial veins keep a share of the subcutaneous fat depth
outside the fascia, in a direction from the leg centre that changes along the leg.
"""

from __future__ import annotations

import numpy as np

from inference.phantom import atlas, calf_layout, layout

# Signal (water, fat) per unit volume: blood bright (inflow, the phantom's convention),
# nerve intermediate with some fat between its fascicles.
BLOOD = (0.9, 0.0)
NERVE = (0.5, 0.2)
GREAT_SAPHENOUS_MM = 2.2  # vein radii
SMALL_SAPHENOUS_MM = 1.8
SAPHENOUS_DEPTH = 0.45  # share of the subcutaneous fat between the fascia and the vein

Path = np.ndarray  # rows (h, a, p, radius mm)


def _rows(table, radius: float | tuple[tuple[float, float], ...]) -> Path:
    """Path rows (h, a, p, radius) from (h, a, p) rows and a radius or a (h, radius) table."""
    rows = np.asarray(table, dtype=float)
    rows = rows[np.argsort(rows[:, 0])]
    if isinstance(radius, tuple):
        prof = np.asarray(radius, dtype=float)
        r = np.interp(rows[:, 0], prof[:, 0], prof[:, 1])
    else:
        r = np.full(len(rows), float(radius))
    return np.column_stack([rows, r])


def _offset(path: Path, table) -> Path:
    """A companion vein: ``path`` moved by the (h, da, dp) offsets of ``table``."""
    offsets = np.asarray(table, dtype=float)
    moved = path.copy()
    moved[:, 1] += np.interp(path[:, 0], offsets[:, 0], offsets[:, 1])
    moved[:, 2] += np.interp(path[:, 0], offsets[:, 0], offsets[:, 2])
    return moved


def _shifted(path: Path, low: np.ndarray, high: np.ndarray, blend: tuple[float, float]) -> Path:
    """``path`` moved by ``low`` below ``blend[0]``, by ``high`` above ``blend[1]``."""
    weight = np.clip((path[:, 0] - blend[0]) / (blend[1] - blend[0]), 0.0, 1.0)[:, None]
    moved = path.copy()
    moved[:, 1:3] += (1 - weight) * low + weight * high
    return moved


def deep_paths(cell_jitter: np.ndarray) -> list[dict[str, tuple[Path, float, tuple]]]:
    """Per leg: name -> (path rows (h, a, p, radius), fat sheath mm, tissue)."""
    names = [c.name for c in atlas.CELLS]
    sheath = names.index("femoral_sheath_fat")
    sciatic = names.index("sciatic_fat")
    posterior = names.index("posterior_tibial_fat")
    anterior = names.index("anterior_tibial_fat")
    knee = (-60.0, 0.0)  # the calf's and the thigh's compartments share the shift here
    artery = _rows(calf_layout.POSTERIOR_TIBIAL_ARTERY + layout.FEMORAL_ARTERY,
                   ((-390, 1.8), (-80, 2.0), (-55, 3.2), (0, 3.5), (120, 4.0)))
    vein = _offset(artery, calf_layout.POSTERIOR_TIBIAL_VEIN_OFFSET + layout.FEMORAL_VEIN_OFFSET)
    vein[:, 3] = np.interp(vein[:, 0], (-390, -80, -55, 0, 120), (2.2, 2.4, 4.0, 4.5, 5.0))
    anterior_tibial = _rows(calf_layout.ANTERIOR_TIBIAL_ARTERY, 1.6)
    peroneal = _rows(calf_layout.PERONEAL_ARTERY, 1.5)
    tibial_nerve = _rows(calf_layout.TIBIAL_NERVE + layout.TIBIAL_NERVE,
                         ((-390, 2.0), (-55, 3.0), (130, 3.5)))
    peroneal_nerve = _rows(calf_layout.PERONEAL_NERVE + layout.PERONEAL_NERVE,
                           ((-390, 1.3), (-70, 2.2), (130, 2.5)))
    out = []
    for side in range(2):
        thigh = cell_jitter[side, sheath, 0:2]
        calf = cell_jitter[side, posterior, 0:2]
        front = cell_jitter[side, anterior, 0:2]
        nerve = cell_jitter[side, sciatic, 0:2]
        out.append({
            "artery": (_shifted(artery, calf, thigh, knee), 1.5, BLOOD),
            "vein": (_shifted(vein, calf, thigh, knee), 0.0, BLOOD),
            "profunda": (_shifted(_rows(layout.PROFUNDA_ARTERY, 2.8), thigh, thigh, knee), 1.5,
                         BLOOD),
            "anterior_tibial_artery": (_shifted(anterior_tibial, front, front, knee), 1.0, BLOOD),
            "anterior_tibial_vein": (_shifted(_offset(anterior_tibial, ((-400, 2.5, 1.5),
                                                                         (-60, 2.5, 1.5))),
                                              front, front, knee), 0.0, BLOOD),
            "peroneal_artery": (_shifted(peroneal, calf, calf, knee), 1.0, BLOOD),
            "peroneal_vein": (_shifted(_offset(peroneal, ((-400, 2.5, 1.0), (-60, 2.5, 1.0))),
                                       calf, calf, knee), 0.0, BLOOD),
            "sciatic_nerve": (_shifted(_rows(layout.SCIATIC_NERVE, 5.0), nerve, nerve, knee),
                              1.5, NERVE),
            "tibial_nerve": (_shifted(tibial_nerve, calf, nerve, knee), 1.0, NERVE),
            "peroneal_nerve": (_shifted(peroneal_nerve, front, nerve, knee), 1.0, NERVE),
        })
    return out


def at_level(path: Path, h: float) -> tuple[float, float, float] | None:
    """(a, p, radius) of a path at level ``h``, or None outside it."""
    if not path[0, 0] <= h <= path[-1, 0]:
        return None
    return tuple(float(np.interp(h, path[:, 0], path[:, c])) for c in (1, 2, 3))


def superficial(h: float) -> list[tuple[float, float]]:
    """(direction from the leg centre in radians, radius mm) of the saphenous veins at ``h``."""
    out = []
    for table, radius in ((atlas.GREAT_SAPHENOUS, GREAT_SAPHENOUS_MM),
                          (atlas.SMALL_SAPHENOUS, SMALL_SAPHENOUS_MM)):
        rows = np.asarray(table, dtype=float)
        if rows[0, 0] <= h <= rows[-1, 0]:
            phi = np.deg2rad(np.interp(h, rows[:, 0], rows[:, 1]))
            out.append((float((phi + np.pi) % (2 * np.pi) - np.pi), radius))
    return out
