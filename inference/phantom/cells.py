"""The seed-ellipse record of the phantom's atlases: one structure's ellipse along the leg.

Its own module because the thigh atlas (``layout.py``) and the calf atlas (``calf_layout.py``)
both build their tables from it and the combined atlas (``atlas.py``) reads both.
"""

from __future__ import annotations

from dataclasses import dataclass

Key = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class Cell:
    """One seed ellipse of a structure; seeds that share ``name`` form one structure.

    ``keys`` rows are ``(h, a, p, r, elongation, angle_deg)``: the ellipse has semi-axes
    ``r*elongation`` and ``r/elongation`` (its area stays that of a disc of radius ``r``), the
    long axis turned ``angle_deg`` from lateral towards posterior. ``r = 0`` at the first and
    last key makes a structure taper away at its ends. ``margin`` scales the fat plane around
    it (sartorius and gracilis sit in more fat than the vasti do against each other).
    ``compartment`` names the fascial compartment: where two muscles of different
    compartments meet, the border carries a fascia line (intermuscular septum) as well as fat.
    """

    name: str
    code: str | None  # muscle code (config/muscles.yaml) of a labelled muscle, else None
    tissue: str  # "muscle", "fat" or "viscera"
    keys: tuple[Key, ...]
    margin: float = 1.0
    compartment: str = ""


def key(h: float, a: float, p: float, r: float, e: float = 1.0, ang: float = 0.0) -> Key:
    """One key row of a cell (see :class:`Cell`)."""
    return (float(h), float(a), float(p), float(r), float(e), float(ang))


def cell(name: str, code: str | None, tissue: str, *keys: tuple, margin: float = 1.0,
         compartment: str = "") -> Cell:
    """A :class:`Cell` from short key tuples ``(h, a, p, r[, e[, angle]])``."""
    return Cell(name, code, tissue, tuple(key(*k) for k in keys), margin, compartment)
