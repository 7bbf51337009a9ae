"""The phantom's thigh atlas: where every thigh structure sits, level by level.

A cross-section of one leg is a weighted Voronoi partition of the region inside the deep fascia:
each structure (a labelled muscle, an unlabelled muscle, a fat compartment, pelvic contents) has
one or more seed ellipses whose centre, size and shape vary smoothly along the leg. This module
holds the nominal table that the per-subject model jitters and interpolates; it is data, kept
apart from the rendering code so that anatomy can be corrected without touching the algorithm.
The lower leg is in ``calf_layout.py``; ``atlas.py`` joins the two.

Coordinates are those of a nominal adult RIGHT leg (the left leg is its mirror image), in mm:

* ``h``: height above the knee joint line (the femoral head centre is at ``h = 430``);
* ``a``: lateral distance from the femoral shaft axis (medial is negative; the body midline is
  at ``a = -133``);
* ``p``: posterior distance from the femoral shaft axis (anterior is negative).

Muscle levels follow standard cross-sectional anatomy (origins and insertions as in Gray's
Anatomy): gluteals and TFL only around the hip, pectineus and adductor brevis proximally, the
short head of biceps femoris in the distal half, vasti down to the patella, semimembranosus,
gracilis and sartorius down to the knee. Sizes and the level of each muscle's largest
cross-section follow the sources in ``docs/phantom.md`` (Anatomy). Compartments (anterior,
medial, posterior, each gluteal and hip muscle group) are separated by intermuscular septa.
"""

from __future__ import annotations

from inference.phantom.cells import Cell, cell

# The 18 labelled thigh muscles in label order (Huysmans 2023, Table 1; config/muscles.yaml).
MUSCLE_CODES = ("RF", "VL", "VM", "VI", "PC", "AB", "AL", "AM", "BFL", "BFB", "ST", "SM", "SR",
                "TFL", "GC", "Gma", "Gme", "Gmi")

# Range of the thigh (nominal h): from the tibial plateau to the lower abdomen.
H_BOTTOM = -40.0
H_TOP = 640.0
HIP_CENTRE = (-45.0, -8.0, 430.0)  # femoral head centre (a, p, h)
MIDLINE_A = -133.0  # body midline in leg coordinates
SHAFT_TOP_H = 390.0  # above this the leg frame no longer follows the femoral shaft
FEMUR_INCLINATION_DEG = 7.0  # anatomical shaft axis: knees nearer the midline than the hips
TABLE_Y = 110.0  # LPS y of the scanner table (the posterior skin rests on it), before offsets
TABLE_P_AT_HIP = 110.0  # posterior skin (scanner table) below the hip frame origin, nominal
BUTTOCK_FAT_MM = 16.0  # the nominal subject's subcutaneous fat over the buttock (in the above)


