"""The phantom's anatomical atlas: where every thigh structure sits, level by level.

A cross-section of one leg is a weighted Voronoi partition of the region inside the deep fascia:
each structure (a labelled muscle, an unlabelled muscle, a fat compartment, pelvic contents) has
one or more seed ellipses whose centre, size and shape vary smoothly along the leg. This module
holds the nominal table that the per-subject model jitters and interpolates; it is data, kept
apart from the rendering code so that anatomy can be corrected without touching the algorithm.

Coordinates are those of a nominal adult RIGHT leg (the left leg is its mirror image), in mm:

* ``h``: height above the knee joint line (the femoral head centre is at ``h = 430``);
* ``a``: lateral distance from the femoral shaft axis (medial is negative; the body midline is
  at ``a = -133``);
* ``p``: posterior distance from the femoral shaft axis (anterior is negative).

Muscle levels follow standard cross-sectional anatomy (origins and insertions as in Gray's
Anatomy): gluteals and TFL only around the hip, pectineus and adductor brevis proximally, the
short head of biceps femoris in the distal half, vasti down to the patella, semimembranosus,
gracilis and sartorius down to the knee.
"""

from __future__ import annotations

from dataclasses import dataclass

# The 18 labelled muscles in label order (Huysmans 2023, Table 1; config/muscles.yaml).
MUSCLE_CODES = ("RF", "VL", "VM", "VI", "PC", "AB", "AL", "AM", "BFL", "BFB", "ST", "SM", "SR",
                "TFL", "GC", "Gma", "Gme", "Gmi")

# Range of the modelled anatomy (nominal h): from the tibial plateau to the lower abdomen.
H_BOTTOM = -40.0
H_TOP = 640.0
HIP_CENTRE = (-45.0, -8.0, 430.0)  # femoral head centre (a, p, h)
MIDLINE_A = -133.0  # body midline in leg coordinates
SHAFT_TOP_H = 390.0  # above this the leg frame no longer follows the femoral shaft
FEMUR_INCLINATION_DEG = 7.0  # anatomical shaft axis: knees nearer the midline than the hips
TABLE_Y = 110.0  # LPS y of the scanner table (the posterior skin rests on it), before offsets
TABLE_P_AT_HIP = 110.0  # posterior skin (scanner table) below the hip frame origin, nominal


@dataclass(frozen=True)
class Cell:
    """One seed ellipse of a structure; seeds that share ``name`` form one structure.

    ``keys`` rows are ``(h, a, p, r, elongation, angle_deg)``: the ellipse has semi-axes
    ``r*elongation`` and ``r/elongation`` (its area stays that of a disc of radius ``r``), the
    long axis turned ``angle_deg`` from lateral towards posterior. ``r = 0`` at the first and
    last key makes a structure taper away at its ends. ``margin`` scales the fat plane around
    it (sartorius and gracilis sit in more fat than the vasti do against each other).
    """

    name: str
    code: str | None  # Huysmans 2023 muscle code for the 18 labelled muscles, else None
    tissue: str  # "muscle", "fat" or "viscera"
    keys: tuple[tuple[float, float, float, float, float, float], ...]
    margin: float = 1.0


def _k(h: float, a: float, p: float, r: float, e: float = 1.0, ang: float = 0.0):
    return (float(h), float(a), float(p), float(r), float(e), float(ang))


def _cell(name, code, tissue, *keys, margin=1.0) -> Cell:
    return Cell(name, code, tissue, tuple(_k(*k) for k in keys), margin)


