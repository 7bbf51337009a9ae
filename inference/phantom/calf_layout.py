"""The phantom's calf atlas: every lower-leg structure, knee to ankle, level by level.

The same model as the thigh atlas (``layout.py``): seed ellipses per structure whose centre,
size and shape vary smoothly along the leg, split by a weighted Voronoi partition inside the
crural fascia. The gastrocnemius heads (MG, LG) and popliteus (POP) start above the knee joint
line, where the thigh atlas stops, so one truth runs across the knee.

Coordinates are those of ``layout.py`` (nominal adult RIGHT leg, mm; ``h`` height above the knee
joint line, ``a`` lateral, ``p`` posterior); below the knee the leg frame follows the tibia, whose
shaft centre sits at about ``(a, p) = (-3, 7)``. The ankle joint is at ``h = -390`` for a leg
of nominal length (knee joint line to ankle joint 390 mm) and the sole at ``h = -470``.

Muscle levels follow standard anatomy (Gray's Anatomy; origins and insertions): popliteus only
just below the knee, the gastrocnemius bellies ending at about mid-calf (lateral head higher
than the medial), soleus from the fibular head to the distal third, tibialis anterior, extensor
digitorum longus and peroneus longus from the knee, extensor hallucis longus, peroneus brevis
and flexor hallucis longus from the middle third down to the ankle. Sizes: see
``docs/phantom.md`` (Anatomy). The four compartments (anterior, lateral, superficial and deep
posterior) are separated by the intermuscular septa, the transverse septum and the
interosseous membrane.
"""

from __future__ import annotations

from inference.phantom.cells import Cell, cell

# The 12 labelled calf muscles in label order (config/muscles.yaml, region calf).
CALF_CODES = ("TA", "EDL", "EHL", "PL", "PB", "TP", "FDL", "FHL", "SOL", "MG", "LG", "POP")

SOLE_H = -470.0  # below this there is no anatomy
FOOT_TOP_H = -380.0  # the foot's structures start here
CALF_TOP_H = 40.0  # a calf station reaches just above the knee joint line
CALF_BOTTOM_H = -420.0  # ... and down to the malleoli

_ANT, _LAT, _DEEP, _SUP = "anterior_leg", "lateral_leg", "deep_posterior", "superficial_posterior"