CELLS: tuple[Cell, ...] = (
    # --- quadriceps ---------------------------------------------------------------------
    cell("RF", "RF", "muscle",
         (70, 2, -42, 0), (100, 2, -44, 10.1, 1.5, 0), (170, 2, -48, 17, 1.3, 0),
         (240, 0, -53, 20.1, 1.3, 0), (310, -5, -56, 18, 1.25, 0), (360, -10, -58, 14.3, 1.2, 0),
         (400, -18, -58, 10.3, 1.2, 10), (440, -27, -54, 6.6, 1.2, 20), (470, -32, -48, 0),
         compartment="anterior"),
    cell("VL", "VL", "muscle",
         (65, 30, -14, 0), (110, 30, -18, 13.3, 1.35, 55), (170, 31, -20, 24, 1.35, 55),
         (240, 32, -22, 27.6, 1.35, 55), (310, 32, -20, 25.7, 1.35, 55),
         (360, 30, -18, 24.4, 1.35, 55), (400, 28, -14, 16.4, 1.35, 55),
         (440, 26, -8, 13.7, 1.35, 55), (455, 24, -5, 0), compartment="anterior"),
    cell("VL", "VL", "muscle",
         (90, 36, 5, 0), (130, 37, 5, 13.2, 1.35, 100), (170, 38, 6, 22.3, 1.35, 100),
         (240, 40, 8, 26.3, 1.35, 100), (310, 40, 8, 24.5, 1.35, 100), (360, 36, 8, 23, 1.35, 100),
         (400, 34, 6, 15.2, 1.35, 100), (430, 32, 4, 0.2, 1.35, 100), (445, 30, 3, 0),
         compartment="anterior"),
    cell("VM", "VM", "muscle",
         (25, -28, -18, 0), (50, -30, -20, 17.4, 1.3, -60), (110, -28, -20, 24.7, 1.2, -50),
         (170, -26, -24, 27.9, 1.15, -50), (240, -24, -27, 24.1, 1.2, -50),
         (310, -20, -27, 12.7, 1.3, -45), (360, -14, -24, 5.3), (390, -10, -20, 0),
         compartment="anterior"),
    cell("VI", "VI", "muscle",
         (75, 2, -28, 0), (110, 0, -27, 12.3, 1.5, 0), (170, 0, -25, 18.4, 1.5, 0),
         (240, 0, -24, 17.6, 1.5, 0), (310, 0, -24, 13.2, 1.5, 0), (360, -2, -24, 11.2, 1.5, 0),
         (395, -4, -22, 4.9, 1.5, 0), (405, -4, -22, 0), compartment="anterior"),
    cell("VI", "VI", "muscle",
         (95, 20, -14, 0), (130, 21, -14, 8.4, 1.5, 60), (170, 21, -12, 16.5, 1.5, 60),
         (240, 22, -10, 15.7, 1.5, 60), (310, 21, -9, 11.7, 1.5, 60), (360, 20, -7, 9.4, 1.5, 60),
         (390, 16, -5, 5.3, 1.5, 60), (400, 15, -5, 0), compartment="anterior"),
    cell("VI", "VI", "muscle",
         (120, 21, -10, 0), (170, 23, 5, 9.5, 1.5, 100), (240, 24, 6, 11.1, 1.5, 100),
         (310, 24, 6, 8.4, 1.5, 100), (360, 22, 5, 6.3, 1.5, 100), (385, 20, -2, 0),
         compartment="anterior"),
    cell("VI", "VI", "muscle",
         (100, -6, -24, 0), (140, -16, -19, 5.6, 1.5, 135), (240, -16, -18, 12.6, 1.5, 135),
         (310, -16, -18, 8.4, 1.5, 135), (370, -8, -20, 0), compartment="anterior"),
    # --- adductors ----------------------------------------------------------------------
    cell("PC", "PC", "muscle",
         (340, -28, -10, 0), (360, -38, -25, 11, 1.4, 30), (395, -58, -38, 13, 1.5, 20),
         (430, -85, -38, 9, 1.6, 20), (450, -95, -40, 0), compartment="medial"),
    cell("AB", "AB", "muscle",
         (270, -32, 10, 0), (310, -40, 5, 19.8, 1.3, 45), (360, -50, 0, 8.6, 1.3, 45),
         (395, -75, -8, 3.9, 1.4, 40), (415, -90, -12, 0), compartment="medial"),
    cell("AL", "AL", "muscle",
         (165, -32, 12, 0), (200, -38, 6, 18.6, 1.2, 60), (240, -45, -2, 19.3, 1.3, 60),
         (310, -58, -15, 18.4, 1.3, 45), (360, -68, -22, 9.6, 1.3, 35),
         (395, -88, -28, 6.8, 1.3, 30), (425, -110, -32, 0), compartment="medial"),
    cell("AM", "AM", "muscle",
         (80, -24, 24, 0), (110, -25, 22, 7.5), (170, -34, 22, 17.2), (240, -45, 25, 24.3),
         (310, -58, 25, 26.7), (360, -68, 22, 12), (395, -85, 18, 11.6), (410, -92, 15, 0),
         compartment="medial"),
    cell("AM", "AM", "muscle",
         (120, -22, 40, 0), (170, -22, 40, 10.6), (240, -25, 42, 19.5), (310, -32, 45, 21.8),
         (360, -42, 42, 11), (395, -55, 32, 8.8), (410, -60, 30, 0), compartment="medial"),
    cell("GC", "GC", "muscle",
         (-15, -36, 36, 0), (20, -40, 48, 6.6), (60, -44, 45, 7), (110, -50, 34, 8.7, 1.3, 110),
         (170, -58, 25, 10.4, 1.5, 100), (240, -68, 15, 11, 1.6, 100),
         (310, -82, 5, 11.1, 1.7, 100), (360, -95, -2, 10.3, 1.8, 100),
         (395, -112, -10, 14.3, 1.8, 100), (415, -120, -15, 0), margin=1.6, compartment="medial"),
    # --- hamstrings ---------------------------------------------------------------------
    cell("BFL", "BFL", "muscle",
         (10, 38, 30, 0), (60, 34, 40, 16.5), (110, 30, 42, 18.5), (170, 26, 46, 17.6),
         (240, 22, 48, 14.4), (310, 10, 52, 10), (360, -8, 55, 3.3), (395, -40, 58, 7),
         (405, -50, 55, 0), compartment="posterior"),
    cell("BFB", "BFB", "muscle",
         (25, 34, 24, 0), (60, 30, 28, 10.9), (110, 24, 26, 11.7), (170, 16, 27, 13.3),
         (240, 10, 28, 6.3), (260, 8, 26, 0), compartment="posterior"),
    cell("ST", "ST", "muscle",
         (35, -22, 50, 0), (60, -18, 57, 8.4), (110, -15, 58, 13.4), (170, -10, 60, 15.4),
         (240, -12, 60, 17.1), (310, -22, 62, 16.2), (335, -31, 57, 14.6), (360, -40, 54, 7.5), (395, -56, 52, 7.1),
         (405, -60, 50, 0), compartment="posterior"),
    cell("SM", "SM", "muscle",
         (0, -32, 38, 0), (20, -36, 35, 3.8), (60, -28, 42, 7.6), (110, -30, 45, 13.6),
         (170, -32, 50, 20.4), (240, -38, 52, 23.7), (310, -48, 52, 20.5), (360, -55, 50, 10.7),
         (395, -58, 55, 6.3), (405, -60, 52, 0), compartment="posterior"),
    # --- sartorius, TFL, gluteals ------------------------------------------------------
    cell("SR", "SR", "muscle",
         (-25, -40, 22, 0), (-5, -42, 22, 3.8, 1.5, 100), (20, -48, 25, 4.2, 1.5, 100),
         (60, -50, 22, 7.4, 1.6, 110), (110, -50, 10, 9.4, 1.6, 100),
         (170, -50, -5, 11.8, 1.7, 95), (240, -48, -20, 16.9, 1.7, 80),
         (310, -42, -45, 11.7, 1.7, 40), (360, -28, -62, 12.5, 1.7, 15),
         (395, -8, -70, 11.1, 1.7, 5), (430, 5, -70, 8.2, 1.6, 0), (480, 15, -72, 11.4),
         (510, 18, -74, 0), margin=1.6, compartment="sartorius"),
    cell("TFL", "TFL", "muscle",
         (320, 40, -26, 0), (360, 38, -32, 12.4, 1.3, 60), (395, 38, -38, 11.7, 1.4, 60),
         (430, 32, -48, 9.3, 1.4, 55), (480, 15, -62, 8.7, 1.4, 30), (525, 5, -68, 0),
         compartment="tfl"),
    cell("Gma", "Gma", "muscle",
         (320, 30, 35, 0), (360, 28, 38, 16.4, 1.5, 45), (395, 25, 45, 18.3, 1.4, 40),
         (430, 22, 58, 17.3, 1.5, 30), (480, 10, 60, 20.7, 1.5, 20), (530, -10, 62, 10.6, 1.5, 40),
         (560, -25, 65, 0), compartment="gluteal"),
    cell("Gma", "Gma", "muscle",
         (355, -15, 72, 0), (370, -20, 72, 5.1, 2.0, 0), (395, -25, 72, 18.3, 1.8, 0),
         (430, -35, 78, 19.1, 1.8, 0), (480, -55, 82, 23.1, 1.8, 0), (530, -60, 85, 19.8, 2.0, 10),
         (580, -75, 88, 10.5, 2.0, 20), (605, -85, 88, 0), compartment="gluteal"),
    cell("Gme", "Gme", "muscle",
         (420, 28, 10, 0), (430, 30, 15, 14.9, 1.5, 70), (480, 20, 10, 19.5, 1.6, 80),
         (530, 10, 15, 26.9, 1.8, 60), (580, 0, 20, 9.5, 2.0, 60), (595, -5, 20, 0),
         compartment="gluteal"),
    cell("Gmi", "Gmi", "muscle",
         (425, 22, -15, 0), (440, 18, -12, 11.1, 1.6, 110), (480, 0, -10, 10.4, 1.8, 100),
         (530, -8, 0, 12.4, 2.2, 65), (560, -12, 5, 0), compartment="gluteal"),
    # --- unlabelled muscles -----------------------------------------------------------
    cell("iliopsoas", None, "muscle",
         (370, -18, -12, 0), (395, -35, -35, 16, 1.2, 45), (430, -55, -45, 18, 1.3, 0),
         (480, -65, -35, 18, 1.4, 30), (530, -55, -30, 18, 1.8, 60), (580, -55, -15, 15),
         (600, -60, -10, 0), compartment="iliopsoas"),
    cell("iliopsoas", None, "muscle",
         (470, -92, -25, 0), (480, -95, -20, 13), (530, -100, -10, 15), (580, -100, -5, 17),
         (640, -100, 0, 19), compartment="iliopsoas"),
    cell("obturator_externus", None, "muscle",
         (390, -70, 12, 0), (405, -72, 12, 10, 1.6, 0), (425, -80, 10, 9), (440, -85, 8, 0),
         compartment="medial"),
    cell("obturator_internus", None, "muscle",
         (405, -95, 15, 0), (430, -95, 15, 9, 2.0, 90), (470, -90, 25, 8, 2.0, 90),
         (495, -88, 30, 0), compartment="gluteal"),
    cell("quadratus_femoris", None, "muscle",
         (380, -28, 32, 0), (395, -28, 32, 10, 1.6, 0), (415, -30, 30, 8), (425, -30, 30, 0),
         compartment="gluteal"),
    cell("piriformis_gemelli", None, "muscle",
         (420, -25, 35, 0), (440, -25, 35, 8, 2.0, 0), (470, -40, 48, 11, 2.0, -20),
         (500, -65, 58, 12, 2.0, -20), (530, -85, 60, 9), (545, -90, 60, 0), compartment="gluteal"),
    cell("erector_spinae", None, "muscle",
         (490, -120, 96, 0), (520, -118, 95, 9, 1.6, 0), (560, -112, 95, 14, 1.4, 20),
         (600, -110, 92, 20, 1.2, 90), (640, -110, 88, 24, 1.2, 90), compartment="trunk"),
    cell("quadratus_lumborum", None, "muscle",
         (585, -80, 55, 0), (610, -80, 52, 12), (640, -78, 48, 14), compartment="trunk"),
    cell("abdominal_wall", None, "muscle",
         (540, 25, -30, 0), (580, 15, -25, 14, 2.5, 100), (640, -5, -20, 14, 2.8, 100),
         compartment="trunk"),
    cell("abdominal_wall", None, "muscle",
         (540, -40, -85, 0), (580, -45, -88, 8, 3.0, 20), (640, -50, -92, 9, 3.0, 20),
         compartment="trunk"),
    cell("rectus_abdominis", None, "muscle",
         (430, -122, -72, 0), (470, -122, -85, 8, 1.8, 0), (580, -118, -100, 10, 2.2, 0),
         (640, -118, -100, 11, 2.2, 0), compartment="trunk"),
    # --- fat compartments ---------------------------------------------------------------
    cell("knee_fat", None, "fat",
         (-60, -34, -14, 0), (-40, -36, -18, 10), (0, -40, -10, 13), (40, -40, -8, 10),
         (70, -36, -5, 0)),
    cell("knee_fat", None, "fat",
         (-60, 34, -12, 0), (-40, 36, -15, 10), (0, 40, -8, 12), (40, 40, -10, 8), (60, 36, -8, 0)),
    cell("popliteal_fat", None, "fat",
         (-75, 2, 40, 0), (-40, 2, 38, 10), (0, 0, 44, 14), (60, 2, 42, 14), (110, 5, 36, 9),
         (150, 5, 32, 0)),
    cell("infrapatellar_fat", None, "fat",
         (-60, 0, -26, 0), (-40, 0, -30, 12, 1.6, 0), (-10, 0, -32, 14, 1.6, 0), (15, 0, -30, 6),
         (25, 0, -30, 0)),
    cell("suprapatellar_fat", None, "fat",
         (45, 0, -32, 0), (60, 0, -32, 8, 1.8, 0), (85, 0, -32, 5), (100, 0, -32, 0)),
    cell("femoral_sheath_fat", None, "fat",
         (130, -18, 18, 0), (170, -32, 2, 5), (240, -40, -12, 5.5), (310, -45, -32, 6),
         (360, -45, -45, 7), (395, -55, -55, 8), (430, -77, -56, 8), (480, -95, -44, 7),
         (530, -106, -36, 5), (560, -112, -30, 0)),
    cell("sciatic_fat", None, "fat",
         (130, 8, 36, 0), (170, 6, 38, 4), (240, 4, 40, 4), (310, 0, 42, 4.5), (360, -12, 42, 5),
         (395, -28, 45, 5), (430, -40, 42, 5), (470, -60, 52, 5), (490, -70, 55, 0)),
    cell("ischioanal_fat", None, "fat",
         (375, -100, 55, 0), (395, -100, 55, 15), (430, -105, 55, 18), (470, -110, 55, 15),
         (490, -112, 55, 0)),
    cell("perineal_fat", None, "fat",
         (370, -120, 30, 0), (390, -122, 25, 12), (410, -122, 20, 15), (430, -122, 10, 0)),
    cell("mons_fat", None, "fat",
         (420, -120, -70, 0), (440, -125, -70, 12), (480, -125, -85, 12), (500, -125, -90, 0)),
    cell("sacral_fat", None, "fat",
         (450, -128, 95, 0), (470, -128, 95, 10), (500, -128, 100, 8), (530, -128, 106, 0)),
    # --- pelvic and abdominal contents ----------------------------------------------------
    cell("viscera", None, "viscera",
         (420, -125, 0, 0), (440, -120, 0, 22), (480, -110, 10, 30), (530, -100, 15, 32),
         (580, -95, 10, 35), (640, -95, 5, 35)),
    cell("viscera", None, "viscera",
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