CELLS: tuple[Cell, ...] = (
    # --- quadriceps ---------------------------------------------------------------------
    _cell("RF", "RF", "muscle",
          (70, 2, -42, 0), (100, 2, -44, 8, 1.5, 0), (170, 2, -48, 12, 1.3, 0),
          (240, 0, -53, 16, 1.3, 0), (310, -5, -56, 18, 1.25, 0), (360, -10, -58, 17, 1.2, 0),
          (400, -18, -58, 14, 1.2, 10), (440, -27, -54, 10, 1.2, 20), (470, -32, -48, 0)),
    _cell("VL", "VL", "muscle",
          (65, 30, -14, 0), (110, 30, -18, 13), (170, 31, -20, 16.7), (240, 32, -22, 18.6),
          (310, 32, -20, 19.5), (360, 30, -18, 17.7), (400, 28, -14, 14), (440, 26, -8, 6.5),
          (455, 24, -5, 0)),
    _cell("VL", "VL", "muscle",
          (90, 36, 5, 0), (130, 37, 5, 10.2), (170, 38, 6, 15.8), (240, 40, 8, 17.7),
          (310, 40, 8, 18.6), (360, 36, 8, 16.7), (400, 34, 6, 13), (430, 32, 4, 5.6),
          (445, 30, 3, 0)),
    _cell("VM", "VM", "muscle",
          (25, -28, -18, 0), (50, -30, -20, 14, 1.3, -60), (110, -28, -20, 25, 1.2, -50),
          (170, -26, -24, 24, 1.15, -50), (240, -24, -27, 19, 1.2, -50),
          (310, -20, -27, 13, 1.3, -45), (360, -14, -24, 7), (390, -10, -20, 0)),
    _cell("VI", "VI", "muscle",
          (75, 2, -28, 0), (110, 0, -27, 12), (170, 0, -25, 13.2), (240, 0, -24, 13.2),
          (310, 0, -24, 13.2), (360, -2, -24, 13.2), (395, -4, -22, 7.2), (405, -4, -22, 0)),
    _cell("VI", "VI", "muscle",
          (95, 20, -14, 0), (130, 21, -14, 9.6), (170, 21, -12, 12), (240, 22, -10, 12),
          (310, 21, -9, 12), (360, 20, -7, 10.8), (390, 16, -5, 4.8), (400, 15, -5, 0)),
    _cell("VI", "VI", "muscle",
          (120, 21, -10, 0), (170, 23, 5, 7.2), (240, 24, 6, 8.4), (310, 24, 6, 8.4),
          (360, 22, 5, 7.2),
          (385, 20, -2, 0)),
    _cell("VI", "VI", "muscle",
          (100, -6, -24, 0), (140, -16, -19, 8.4), (240, -16, -18, 9.6), (310, -16, -18, 8.4),
          (370, -8, -20, 0)),
    # --- adductors ----------------------------------------------------------------------
    _cell("PC", "PC", "muscle",
          (340, -28, -10, 0), (360, -38, -25, 11, 1.4, 30), (395, -58, -38, 13, 1.5, 20),
          (430, -85, -38, 9, 1.6, 20), (450, -95, -40, 0)),
    _cell("AB", "AB", "muscle",
          (270, -32, 10, 0), (310, -40, 5, 14.4, 1.3, 45), (360, -50, 0, 18, 1.3, 45),
          (395, -75, -8, 14.4, 1.4, 40), (415, -90, -12, 0)),
    _cell("AL", "AL", "muscle",
          (165, -32, 12, 0), (200, -38, 6, 9, 1.2, 60), (240, -45, -2, 15, 1.3, 60),
          (310, -58, -15, 20, 1.3, 45), (360, -68, -22, 19, 1.3, 35),
          (395, -88, -28, 14, 1.3, 30), (425, -110, -32, 0)),
    _cell("AM", "AM", "muscle",
          (80, -24, 24, 0), (110, -25, 22, 10), (170, -34, 22, 16), (240, -45, 25, 20),
          (310, -58, 25, 22), (360, -68, 22, 20), (395, -85, 18, 13), (410, -92, 15, 0)),
    _cell("AM", "AM", "muscle",
          (120, -22, 40, 0), (170, -22, 40, 10), (240, -25, 42, 16), (310, -32, 45, 18),
          (360, -42, 42, 18), (395, -55, 32, 10), (410, -60, 30, 0)),
    _cell("GC", "GC", "muscle",
          (-15, -36, 36, 0), (20, -40, 48, 5), (60, -44, 45, 6), (110, -50, 34, 7, 1.3, 110),
          (170, -58, 25, 8, 1.5, 100), (240, -68, 15, 9, 1.6, 100), (310, -82, 5, 10, 1.7, 100),
          (360, -95, -2, 10, 1.8, 100), (395, -112, -10, 8, 1.8, 100), (415, -120, -15, 0),
          margin=1.6),
    # --- hamstrings ---------------------------------------------------------------------
    _cell("BFL", "BFL", "muscle",
          (10, 38, 30, 0), (60, 34, 40, 10), (110, 30, 42, 13), (170, 26, 46, 15),
          (240, 22, 48, 16), (310, 10, 52, 15), (360, -8, 55, 13), (395, -40, 58, 7),
          (405, -50, 55, 0)),
    _cell("BFB", "BFB", "muscle",
          (25, 34, 24, 0), (60, 30, 28, 14), (110, 24, 26, 14), (170, 16, 27, 11),
          (240, 10, 28, 6), (260, 8, 26, 0)),
    _cell("ST", "ST", "muscle",
          (35, -22, 50, 0), (60, -18, 57, 6), (110, -15, 58, 10), (170, -10, 60, 14),
          (240, -12, 60, 17), (310, -22, 62, 16), (360, -35, 62, 13), (395, -50, 62, 7),
          (405, -55, 58, 0)),
    _cell("SM", "SM", "muscle",
          (0, -32, 38, 0), (20, -36, 35, 10), (60, -28, 42, 16), (110, -30, 45, 18),
          (170, -32, 50, 16), (240, -38, 52, 12), (310, -48, 52, 8), (360, -55, 50, 5),
          (395, -58, 55, 3), (405, -60, 52, 0)),
    # --- sartorius, TFL, gluteals ------------------------------------------------------
    _cell("SR", "SR", "muscle",
          (-25, -40, 22, 0), (-5, -42, 22, 7, 1.5, 100), (20, -48, 25, 9, 1.5, 100),
          (60, -50, 22, 12, 1.6, 110), (110, -50, 10, 12, 1.6, 100),
          (170, -50, -5, 12, 1.7, 95), (240, -48, -20, 12, 1.7, 80),
          (310, -42, -45, 12, 1.7, 40), (360, -28, -62, 12, 1.7, 15),
          (395, -8, -70, 12, 1.7, 5), (430, 5, -70, 11, 1.6, 0), (480, 15, -72, 7),
          (510, 18, -74, 0), margin=1.6),
    _cell("TFL", "TFL", "muscle",
          (320, 40, -26, 0), (360, 38, -32, 15, 1.3, 60), (395, 38, -38, 17.5, 1.4, 60),
          (430, 32, -48, 17.5, 1.4, 55), (480, 15, -62, 12.5, 1.4, 30), (525, 5, -68, 0)),
    _cell("Gma", "Gma", "muscle",
          (320, 30, 35, 0), (360, 28, 38, 12, 1.5, 45), (395, 25, 45, 18, 1.4, 40),
          (430, 22, 58, 22, 1.5, 30), (480, 10, 60, 22, 1.5, 20), (530, -10, 62, 12, 1.5, 40),
          (560, -25, 65, 0)),
    _cell("Gma", "Gma", "muscle",
          (355, -15, 72, 0), (370, -20, 72, 8, 2.0, 0), (395, -25, 72, 18, 1.8, 0),
          (430, -35, 78, 24, 1.8, 0), (480, -55, 82, 25, 1.8, 0), (530, -60, 85, 22, 2.0, 10),
          (580, -75, 88, 12, 2.0, 20), (605, -85, 88, 0)),
    _cell("Gme", "Gme", "muscle",
          (420, 28, 10, 0), (430, 30, 15, 12.2, 1.5, 70), (480, 20, 10, 19.1, 1.6, 80),
          (530, 10, 15, 20.9, 1.8, 60), (580, 0, 20, 12.2, 2.0, 60), (595, -5, 20, 0)),
    _cell("Gmi", "Gmi", "muscle",
          (425, 22, -15, 0), (440, 18, -12, 11.7, 1.6, 110), (480, 0, -10, 18.2, 1.8, 100),
          (530, -8, 0, 15.6, 2.2, 65), (560, -12, 5, 0)),
    # --- unlabelled muscles -----------------------------------------------------------
    _cell("iliopsoas", None, "muscle",
          (370, -18, -12, 0), (395, -35, -35, 16, 1.2, 45), (430, -55, -45, 18, 1.3, 0),
          (480, -65, -35, 18, 1.4, 30), (530, -55, -30, 18, 1.8, 60), (580, -55, -15, 15),
          (600, -60, -10, 0)),
    _cell("iliopsoas", None, "muscle",
          (470, -92, -25, 0), (480, -95, -20, 13), (530, -100, -10, 15), (580, -100, -5, 17),
          (640, -100, 0, 19)),
    _cell("obturator_externus", None, "muscle",
          (390, -70, 12, 0), (405, -72, 12, 10, 1.6, 0), (425, -80, 10, 9), (440, -85, 8, 0)),
    _cell("obturator_internus", None, "muscle",
          (405, -95, 15, 0), (430, -95, 15, 9, 2.0, 90), (470, -90, 25, 8, 2.0, 90),
          (495, -88, 30, 0)),
    _cell("quadratus_femoris", None, "muscle",
          (380, -28, 32, 0), (395, -28, 32, 10, 1.6, 0), (415, -30, 30, 8), (425, -30, 30, 0)),
    _cell("piriformis_gemelli", None, "muscle",
          (420, -25, 35, 0), (440, -25, 35, 8, 2.0, 0), (470, -40, 48, 11, 2.0, -20),
          (500, -65, 58, 12, 2.0, -20), (530, -85, 60, 9), (545, -90, 60, 0)),
    _cell("gastrocnemius", None, "muscle",
          (-40, -24, 45, 20), (0, -24, 42, 16), (30, -22, 38, 9), (50, -20, 36, 0)),
    _cell("gastrocnemius_lateral", None, "muscle",
          (-40, 20, 42, 17), (0, 22, 38, 13), (30, 22, 35, 7), (45, 22, 34, 0)),
    _cell("popliteus", None, "muscle",
          (-40, 0, 26, 11, 1.8, 0), (-15, 0, 25, 6), (-5, 0, 24, 0)),
    _cell("erector_spinae", None, "muscle",
          (490, -120, 96, 0), (520, -118, 95, 9, 1.6, 0), (560, -112, 95, 14, 1.4, 20),
          (600, -110, 92, 20, 1.2, 90), (640, -110, 88, 24, 1.2, 90)),
    _cell("quadratus_lumborum", None, "muscle",
          (585, -80, 55, 0), (610, -80, 52, 12), (640, -78, 48, 14)),
    _cell("abdominal_wall", None, "muscle",
          (540, 25, -30, 0), (580, 15, -25, 14, 2.5, 100), (640, -5, -20, 14, 2.8, 100)),
    _cell("abdominal_wall", None, "muscle",
          (540, -40, -85, 0), (580, -45, -88, 8, 3.0, 20), (640, -50, -92, 9, 3.0, 20)),
    _cell("rectus_abdominis", None, "muscle",
          (430, -122, -72, 0), (470, -122, -85, 8, 1.8, 0), (580, -118, -100, 10, 2.2, 0),
          (640, -118, -100, 11, 2.2, 0)),
    # --- fat compartments ---------------------------------------------------------------
    _cell("knee_fat", None, "fat",
          (-40, -36, -18, 10), (0, -40, -10, 13), (40, -40, -8, 10), (70, -36, -5, 0)),
    _cell("knee_fat", None, "fat",
          (-40, 36, -15, 10), (0, 40, -8, 12), (40, 40, -10, 8), (60, 36, -8, 0)),
    _cell("popliteal_fat", None, "fat",
          (-40, 2, 36, 10), (0, 0, 44, 14), (60, 2, 42, 14), (110, 5, 36, 9), (150, 5, 32, 0)),
    _cell("infrapatellar_fat", None, "fat",
          (-40, 0, -30, 12, 1.6, 0), (-10, 0, -32, 14, 1.6, 0), (15, 0, -30, 6),
          (25, 0, -30, 0)),
    _cell("suprapatellar_fat", None, "fat",
          (45, 0, -32, 0), (60, 0, -32, 8, 1.8, 0), (85, 0, -32, 5), (100, 0, -32, 0)),
    _cell("femoral_sheath_fat", None, "fat",
          (130, -18, 18, 0), (170, -32, 2, 5), (240, -40, -12, 5.5), (310, -45, -32, 6),
          (360, -45, -45, 7), (395, -55, -55, 8), (430, -77, -56, 8), (480, -95, -44, 7),
          (530, -106, -36, 5), (560, -112, -30, 0)),
    _cell("sciatic_fat", None, "fat",
          (130, 8, 36, 0), (170, 6, 38, 4), (240, 4, 40, 4), (310, 0, 42, 4.5),
          (360, -12, 42, 5), (395, -28, 45, 5), (430, -40, 42, 5), (470, -60, 52, 5),
          (490, -70, 55, 0)),
    _cell("ischioanal_fat", None, "fat",
          (375, -100, 55, 0), (395, -100, 55, 15), (430, -105, 55, 18), (470, -110, 55, 15),
          (490, -112, 55, 0)),
    _cell("perineal_fat", None, "fat",
          (370, -120, 30, 0), (390, -122, 25, 12), (410, -122, 20, 15), (430, -122, 10, 0)),
    _cell("mons_fat", None, "fat",
          (420, -120, -70, 0), (440, -125, -70, 12), (480, -125, -85, 12), (500, -125, -90, 0)),
    _cell("sacral_fat", None, "fat",
          (450, -128, 95, 0), (470, -128, 95, 10), (500, -128, 100, 8), (530, -128, 106, 0)),
    # --- pelvic and abdominal contents ----------------------------------------------------
    _cell("viscera", None, "viscera",
          (420, -125, 0, 0), (440, -120, 0, 22), (480, -110, 10, 30), (530, -100, 15, 32),
          (580, -95, 10, 35), (640, -95, 5, 35)),
    _cell("viscera", None, "viscera",
          (510, -70, -50, 0), (560, -70, -55, 25), (640, -70, -45, 30)),
)

