"""One leg of a phantom subject: its atlas sampled along the leg, and how it lies on the table.

The renderer needs, for every axial level, each leg's seed ellipses in leg coordinates, the
leg's frame in patient coordinates and its fascia and skin outlines. They follow from the
atlas (``atlas.py``) and the subject: shifts, sizes and wobble per structure and side, muscle
bulk and bone size, and the posture, in which the buttock, the back of the thigh, the calf
and the heel rest on the scanner table under their weight.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy.interpolate import PchipInterpolator

from common.muscles import load_muscles
from inference.phantom import atlas, calf_layout, layout
from inference.phantom import bones as bone_table
from inference.phantom.infiltration import ATROPHY
from inference.phantom.outline import N_ANGLES, outline
from inference.phantom.partition import quadratic_forms

if TYPE_CHECKING:
    from inference.phantom.subject import Subject

H_STEP = 2.0  # nominal mm between precomputed levels of the seed table
OUTLINE_HARMONICS = (2.6, 7.0)  # Gaussian taper of the outline's harmonics: limb, trunk/foot
OUTLINE_BONES = (bone_table.FEMUR, bone_table.PATELLA, bone_table.TIBIA, bone_table.FIBULA,
                 bone_table.TALUS, bone_table.CALCANEUS)
OUTLINE_TENDONS = (bone_table.TENDONS[2],)  # the Achilles tendon lies under the skin
KIND_LABELLED, KIND_MUSCLE, KIND_FAT, KIND_VISCERA = range(4)
_KINDS = {"fat": KIND_FAT, "viscera": KIND_VISCERA}
# How far the table presses the posterior skin of the thigh and of the calf, mm.
TABLE_COMPRESSION_MM = {"thigh": 5.0, "calf": 5.0}
CALF_WEIGHT_AT = 0.4  # centre of mass of the lower leg, as a share of its length below the knee
KNEE_GIVE = 0.2  # share of a thick calf's lift of the knee taken up by pressing the calf flat
THIGH_CONTACT_LEVELS = (120.0, 350.0)  # the back of the thigh rests here (the knee floats)
CALF_SLOPE_LIMITS = (-0.1, 0.3)  # mm of leg axis drop per mm from the knee to the ankle


@lru_cache(maxsize=1)
def _nominal_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels, every cell's nominal track ``[5, n_cells, levels]`` (a, p, r, elongation,
    angle; monotone cubic through its keys, zero outside them) and where each cell exists."""
    h_grid = np.arange(atlas.H_MIN, atlas.H_MAX + H_STEP / 2, H_STEP)
    tables = np.zeros((5, len(atlas.CELLS), h_grid.size))
    span = np.zeros((len(atlas.CELLS), h_grid.size), dtype=bool)
    for index, cell in enumerate(atlas.CELLS):
        keys = np.asarray(cell.keys)
        keys = keys[np.argsort(keys[:, 0])]
        span[index] = (h_grid >= keys[0, 0]) & (h_grid <= keys[-1, 0])
        spline = PchipInterpolator(keys[:, 0], keys[:, 1:], axis=0)
        tables[:, index, span[index]] = spline(h_grid[span[index]]).T
    tables[2] = np.maximum(tables[2], 0.0)
    for array in (h_grid, tables, span):
        array.flags.writeable = False
    return h_grid, tables, span


@lru_cache(maxsize=1)
def label_tables() -> tuple[dict[str, int], dict[str, int]]:
    """Label of every muscle code on the right and on the left leg (config/muscles.yaml)."""
    table = load_muscles()
    return tuple({m.code: table.label_of(m.code, side) for m in table.muscles}
                 for side in ("right", "left"))


def _buttock_mm(subject: Subject) -> float:
    """Height of the hip frame above the table: the buttock's muscle and fat under it."""
    profile = np.asarray(atlas.SUBCUTANEOUS_PROFILE)
    fat = subject.subcutaneous_mm * float(np.interp(layout.HIP_CENTRE[2], profile[:, 0],
                                                    profile[:, 1]))
    muscle = subject.girth_scale * subject.muscle_bulk * (layout.TABLE_P_AT_HIP
                                                          - layout.BUTTOCK_FAT_MM)
    return muscle + fat