CALF_CELLS: tuple[Cell, ...] = (
    # --- superficial posterior compartment --------------------------------------------------
    cell("MG", "MG", "muscle",
         (50, -20, 36, 0), (30, -22, 40, 4.6), (0, -24, 44, 12.2, 1.1, 60),
         (-40, -30, 41, 21.1, 1.25, 45), (-90, -27, 49, 26.6, 1.35, 40),
         (-140, -24, 55, 22.1, 1.45, 38), (-190, -19, 61, 9.8, 1.6, 30), (-225, -14, 63, 0),
         compartment=_SUP),
    cell("LG", "LG", "muscle",
         (45, 22, 34, 0), (30, 22, 36, 7.2), (0, 22, 40, 12.5, 1.1, 120),
         (-40, 28, 38, 19.7, 1.25, 135), (-90, 30, 48, 22.5, 1.35, 145),
         (-140, 31, 54, 17.8, 1.45, 150), (-185, 30, 58, 0), compartment=_SUP),
    cell("SOL", "SOL", "muscle",
         (-35, 26, 31, 0), (-60, 22, 36, 21.4, 1.6, 20), (-100, 14, 40, 32.6, 1.7, 10),
         (-150, 10, 42, 38.2, 1.8, 5), (-200, 8, 44, 34.4, 1.8, 0), (-250, 8, 45, 25.7, 1.8, 0),
         (-300, 8, 43, 12.5, 1.9, 0), (-345, 8, 41, 0), compartment=_SUP),
    # --- deep posterior compartment -----------------------------------------------------------
    cell("POP", "POP", "muscle",
         (15, 12, 32, 0), (0, 12, 34, 8.6, 1.6, -10), (-20, 6, 37, 17.5, 1.8, -10),
         (-40, 0, 39, 16.6, 2.0, -15), (-60, -6, 37, 18, 2.0, -20), (-80, -10, 33, 0),
         compartment=_DEEP),
    cell("TP", "TP", "muscle",
         (-45, 12, 27, 0), (-70, 12, 27, 24.1, 1.3, 10), (-120, 13, 27, 23, 1.3, 10),
         (-180, 12, 27, 19.8, 1.3, 10), (-240, 9, 27, 14.4, 1.3, 20), (-290, 4, 25, 5.5),
         (-325, 0, 23, 0), compartment=_DEEP),
    cell("FDL", "FDL", "muscle",
         (-85, -8, 25, 0), (-120, -8, 26, 7.9, 1.3, 30), (-180, -8, 26, 9, 1.3, 30),
         (-240, -8, 26, 8.1, 1.3, 30), (-300, -8, 25, 3.7), (-345, -9, 24, 0), compartment=_DEEP),
    cell("FHL", "FHL", "muscle",
         (-140, 26, 36, 0), (-180, 26, 36, 24.9, 1.2, 10), (-240, 24, 36, 25.4, 1.2, 10),
         (-300, 20, 34, 10.5, 1.2, 10), (-350, 16, 32, 5.9), (-385, 12, 30, 0), compartment=_DEEP),
    # --- anterior compartment -----------------------------------------------------------------
    cell("TA", "TA", "muscle",
         (-20, 16, -14, 0), (-40, 18, -14, 13.7, 1.2, 70), (-80, 18, -10, 15.9, 1.3, 70),
         (-130, 16, -8, 17.5, 1.3, 70), (-200, 14, -8, 14.2, 1.3, 70),
         (-250, 12, -10, 9.2, 1.3, 70), (-300, 10, -12, 0), compartment=_ANT),
    cell("EDL", "EDL", "muscle",
         (-25, 32, -4, 0), (-45, 34, -4, 6.6, 1.3, 80), (-90, 35, -2, 9.4, 1.4, 80),
         (-150, 34, 0, 10.2, 1.4, 85), (-220, 31, 2, 9.5, 1.4, 85), (-280, 28, 0, 6.5, 1.4, 80),
         (-340, 24, -4, 0), compartment=_ANT),
    cell("EHL", "EHL", "muscle",
         (-140, 24, 8, 0), (-180, 24, 8, 7.9, 1.3, 80), (-240, 22, 6, 10.2, 1.3, 80),
         (-300, 19, 2, 4.9, 1.3, 75), (-350, 16, -4, 3.8), (-375, 14, -8, 0), compartment=_ANT),
    # --- lateral compartment ------------------------------------------------------------------
    cell("PL", "PL", "muscle",
         (-25, 43, 12, 0), (-45, 45, 14, 10.5, 1.3, 100), (-90, 48, 18, 14.6, 1.4, 100),
         (-150, 48, 20, 13.7, 1.4, 100), (-210, 47, 20, 10.3, 1.4, 100), (-255, 46, 22, 0),
         compartment=_LAT),
    cell("PB", "PB", "muscle",
         (-150, 42, 28, 0), (-190, 43, 28, 11.5, 1.3, 100), (-250, 43, 28, 10.3, 1.3, 100),
         (-310, 42, 28, 8.5, 1.3, 100), (-350, 40, 30, 6.9), (-375, 38, 31, 0), compartment=_LAT),
    # --- the foot below the ankle (unlabelled; intrinsic muscles, tendons and fat) -----------
    cell("foot", None, "muscle",
         (-400, 8, -28, 16, 1.4, 90), (-420, 6, -50, 30, 1.5, 90), (-440, 4, -70, 42, 1.5, 90),
         (-458, 2, -80, 40, 1.6, 90), (FOOT_TOP_H, 8, -10, 0), (SOLE_H, 2, -80, 0),
         compartment="foot"),
    # --- fat ----------------------------------------------------------------------------------
    cell("kager_fat", None, "fat",
         (-270, 8, 53, 0), (-310, 8, 49, 9), (-360, 8, 45, 14, 1.3, 0), (-400, 8, 40, 14),
         (-430, 8, 38, 10), (-450, 8, 38, 0)),
    cell("heel_fat", None, "fat",
         (-420, 6, 44, 0), (-440, 6, 42, 16, 1.2, 90), (-458, 6, 28, 24, 1.6, 90), (SOLE_H, 6, 20,
         0)),
    cell("posterior_tibial_fat", None, "fat",
         (-60, 6, 38, 0), (-100, 2, 36, 4), (-200, -2, 34, 4), (-300, -8, 32, 4.5),
         (-380, -16, 28, 5), (-420, -20, 26, 0)),
    cell("anterior_tibial_fat", None, "fat",
         (-65, 20, 16, 0), (-100, 20, 14, 3), (-200, 19, 12, 3.5), (-300, 14, 8, 3.5),
         (-380, 6, -6, 3), (-420, 2, -14, 0)),
)

