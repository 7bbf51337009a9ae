"""The whole-leg atlas: the thigh and calf tables joined into one, sole to lower abdomen.

The renderer and the subject model see one list of seed cells and one set of level tables;
the thigh (``layout.py``) and the calf (``calf_layout.py``) are authored apart because they
come from different sources, and meet at the knee, where the gastrocnemius and popliteus of
the calf atlas already start.
"""

from __future__ import annotations

from inference.phantom import calf_layout, layout
from inference.phantom.cells import Cell

CELLS: tuple[Cell, ...] = layout.CELLS + calf_layout.CALF_CELLS

H_MIN = calf_layout.SOLE_H  # nominal range of the anatomy (mm above the knee joint line)
H_MAX = layout.H_TOP

SUBCUTANEOUS_PROFILE = calf_layout.SUBCUTANEOUS_PROFILE + layout.SUBCUTANEOUS_PROFILE
GREAT_SAPHENOUS = calf_layout.GREAT_SAPHENOUS + layout.GREAT_SAPHENOUS
SMALL_SAPHENOUS = calf_layout.SMALL_SAPHENOUS


def compartment_ids() -> dict[str, int]:
    """Integer id of every named compartment (0 stands for none)."""
    names = sorted({c.compartment for c in CELLS if c.compartment})
    return {name: index + 1 for index, name in enumerate(names)}