def muscle_structures() -> list[tuple[str, str | None]]:
    """(name, code) of every muscle structure, in the order of ``Subject.fat_params``."""
    seen: dict[str, str | None] = {}
    for cell in atlas.CELLS:
        if cell.tissue == "muscle" and cell.name not in seen:
            seen[cell.name] = cell.code
    return list(seen.items())


class Leg:
    """One leg's seeds sampled along the leg, and its frame in patient coordinates."""

    def __init__(self, subject: Subject, side: int, label_of: dict[str, int]) -> None:
        self.subject = subject
        self.side = side
        self.sigma = -1.0 if side == 0 else 1.0  # patient right is -x
        self.bone_scale = subject.girth_scale * subject.leg_scale[side]
        self.scale = self.bone_scale * subject.muscle_bulk  # muscles and the leg frame
        self.bulk = subject.muscle_bulk  # bone coordinates = leg coordinates * bulk
        self.s_z = subject.length_scale
        self.s_calf = subject.length_scale * subject.calf_ratio
        self.theta = np.deg2rad(subject.rotation_deg[side])
        self.knee_lift = subject.knee_lift_mm[side]
        self.inclination = np.deg2rad(layout.FEMUR_INCLINATION_DEG - subject.abduction_deg[side])
        self.spread = np.deg2rad(subject.abduction_deg[side] + subject.calf_spread_deg[side])
        self.x_mid, y_shift = subject.offset_mm
        self.y_table = layout.TABLE_Y + y_shift
        self.y_hip = self.y_table - _buttock_mm(subject)
        self.h_grid, nominal, span = _nominal_tables()
        structures = [name for name, _ in muscle_structures()]
        names = sorted({c.name for c in atlas.CELLS})
        compartments = atlas.compartment_ids()
        n = len(atlas.CELLS)
        # Each cell's nominal track, shifted, scaled and wobbling per subject and side.
        da, dp, size, wob_amp, wob_len, wob_phase = (subject.cell_jitter[side, :, c][:, None]
                                                     for c in range(6))
        wobble = wob_amp * np.sin(2 * np.pi * self.h_grid[None, :] / wob_len + wob_phase)
        self.tables = nominal.copy()  # a, p, r, elongation, angle: [5, n, levels]
        self.tables[0] += np.where(span, da + wobble, 0.0)
        self.tables[1] += np.where(span, dp + 0.5 * wobble, 0.0)
        self.tables[2] *= size
        self.group = np.zeros(n, dtype=np.int32)
        self.kind = np.zeros(n, dtype=np.int32)
        self.label = np.zeros(n, dtype=np.int16)
        self.margin = np.zeros(n, dtype=np.float32)
        self.compartment = np.zeros(n, dtype=np.int32)
        self.extent = np.zeros((n, 2))
        self.fat = np.zeros((n, 5), dtype=np.float32)
        self.atrophy = np.zeros(n)
        for index, cell in enumerate(atlas.CELLS):
            self.group[index] = names.index(cell.name)
            self.kind[index] = _KINDS.get(cell.tissue, KIND_LABELLED if cell.code else KIND_MUSCLE)
            self.label[index] = label_of.get(cell.code, 0) if cell.code else 0
            self.margin[index] = cell.margin
            self.compartment[index] = compartments.get(cell.compartment, 0)
            if cell.tissue == "muscle":
                self.fat[index] = subject.fat_params[side, structures.index(cell.name)]
                self.atrophy[index] = self.fat[index, ATROPHY]
        # Position along a structure runs over all its seeds (fat gradients are per muscle).
        for group in np.unique(self.group):
            members = [i for i in range(n) if self.group[i] == group]
            self.extent[members] = (min(min(k[0] for k in atlas.CELLS[i].keys) for i in members),
                                    max(max(k[0] for k in atlas.CELLS[i].keys) for i in members))
        self.rise = 0.0
        self.calf_slope = 0.0
        self.rise = self._thigh_rise()
        self.rise, self.calf_slope = self._calf_fit()

    # --- frame ---------------------------------------------------------------------------
    def frame(self, h: float) -> tuple[float, float, float]:
        """Global (x, y) of the leg frame origin and the leg's rotation at level ``h``.

        Above the knee the frame follows the femoral shaft (inclined towards the knee and
        sloping from the hip until the back of the thigh rests on the table, ``_thigh_rise``);
        below it, the tibia, turned out by the subject's spread and sloping down until the
        calf rests on the table (``_calf_slope``).
        """
        below = self._below(h)
        lateral = -layout.MIDLINE_A * self.bone_scale - below * np.tan(self.inclination)
        oy = self.y_hip + below * self.rise
        if h < 0:
            down = -h * self.s_calf
            lateral += down * np.tan(self.spread)
            oy += down * self.calf_slope
        return self.x_mid + self.sigma * lateral, oy, self._theta(h)

    def _below(self, h: float) -> float:
        """Distance (mm along the femoral shaft) of level ``h`` below the shaft's top."""
        below = max(layout.SHAFT_TOP_H - min(h, layout.SHAFT_TOP_H), 0.0) * self.s_z
        return min(below, layout.SHAFT_TOP_H * self.s_z)

    def _theta(self, h: float) -> float:
        return self.theta * float(np.clip((layout.HIP_CENTRE[2] - h) / 80.0, 0.0, 1.0))

    def to_global(self, a: float, p: float, h: float, rotate: bool = True) -> tuple[float, float]:
        ox, oy, theta = self.frame(h)
        if not rotate:
            theta = 0.0
        u = self.scale * (a * np.cos(theta) - p * np.sin(theta))
        v = self.scale * (a * np.sin(theta) + p * np.cos(theta))
        return ox + self.sigma * u, oy + v

    def seeds(self, h: float) -> dict[str, np.ndarray]:
        """Active seeds at ``h``: centre, radius, shape (nominal leg coordinates)."""
        pos = (h - atlas.H_MIN) / H_STEP
        i0 = int(np.clip(np.floor(pos), 0, self.h_grid.size - 2))
        frac = float(np.clip(pos - i0, 0.0, 1.0))
        values = self.tables[:, :, i0] * (1 - frac) + self.tables[:, :, i0 + 1] * frac
        active = np.nonzero(values[2] > 0.3)[0]
        a, p, r, e, ang = (values[c, active] for c in range(5))
        along = (h - self.extent[active, 0]) / (self.extent[active, 1] - self.extent[active, 0])
        return {"index": active, "a": a, "p": p, "r": r, "e": np.maximum(e, 0.3),
                "ang": np.deg2rad(ang), "along": np.clip(along, 0.0, 1.0)}

    def solids(self, h: float) -> list[tuple[float, float, float]]:
        """Circles (a, p, r) in leg coordinates that the fascia outline must hold: the bones."""
        out = [(fp[0] / self.bulk, fp[1] / self.bulk, fp[2] / self.bulk + 4.0)
               for bone in OUTLINE_BONES for prim in bone.primitives
               if (fp := prim.footprint(h)) is not None]
        out += [(fp[0], fp[1], fp[2] + 3.0) for prim in OUTLINE_TENDONS
                if (fp := prim.footprint(h)) is not None]
        return out

    def section(self, h: float) -> dict | None:
        """Seeds, fascia outline and skin outline of level ``h`` in leg coordinates."""
        seeds = self.seeds(h)
        if seeds["index"].size == 0:
            return None
        q = quadratic_forms(seeds["r"], seeds["e"], seeds["ang"])
        weights = seeds["r"] ** 2
        centre = np.array([np.average(seeds["a"], weights=weights),
                           np.average(seeds["p"], weights=weights)])
        shrink = 1.0 - 0.5 * self.atrophy[seeds["index"]]
        # Thighs and calves are smooth and round; the trunk's and the foot's outlines need
        # more detail.
        harmonics = float(np.interp(h, (calf_layout.FOOT_TOP_H - 60, calf_layout.FOOT_TOP_H - 30,
                                        380.0, 460.0), OUTLINE_HARMONICS[::-1]
                                    + OUTLINE_HARMONICS))
        r_muscle = outline(seeds, q, centre, shrink, self.solids(h), harmonics)
        phi = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
        subject = self.subject
        profile = np.asarray(atlas.SUBCUTANEOUS_PROFILE)
        medial, posterior = subject.subcutaneous_shape
        sc_mm = subject.subcutaneous_mm * np.interp(h, profile[:, 0], profile[:, 1]) * (
            1 + medial * np.cos(phi - np.pi) + posterior * np.cos(phi - np.pi / 2))
        face, spread, thin = calf_layout.TIBIAL_FACE
        over_tibia = np.exp(-0.5 * (np.angle(np.exp(1j * (phi - np.deg2rad(face))))
                                    / np.deg2rad(spread)) ** 2)
        sc_mm *= 1.0 - (1.0 - thin) * over_tibia * float(np.clip((-30.0 - h) / 40.0, 0.0, 1.0))
        r_skin = r_muscle + np.maximum(sc_mm, 2.0) / self.scale
        return {"seeds": seeds, "q": q, "centre": centre, "r_muscle": r_muscle,
                "r_skin": r_skin, "sc_mm": sc_mm}

    def _posterior_reach(self, h: float) -> float | None:
        """How far (mm, towards the table) the skin reaches behind the leg frame at ``h``."""
        section = self.section(h)
        if section is None:
            return None
        phi = np.linspace(-np.pi, np.pi, N_ANGLES, endpoint=False)
        a = section["centre"][0] + section["r_skin"] * np.cos(phi)
        p = section["centre"][1] + section["r_skin"] * np.sin(phi)
        theta = self._theta(h)
        return self.scale * float(np.max(a * np.sin(theta) + p * np.cos(theta)))

    def _thigh_rise(self) -> float:
        """Slope of the femoral frame from the hip that lets the thigh rest on the table.

        The thigh pivots about the hip until the back of the thigh touches the table
        (pressed in by ``TABLE_COMPRESSION_MM``); a raised knee (``knee_lift_mm``, a cushion)
        lifts it off again.
        """
        room = self.y_table - self.y_hip + TABLE_COMPRESSION_MM["thigh"]
        rises = []
        for h in np.arange(THIGH_CONTACT_LEVELS[0], THIGH_CONTACT_LEVELS[1] + 1.0, 15.0):
            reach = self._posterior_reach(float(h))
            if reach is not None:
                rises.append((room - reach) / self._below(float(h)))
        lift = self.knee_lift / (layout.SHAFT_TOP_H * self.s_z)
        return (min(rises) if rises else 0.0) - lift

    def _calf_fit(self) -> tuple[float, float]:
        """Thigh slope, and drop of the leg axis per mm below the knee, with the calf resting.

        The lower leg lies on the table where its weight puts it: on the supporting line of
        its posterior profile under its centre of mass (usually calf belly and heel, each
        pressed in by ``TABLE_COMPRESSION_MM``). If that puts the knee higher than the
        resting thigh does, the knee rises by all but ``KNEE_GIVE`` of the difference (the
        back of the thigh leaves the table near the knee) and the soft calf is pressed flat
        against the table for the rest. If lower, the lower leg pivots about the
        thigh's knee until it touches.
        """
        knee_length = layout.SHAFT_TOP_H * self.s_z
        oy0 = self.y_hip + knee_length * self.rise
        limits = []  # (mm below the knee, highest allowed axis y there)
        for h in np.arange(-80.0, atlas.H_MIN, -10.0):
            reach = self._posterior_reach(float(h))
            if reach is not None:
                limits.append((-h * self.s_calf,
                               self.y_table + TABLE_COMPRESSION_MM["calf"] - reach))
        if not limits:
            return self.rise, 0.0
        down, highest = (np.array(v) for v in zip(*limits, strict=True))
        slopes = np.linspace(*CALF_SLOPE_LIMITS, 201)
        knees = np.min(highest[None, :] - slopes[:, None] * down[None, :], axis=1)
        centre = CALF_WEIGHT_AT * abs(atlas.H_MIN) * self.s_calf
        best = int(np.argmax(knees + slopes * centre))
        if knees[best] <= oy0:
            knee = knees[best] + KNEE_GIVE * (oy0 - knees[best])
            return (knee - self.y_hip) / knee_length, float(slopes[best])
        slope = float(np.clip(np.min((highest - oy0) / down), *CALF_SLOPE_LIMITS))
        return self.rise, slope