# Vessel and nerve paths below the thigh atlas, rows (h, a, p); ``vessels.py`` joins them to
# the thigh's paths at the knee. The popliteal artery divides at the lower border of
# popliteus: the anterior tibial artery passes forward above the interosseous membrane and
# runs down on it; the posterior tibial artery runs between the deep and superficial
# posterior compartments to behind the medial malleolus; the peroneal artery runs beside the
# fibula in flexor hallucis longus.
POSTERIOR_TIBIAL_ARTERY = ((-390, -20, 26), (-340, -14, 30), (-280, -9, 34), (-200, -4, 38),
                           (-130, 0, 40), (-80, 2, 40), (-55, 1, 38))
POSTERIOR_TIBIAL_VEIN_OFFSET = ((-400, -4, 3), (-80, 0, 5), (-55, 0, 7))
ANTERIOR_TIBIAL_ARTERY = ((-390, 4, -12), (-340, 9, 0), (-280, 14, 8), (-200, 18, 12),
                          (-120, 19, 14), (-85, 17, 17), (-70, 10, 32), (-65, 4, 38))
PERONEAL_ARTERY = ((-380, 22, 28), (-350, 22, 30), (-280, 22, 32), (-200, 22, 34),
                   (-130, 17, 37), (-90, 6, 39))
TIBIAL_NERVE = ((-390, -18, 30), (-300, -8, 38), (-200, -2, 42), (-100, 2, 44), (-55, 2, 44))
PERONEAL_NERVE = ((-390, 4, -14), (-280, 14, 6), (-200, 18, 10), (-100, 22, 12),
                  (-70, 36, 16), (-55, 40, 22))
# Superficial veins: rows (h, angle_deg) of their direction from the leg centre (0 lateral,
# 90 posterior, 180 medial). The great saphenous vein passes in front of the medial malleolus
# and up the medial calf; the small saphenous vein comes from behind the lateral malleolus up
# the back of the calf and dives between the gastrocnemius heads into the popliteal vein.
GREAT_SAPHENOUS = ((-420, 205), (-300, 188), (-150, 172), (-60, 155))
SMALL_SAPHENOUS = ((-420, 50), (-330, 68), (-200, 86), (-80, 92), (-10, 92))

# Subcutaneous fat thickness relative to mid-thigh, by level (h, factor): thinner over the
# calf than over the thigh, thinnest at the ankle.
SUBCUTANEOUS_PROFILE = ((SOLE_H, 0.5), (-400, 0.4), (-330, 0.5), (-200, 0.7), (-100, 0.7),
                        (-60, 0.6))
# The tibia's anteromedial face lies under the skin: subcutaneous fat there is this fraction
# of the level's thickness (direction, deg, of the face from the leg centre, and its spread).
TIBIAL_FACE = (-150.0, 35.0, 0.35)
