"""Bones of the phantom as signed distance functions: femur, patella, tibia, fibula, the ankle
and heel bones, pelvis, sacrum; and the tendons.

Bone matters to a segmentation model as the dark cortex ring with bright fatty marrow that the
muscles wrap around, and as the landmarks that tell the levels apart (condyles and patella at
the knee, femoral head and acetabulum at the hip, tibia and fibula along the calf, malleoli at
the ankle). Each bone is a union of simple primitives
(ellipsoids, capsules, a stack of elliptical shaft sections) whose approximate signed distance
gives the cortex as a shell of given thickness and partial volume at its edges.

Coordinates are nominal mm in the frames of ``layout.py``: ``(a, p, h)`` of the right leg (or,
for the midline bones, ``a`` = distance from the body midline). Lower-leg sizes: an average
adult tibia is about 22 x 28 mm at mid-shaft with a 4-5 mm cortex and a plateau about 80 mm
wide; the fibula about 13 x 14 mm, nearly all cortex in its middle third.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.phantom.layout import HIP_CENTRE

EPS = 1e-6
IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid; ``axes`` is a 3x3 matrix whose rows are its unit axes in (a, p, h)."""

    centre: tuple[float, float, float]
    semi: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...] = IDENTITY

    def footprint(self, h: float) -> tuple[float, float, float] | None:
        """Centre (a, p) and radius of a circle that holds the section at ``h``, or None."""
        if self.axes != IDENTITY:
            reach = max(self.semi)
            return None if abs(h - self.centre[2]) >= reach else (*self.centre[:2], reach)
        t = (h - self.centre[2]) / self.semi[2]
        if abs(t) >= 1.0:
            return None
        return self.centre[0], self.centre[1], max(self.semi[:2]) * float(np.sqrt(1 - t * t))

    def sdf(self, a: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
        # Quilez's ellipsoid bound: exact on the surface, close to it nearby.
        rows = np.asarray(self.axes, dtype=np.float32)
        da, dp, dh = a - self.centre[0], p - self.centre[1], np.float32(h - self.centre[2])
        k0 = np.zeros_like(a)
        k1 = np.zeros_like(a)
        for row, semi in zip(rows, self.semi):
            q = row[0] * da + row[1] * dp + row[2] * dh
            k0 += (q / semi) ** 2
            k1 += (q / semi**2) ** 2
        k0 = np.sqrt(k0)
        return k0 * (k0 - 1.0) / np.maximum(np.sqrt(k1), EPS)


@dataclass(frozen=True)
class Capsule:
    """All points within ``radius`` of the segment ``start``-``end``."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float

    def footprint(self, h: float) -> tuple[float, float, float] | None:
        (a0, p0, h0), (a1, p1, h1) = self.start, self.end
        if not min(h0, h1) - self.radius < h < max(h0, h1) + self.radius:
            return None
        if abs(h1 - h0) < EPS:
            t0, t1 = 0.0, 1.0
        else:
            ta = (h - self.radius - h0) / (h1 - h0)
            tb = (h + self.radius - h0) / (h1 - h0)
            t0, t1 = max(0.0, min(ta, tb)), min(1.0, max(ta, tb))
        pa = (a0 + t0 * (a1 - a0), p0 + t0 * (p1 - p0))
        pb = (a0 + t1 * (a1 - a0), p0 + t1 * (p1 - p0))
        half = 0.5 * np.hypot(pb[0] - pa[0], pb[1] - pa[1])
        return 0.5 * (pa[0] + pb[0]), 0.5 * (pa[1] + pb[1]), half + self.radius

    def sdf(self, a: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
        start = np.asarray(self.start, dtype=np.float32)
        seg = np.asarray(self.end, dtype=np.float32) - start
        da, dp, dh = a - start[0], p - start[1], np.float32(h - start[2])
        t = np.clip((da * seg[0] + dp * seg[1] + dh * seg[2]) / float(seg @ seg), 0.0, 1.0)
        return np.sqrt((da - t * seg[0]) ** 2 + (dp - t * seg[1]) ** 2
                       + (dh - t * seg[2]) ** 2) - self.radius


@dataclass(frozen=True)
class Shell:
    """A spherical cup (the acetabulum): radii ``inner``..``outer``, open towards ``opening``."""

    centre: tuple[float, float, float]
    inner: float
    outer: float
    opening: tuple[float, float, float]
    rim: float  # the cup keeps points whose offset along ``opening`` is below this

    def footprint(self, h: float) -> tuple[float, float, float] | None:
        if abs(h - self.centre[2]) >= self.outer:
            return None
        return self.centre[0], self.centre[1], self.outer

    def sdf(self, a: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
        da, dp, dh = a - self.centre[0], p - self.centre[1], np.float32(h - self.centre[2])
        radius = np.sqrt(da * da + dp * dp + dh * dh)
        n = np.asarray(self.opening, dtype=np.float32)
        n = n / np.linalg.norm(n)
        along = da * n[0] + dp * n[1] + dh * n[2]
        return np.maximum(np.maximum(radius - self.outer, self.inner - radius), along - self.rim)


@dataclass(frozen=True)
class ShaftStack:
    """A long bone's shaft: elliptical sections ``(h, a, p, semi_a, semi_p)`` interpolated."""

    sections: tuple[tuple[float, float, float, float, float], ...]

    def section(self, h: float) -> tuple[float, float, float, float] | None:
        """Centre ``(a, p)`` and semi-axes of the section at ``h``, or None outside the shaft."""
        table = np.asarray(self.sections)
        if not table[0, 0] < h < table[-1, 0]:
            return None
        values = [float(np.interp(h, table[:, 0], table[:, c])) for c in range(1, 5)]
        if min(values[2:]) <= 0.5:
            return None
        return values[0], values[1], values[2], values[3]

    def footprint(self, h: float) -> tuple[float, float, float] | None:
        section = self.section(h)
        if section is None:
            return None
        return section[0], section[1], max(section[2:])

    def sdf(self, a: np.ndarray, p: np.ndarray, h: float) -> np.ndarray:
        ca, cp, sa, sp = self.section(h)  # type: ignore[misc]
        qa, qp = a - ca, p - cp
        k0 = np.sqrt((qa / sa) ** 2 + (qp / sp) ** 2)
        k1 = np.sqrt((qa / sa**2) ** 2 + (qp / sp**2) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, EPS)


Primitive = Ellipsoid | Capsule | Shell | ShaftStack


@dataclass(frozen=True)
class Bone:
    """A bone: union of primitives; cortex thickness and marrow FF as functions of ``h``.

    ``frame`` says which coordinates the primitives use: ``"leg"`` (turns with the leg's
    rotation), ``"pelvis"`` (the hip bone, which does not) or ``"midline"``.
    """

    name: str
    frame: str
    primitives: tuple[Primitive, ...]
    cortex_mm: tuple[tuple[float, float], ...]  # (h, thickness) points
    marrow_ff: tuple[tuple[float, float], ...]  # (h, FF) points
    carve: Ellipsoid | None = None  # space kept free of this bone (the hip joint)

    def cortex_at(self, h: float) -> float:
        table = np.asarray(self.cortex_mm)
        return float(np.interp(h, table[:, 0], table[:, 1]))

    def marrow_ff_at(self, h: float) -> float:
        table = np.asarray(self.marrow_ff)
        return float(np.interp(h, table[:, 0], table[:, 1]))


def _unit(*v: float) -> tuple[float, float, float]:
    arr = np.asarray(v, dtype=float)
    return tuple((arr / np.linalg.norm(arr)).tolist())


def _plate_axes(start: tuple[float, float], end: tuple[float, float], flare_deg: float):
    """Axes of a thin vertical plate from ``start`` to ``end`` (a, p), tilted by ``flare``."""
    along = _unit(end[0] - start[0], end[1] - start[1], 0.0)
    normal0 = np.array([along[1], -along[0], 0.0])
    up = np.array([0.0, 0.0, 1.0])
    tilt = np.deg2rad(flare_deg)
    normal = np.cos(tilt) * normal0 + np.sin(tilt) * up
    vertical = np.cross(normal, along)
    return (along, tuple(vertical.tolist()), tuple(normal.tolist()))


HEAD_RADIUS = 24.0
# Femur (sizes of an average adult femur: shaft ~27 mm wide, head ~48 mm, condyles ~80 mm).
FEMUR = Bone(
    "femur", "leg",
    (
        ShaftStack(((-8, 0, 5, 18, 10), (0, 0, 0, 28, 17), (20, 0, -4, 31, 20), (45, 0, -2, 33, 25),
                    (70, 0, 0, 28, 22), (100, 0, 0, 20, 18), (140, 0, 0, 15.5, 15),
                    (250, 0, 0, 13.5, 14), (330, 0, 0, 14.5, 14.5), (370, 0, 1, 17, 16),
                    (400, 2, 2, 19, 18), (425, 8, 5, 17, 15), (432, 8, 5, 0, 0))),
        Ellipsoid((-20, 10, 15), (17, 24, 23)),  # medial condyle
        Ellipsoid((20, 8, 17), (16, 23, 22)),  # lateral condyle
        Ellipsoid(HIP_CENTRE, (HEAD_RADIUS,) * 3),  # head
        Capsule(HIP_CENTRE, (0, 2, 395), 15.0),  # neck
        Ellipsoid((20, 8, 420), (18, 22, 27)),  # greater trochanter
        Ellipsoid((-16, 14, 378), (9, 9, 12)),  # lesser trochanter
    ),
    cortex_mm=((-40, 1.5), (90, 1.5), (150, 5.5), (320, 5.5), (380, 1.8), (640, 1.8)),
    marrow_ff=((-40, 0.92), (80, 0.92), (150, 0.88), (350, 0.88), (390, 0.78), (420, 0.8),
               (440, 0.9), (640, 0.9)),
)
PATELLA = Bone("patella", "leg", (Ellipsoid((2, -37, 38), (21, 9, 23)),),
               ((0, 1.2), (100, 1.2)), ((0, 0.9), (100, 0.9)))
TIBIA = Bone(
    "tibia", "leg",
    (
        ShaftStack(((-392, -5, 10, 0, 0), (-390, -5, 10, 23, 18), (-375, -5, 9, 20, 16.5),
                    (-350, -5, 8, 16, 14.5), (-300, -4, 7, 13, 13), (-250, -4, 6, 12, 13.5),
                    (-200, -4, 6, 11.5, 14), (-150, -3, 7, 12.5, 15), (-100, -2, 8, 16, 16.5),
                    (-80, -1, 9, 20, 18), (-60, 0, 10, 23, 20), (-40, 0, 8, 30, 24),
                    (-25, 0, 6, 37, 27), (-10, 0, 5, 40, 28), (-8, 0, 5, 0, 0))),
        Ellipsoid((-22, 10, -400), (8, 11, 16)),  # medial malleolus
    ),
    ((-420, 1.2), (-370, 1.5), (-300, 4.5), (-150, 4.5), (-80, 1.5), (-40, 1.2), (0, 1.2)),
    ((-420, 0.9), (0, 0.9)),
)
FIBULA = Bone(
    "fibula", "leg",
    (
        ShaftStack(((-432, 32, 25, 0, 0), (-430, 32, 25, 8, 9), (-410, 32, 24, 10, 11.5),
                    (-385, 32, 23, 9, 10), (-350, 31, 24, 7.5, 8), (-300, 30, 25, 6.5, 7),
                    (-200, 30, 26, 6.5, 7), (-100, 31, 26, 7, 7.5), (-55, 31, 24, 7, 7),
                    (-45, 32, 22, 0, 0))),
        Ellipsoid((32, 25, -418), (10, 12, 16)),  # lateral malleolus
        Ellipsoid((33, 20, -35), (11, 11, 13)),  # head
    ),
    ((-440, 1.2), (-380, 1.5), (-330, 2.8), (-80, 2.8), (-50, 1.5), (0, 1.2)),
    ((-440, 0.9), (0, 0.9)),
)
# Ankle and foot bones (supine: the foot points anteriorly, the heel rests on the table).
TALUS = Bone("talus", "leg", (Ellipsoid((4, 12, -408), (20, 24, 14)),
                              Ellipsoid((4, -22, -418), (13, 14, 12))),
             ((-480, 1.0), (-380, 1.0)), ((-480, 0.85), (-380, 0.85)))
CALCANEUS = Bone("calcaneus", "leg", (Ellipsoid((6, 20, -445), (17, 34, 17)),),
                 ((-480, 1.0), (-380, 1.0)), ((-480, 0.85), (-380, 0.85)))
MIDFOOT = Bone("midfoot", "leg", (Ellipsoid((4, -45, -440), (28, 22, 16)),
                                  Ellipsoid((2, -100, -456), (30, 42, 8))),
               ((-480, 1.0), (-380, 1.0)), ((-480, 0.85), (-380, 0.85)))
# Hip bone, right side; the acetabulum cups the femoral head with a ~2.5 mm joint space.
HIP_BONE = Bone(
    "hip_bone", "pelvis",
    (
        Shell(HIP_CENTRE, HEAD_RADIUS + 2.5, HEAD_RADIUS + 9.0, (1.0, -0.3, -0.8), -4.0),
        Capsule((-52, 4, 462), (-75, 35, 505), 17.0),  # ilium body above the acetabulum
        Ellipsoid((-24, -33, 530), (48, 46, 4.0), _plate_axes((-5, -72), (-45, 10), 20)),
        Ellipsoid((-64, 36, 530), (42, 46, 7.5), _plate_axes((-42, 6), (-88, 68), 10)),
        Capsule((-62, -25, 436), (-127, -48, 436), 10.0),  # superior pubic ramus
        Capsule((-60, 20, 425), (-62, 40, 388), 13.0),  # ischium
        Ellipsoid((-62, 42, 385), (14, 16, 17)),  # ischial tuberosity
        Capsule((-66, 35, 380), (-126, -35, 408), 7.0),  # ischiopubic ramus
    ),
    ((0, 1.5), (640, 1.5)), ((0, 0.55), (640, 0.55)),
    carve=Ellipsoid(HIP_CENTRE, (HEAD_RADIUS + 2.5,) * 3),
)
# Midline bones; ``a`` is the distance from the midline (they are symmetric).
SACRUM = Bone(
    "sacrum", "midline",
    (
        Ellipsoid((0, 52, 585), (46, 22, 25)),  # S1 with the alae
        Ellipsoid((0, 66, 540), (38, 17, 28)),
        Ellipsoid((0, 78, 490), (18, 11, 28)),
        Ellipsoid((0, 84, 462), (8, 7, 12)),  # coccyx
        Ellipsoid((0, 30, 630), (25, 19, 17)),  # L5 body
        Ellipsoid((0, 64, 626), (20, 12, 22)),  # L5 arch
        Ellipsoid((0, 86, 622), (5, 14, 14)),  # L5 spinous process
    ),
    ((0, 1.2), (640, 1.2)), ((0, 0.5), (640, 0.5)),
)
LEG_BONES = (FEMUR, PATELLA, TIBIA, FIBULA, TALUS, CALCANEUS, MIDFOOT, HIP_BONE)
MIDLINE_BONES = (SACRUM,)

# The L5-S1 intervertebral disc (water-rich fibrocartilage).
DISC = Ellipsoid((0, 38, 610), (24, 18, 5))

# Dense connective tissue (almost no signal) and the hip joint space (cartilage and fluid).
TENDONS = (
    Capsule((0, -40, 60), (0, -36, 110), 5.0),  # quadriceps tendon
    Capsule((0, -43, 16), (0, -36, -50), 4.5),  # patellar tendon
    # Achilles tendon: a wide thin aponeurosis on the soleus that narrows to the heel.
    ShaftStack(((-446, 6, 55, 0, 0), (-444, 6, 55, 9, 4), (-430, 6, 56, 9, 4.5),
                (-380, 7, 57, 8, 4), (-320, 8, 60, 9, 3), (-260, 8, 62, 12, 1.5),
                (-230, 8, 63, 0, 0))),
    Capsule((10, -12, -290), (-2, -22, -400), 3.0),  # tibialis anterior
    Capsule((16, -8, -372), (8, -22, -410), 2.0),  # extensor hallucis longus
    Capsule((24, -4, -335), (18, -20, -410), 2.5),  # extensor digitorum longus
    Capsule((43, 24, -245), (36, 34, -420), 2.5),  # peroneus longus
    Capsule((36, 33, -370), (34, 35, -425), 2.5),  # peroneus brevis
    Capsule((0, 26, -318), (-20, 20, -415), 2.5),  # tibialis posterior
    Capsule((-9, 27, -340), (-17, 26, -415), 2.0),  # flexor digitorum longus
    Capsule((12, 34, -380), (6, 30, -430), 2.5),  # flexor hallucis longus
)
HIP_JOINT = Ellipsoid(HIP_CENTRE, (HEAD_RADIUS + 3.0,) * 3)
KNEE_JOINT = Ellipsoid((0, 5, -7), (40, 24, 5))  # articular cartilage and menisci