# Paths of vessels and nerves: rows (h, a, p) in the same coordinates; radius in mm.
FEMORAL_ARTERY = (
    (-40, 0, 36), (0, 0, 36), (60, -2, 34), (110, -12, 24), (150, -25, 10), (200, -36, -4),
    (260, -42, -16), (320, -44, -32), (370, -46, -48), (410, -60, -56), (450, -80, -50),
    (500, -100, -40), (560, -112, -30), (640, -118, -15),
)
# The femoral vein runs beside the artery: behind it in the adductor canal and popliteal
# fossa, medial to it in the femoral triangle. Rows (h, da, dp) relative to the artery.
FEMORAL_VEIN_OFFSET = ((-40, 0, 7), (120, 0, 7), (200, -3, 7), (300, -6, 5), (380, -9, 2),
                       (640, -9, 2))
PROFUNDA_ARTERY = ((195, -20, 14), (260, -28, 8), (320, -33, -2), (370, -42, -22),
                   (395, -48, -38))
SCIATIC_NERVE = (
    (130, 8, 34), (170, 6, 38), (240, 4, 40), (310, 0, 42), (360, -12, 42), (395, -28, 45),
    (430, -40, 42), (470, -60, 52), (500, -75, 58),
)
TIBIAL_NERVE = ((-40, 2, 44), (60, 4, 40), (130, 8, 34))
PERONEAL_NERVE = ((-40, 32, 32), (40, 25, 38), (130, 8, 34))
# Great saphenous vein, in the subcutaneous fat: rows (h, angle_deg) of its direction from the
# thigh centre (0 lateral, 90 posterior, 180 medial); it dives to the femoral vein at h 400.
GREAT_SAPHENOUS = ((-40, 150), (100, 160), (250, 180), (350, 205), (400, 220))

# Body between the legs from the perineum up (nominal mm in the midline frame): rows
# (h, centre p, half width, half depth) of an ellipse that joins the two sides; pelvic fat
# fills what the legs' structures and the pelvic organs leave free.
TRUNK = ((375, 35, 0, 0), (390, 28, 35, 55), (410, 15, 60, 80), (430, 5, 80, 95),
         (470, 0, 95, 105), (530, -5, 110, 110), (600, 0, 120, 110), (640, 0, 120, 110))

# Bladder (midline frame: centre (a, p, h), semi-axes) at its nominal filling.
BLADDER = ((0.0, -30.0, 465.0), (42.0, 32.0, 35.0))

# Subcutaneous fat thickness relative to mid-thigh, by level (h, factor): thin at the knee,
# thick over the buttocks and lower abdomen.
SUBCUTANEOUS_PROFILE = ((-40, 0.55), (40, 0.6), (120, 0.85), (250, 1.0), (380, 1.15),
                        (450, 1.3), (550, 1.2), (640, 1.2))
