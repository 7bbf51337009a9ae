"""The phantom subject: every random parameter of one synthetic person, drawn once.

Its own module because both the anatomy (which draws it, in ``anatomy.make_subject``) and the
cross-section renderer (which reads it) need the type, and neither may import the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inference.phantom.infiltration import Infiltration
from inference.phantom.layout import H_BOTTOM, H_TOP


@dataclass(frozen=True)
class Subject:
    """Every per-subject random parameter, drawn once from the seed (see make_subject)."""

    seed: int
    infiltration: Infiltration
    length_scale: float  # thigh length relative to the nominal anatomy
    girth_scale: float  # bone and frame cross-section size relative to nominal
    leg_scale: tuple[float, float]  # (right, left) extra size factor: left/right asymmetry
    subcutaneous_mm: float  # subcutaneous fat thickness at mid-thigh
    subcutaneous_shape: tuple[float, float]  # extra medial and posterior fat (fractions)
    rotation_deg: tuple[float, float]  # external rotation of each leg about its long axis
    abduction_deg: tuple[float, float]  # how far each leg is spread from the anatomical axis
    knee_lift_mm: tuple[float, float]  # knee raised (+) or lowered from the nominal posture
    offset_mm: tuple[float, float]  # (x, y) position of the body in the field of view
    septum_mm: float  # typical thickness of the fat septa between muscles
    bladder_fill: float  # bladder size factor
    disease: str  # fat replacement pattern ("healthy" or a PATTERNS key)
    stage: float  # disease stage 0..1
    # Per-structure and per-wave tables (arrays; equal subjects have equal seeds).
    cell_jitter: np.ndarray = field(compare=False, repr=False)  # [2, n_cells, 6]
    fat_params: np.ndarray = field(compare=False, repr=False)  # [2, n_structures, 5]
    waves: np.ndarray = field(compare=False, repr=False)  # fields.draw_waves
    bias: np.ndarray = field(compare=False, repr=False)  # signals.bias_field coefficients
    # Who the subject is, and what follows from it (defaults: a nominal adult).
    sex: str = "F"  # "F" or "M"
    age_years: float = 45.0
    height_m: float = 1.70
    bmi: float = 24.0  # body mass index, kg/m^2
    muscle_bulk: float = 1.0  # muscle cross-section size (linear) relative to nominal
    calf_ratio: float = 1.0  # lower-leg length relative to the thigh's scaling
    calf_spread_deg: tuple[float, float] = (0.0, 0.0)  # lower legs turned outwards at the knee
    fascia_mm: float = 0.7  # thickness of the deep fascia and the intermuscular septa
    streaks: float = 0.0  # intramuscular fat septa, 0 (none) .. 1 (many and thick)
    texture: float = 0.0  # relative amplitude of the muscle's water-signal texture

    @property
    def z_range_mm(self) -> tuple[float, float]:
        """LPS z of the knee end (tibial plateau) and of the top of the anatomy."""
        return (self.z_at(H_BOTTOM), self.z_at(H_TOP))

    def z_at(self, h: float) -> float:
        """LPS z of nominal height ``h`` (the lower leg has its own length factor)."""
        return h * self.length_scale * (self.calf_ratio if h < 0 else 1.0)

    def h_at(self, z: float) -> float:
        """Nominal height of LPS ``z`` (inverse of :meth:`z_at`)."""
        return z / (self.length_scale * (self.calf_ratio if z < 0 else 1.0))
