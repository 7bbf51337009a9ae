"""The phantom's lower leg, knee to ankle: the truth a calf segmentation model is tested on.

Every calf muscle on both sides at its own levels (and nowhere else), continuous across the
knee with the thigh's truth, cross-sectional areas and bone sizes in published ranges,
left/right mirror consistency, the deep and superficial vessels, the crural fascia, the
intermuscular septa and the interosseous membrane, the calf region's extent and the
infiltration patterns of the diseases that start in the calf.
"""

from __future__ import annotations

import anatomy_helpers as slices
import numpy as np
import pytest
from scipy import ndimage

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from inference.phantom import atlas, bones, calf_layout
from inference.phantom.anatomy import (
    PhantomVolumes,
    make_subject,
    region_z_range_mm,
    render,
)
from inference.phantom.infiltration import ATROPHY
from inference.phantom.leg import muscle_structures
from inference.phantom.section import SectionRenderer

TABLE = load_muscles()
CALF = calf_layout.CALF_CODES
# Largest cross-sectional area of the nominal young adult, cm^2, and its level: soleus,
# medial and lateral gastrocnemius from Fukunaga et al. 1992 (PCSA 230, 68, 28 cm^2 = 8, 4
# and 3 times the largest anatomical CSA); the others from Handsfield et al. 2014 volumes
# over the muscle's length (docs/phantom-anatomy.md).
PEAK_CM2 = {"SOL": (28.8, -170.0), "MG": (17.0, -80.0), "LG": (9.3, -75.0),
            "TA": (7.5, -120.0), "PL": (5.9, -110.0), "TP": (5.7, -150.0)}
AREA_SPREAD = (0.3, 2.4)  # small old women .. large young men (as for the thigh)
# Mid-shaft diameters (circle of equal area), mm: an adult tibia is about 22 x 28 mm, the
# fibula about 13 x 14 mm.
TIBIA_MM, FIBULA_MM = (19.0, 34.0), (9.0, 20.0)


def calf_grid(subject, pixel: float = 2.0, n: int = 230, step: float = 10.0) -> VolumeGeometry:
    """Axial slices ``step`` mm apart over the subject's calf region, both legs."""
    lo, hi = region_z_range_mm(subject, "calf")
    n_slices = int((hi - lo) // step) + 1
    origin = (subject.offset_mm[0] - (n - 1) / 2 * pixel, subject.offset_mm[1] + 30.0
              - (n - 1) / 2 * pixel, lo)
    return VolumeGeometry((n_slices, n, n), (step, pixel, pixel), origin, (1, 0, 0),
                          (0, 1, 0), (0, 0, 1))


def leg_slice(subject, h: float, side: int = 0, pixel: float = 1.0, n: int = 170,
              centre: tuple[float, float] = (8.0, 25.0)) -> PhantomVolumes:
    """One axial slice around one calf at nominal height ``h`` (leg coordinates ``centre``)."""
    return slices.leg_slice(subject, h, side, pixel, n, centre)[0]


def label(code: str, side: str = "right") -> int:
    return TABLE.label_of(code, side)


def area_cm2(volumes: PhantomVolumes, code: str, pixel: float, side: str = "right") -> float:
    return float((volumes.labels[0] == label(code, side)).sum()) * pixel * pixel / 100.0


@pytest.fixture(scope="module")
def subject():
    return make_subject(12, "low")


@pytest.fixture(scope="module")
def calf_volumes(subject):
    grid = calf_grid(subject)
    volumes = render(subject, grid)
    heights = np.array([subject.h_at(z) for z in grid.slice_positions()[:, 2]])
    present = {}
    for value in np.unique(volumes.labels):
        if value > 0:
            present[int(value)] = heights[np.any(volumes.labels == value, axis=(1, 2))]
    return volumes, heights, present


def test_every_calf_muscle_on_both_sides_and_no_thigh_muscle_below_the_knee(calf_volumes):
    _, _, present = calf_volumes
    for code in CALF:
        for side in ("right", "left"):
            assert label(code, side) in present, (code, side)
    for value, levels in present.items():
        muscle, _ = TABLE.decode(value)
        if muscle.region == "thigh":
            assert levels.min() > -60.0, muscle.code  # only the thigh's ends at the knee


def test_calf_muscles_at_their_anatomical_levels(calf_volumes):
    _, _, present = calf_volumes
    for side in ("right", "left"):
        levels = {code: present[label(code, side)] for code in CALF}
        assert levels["POP"].min() > -100.0  # popliteus: just below the knee only
        for code in ("MG", "LG"):  # the gastrocnemius bellies end at about mid-calf
            assert levels[code].min() > -260.0 and levels[code].max() > 20.0, code
        assert levels["LG"].min() > levels["MG"].min()  # the lateral head ends higher
        assert levels["SOL"].min() < -300.0 and levels["SOL"].max() < -20.0  # soleus runs lower
        for code in ("EHL", "PB", "FHL"):  # from the middle third down to the ankle
            assert levels[code].max() < -120.0 and levels[code].min() < -330.0, code
        for code in ("TA", "EDL", "PL"):  # from the knee
            assert levels[code].max() > -60.0, code
        for code in ("TP", "FDL"):
            assert levels[code].max() < -40.0, code
        not_mid_calf = [c for c in CALF if np.any(np.abs(levels[c] + 200.0) < 10.0)]
        assert "POP" not in not_mid_calf and {"SOL", "TA", "TP", "FDL"} <= set(not_mid_calf)


def test_gastrocnemius_and_popliteus_continue_across_the_knee(subject):
    pixel, n = 2.0, 120
    leg = SectionRenderer(subject).legs[0]
    x, y = leg.to_global(0.0, 30.0, 0.0)
    lo, hi = subject.z_at(-60.0), subject.z_at(40.0)
    n_slices = int((hi - lo) // 2.0) + 1
    grid = VolumeGeometry((n_slices, n, n), (2.0, pixel, pixel),
                          (x - (n - 1) / 2 * pixel, y - (n - 1) / 2 * pixel, lo),
                          (1, 0, 0), (0, 1, 0), (0, 0, 1))
    labels = render(subject, grid).labels
    heights = np.array([subject.h_at(z) for z in grid.slice_positions()[:, 2]])
    for code, top in (("MG", 30.0), ("LG", 25.0), ("POP", 0.0)):
        counts = (labels == label(code)).sum(axis=(1, 2)).astype(float)
        span = (heights > -50.0) & (heights < top)
        assert (counts[span] > 0).all(), code  # no gap at the thigh atlas's lower end
        # no jump from one 2 mm slice to the next, relative to the muscle's largest section
        steps = np.abs(np.diff(counts[span])) / counts[span].max()
        assert steps.max() < 0.25, (code, steps.max())


def test_calf_areas_at_their_largest_in_published_ranges():
    for seed in (0, 5, 9):
        subject = make_subject(seed, "low")
        for code, (nominal, h) in PEAK_CM2.items():
            area = area_cm2(leg_slice(subject, h), code, 1.0)
            assert AREA_SPREAD[0] * nominal <= area <= AREA_SPREAD[1] * nominal, (seed, code)
        # The soleus is the largest calf muscle at mid-calf, the gastrocnemii above it.
        mid, high = leg_slice(subject, -200.0), leg_slice(subject, -70.0)
        assert max(CALF, key=lambda c: area_cm2(mid, c, 1.0)) == "SOL"
        assert max(CALF, key=lambda c: area_cm2(high, c, 1.0)) in ("MG", "SOL")


def test_tibia_and_fibula_sizes_cortex_and_marrow(subject):
    leg = SectionRenderer(subject).legs[0]
    h, pixel = -200.0, 0.25
    for bone, limits in ((bones.TIBIA, TIBIA_MM), (bones.FIBULA, FIBULA_MM)):
        ca, cp, sa, sp = bone.primitives[0].section(h)
        volumes = leg_slice(subject, h, pixel=pixel, n=200,
                            centre=(ca / leg.bulk, cp / leg.bulk))
        total = (volumes.water + volumes.fat)[0]
        filled, _ = ndimage.label(ndimage.binary_fill_holes(total < 0.05))
        region = filled == filled[100, 100]
        diameter = 2 * np.sqrt(region.sum() * pixel * pixel / np.pi)
        assert limits[0] <= diameter <= limits[1], (bone.name, diameter)
        assert abs(diameter - 2 * np.sqrt(sa * sp) * leg.bone_scale) < 3.0, bone.name
        marrow = region & (total > 0.5)
        assert (volumes.fat[0][marrow] / total[marrow]).mean() > 0.8  # fatty marrow
        assert not (volumes.labels[0][region] > 0).any()


def test_left_and_right_calves_mirror_each_other():
    subject = make_subject(7, "low")
    legs = SectionRenderer(subject).legs
    areas = []
    for side, name in ((0, "right"), (1, "left")):
        volumes = leg_slice(subject, -120.0, side=side, pixel=1.5, n=110)
        areas.append({c: area_cm2(volumes, c, 1.5, name) for c in CALF})
    assert legs[0].sigma == -legs[1].sigma
    for code in CALF:
        right, left = areas[0][code], areas[1][code]
        if max(right, left) < 1.0:
            continue
        # The sides differ by their drawn sizes (leg and muscle), and each leg has its own
        # position jitter and rotation: small muscles vary more.
        size = [np.mean([subject.cell_jitter[side, i, 2] for i, c in enumerate(atlas.CELLS)
                         if c.code == code]) * legs[side].scale for side in (0, 1)]
        ratio = (left / right) / (size[1] / size[0]) ** 2
        limits = (0.65, 1.5) if max(right, left) > 4.0 else (0.35, 2.8)
        assert limits[0] <= ratio <= limits[1], (code, right, left)


def test_calf_vessels_deep_and_superficial(subject):
    volumes = leg_slice(subject, -200.0, pixel=0.5, n=300)
    water, fat = volumes.water[0], volumes.fat[0]
    inside = slices.deep_region(volumes.labels[0], 0.5)
    body = ndimage.binary_fill_holes((water + fat) > 0.5)
    blood = (water > 0.86) & (fat < 0.05)
    n_deep = ndimage.label(blood & inside)[1]
    n_superficial = ndimage.label(blood & body & ~inside)[1]
    assert n_deep >= 3  # anterior and posterior tibial, peroneal vessels
    assert n_superficial >= 2  # great and small saphenous veins
    assert not (volumes.labels[0][blood] > 0).any()


def test_crural_fascia_septa_and_interosseous_membrane(subject):
    pixel = 0.4
    leg = SectionRenderer(subject).legs[0]
    volumes = leg_slice(subject, -150.0, pixel=pixel, n=340)
    labels, total = volumes.labels[0], (volumes.water + volumes.fat)[0]
    dark = total < 0.45
    reach = round(1.6 / pixel)

    def zone(codes_a, codes_b):
        near = [ndimage.binary_dilation(np.isin(labels, [label(c) for c in codes]),
                                        iterations=reach) for codes in (codes_a, codes_b)]
        return near[0] & near[1] & (labels == 0)

    # Anterior | lateral compartment (anterior intermuscular septum) and superficial | deep
    # posterior (transverse septum) carry a fascia line; two muscles of one compartment don't.
    for between in (zone(("EDL",), ("PL",)), zone(("SOL",), ("TP", "FDL", "FHL"))):
        assert between.sum() > 30 and dark[between].mean() > 0.15
    within = zone(("MG",), ("SOL",))
    assert within.sum() > 30 and dark[within].mean() < 0.1
    # The interosseous membrane: a dark line between the tibia and the fibula.
    centre = np.array([(labels.shape[1] - 1) / 2, (labels.shape[0] - 1) / 2])
    points = []
    for bone in (bones.TIBIA, bones.FIBULA):
        ca, cp, _, _ = bone.primitives[0].section(-150.0)
        x, y = leg.to_global(ca / leg.bulk, cp / leg.bulk, -150.0)
        cx, cy = leg.to_global(8.0, 25.0, -150.0)
        points.append(centre + np.array([x - cx, y - cy]) / pixel)
    samples = [points[0] + t * (points[1] - points[0]) for t in np.linspace(0.4, 0.6, 9)]
    across = [dark[round(p[1]) - 5:round(p[1]) + 6, round(p[0]) - 5:round(p[0]) + 6].any()
              for p in samples]
    assert all(across)
    # Crural fascia: a low-signal line just outside the muscles all round.
    inside = slices.muscle_mass(volumes.water[0])
    edge = inside & ~ndimage.binary_erosion(inside)
    ring = ndimage.binary_dilation(edge, iterations=round(2.0 / pixel)) & ~inside
    near_dark = ndimage.binary_dilation(dark & ring, iterations=round(1.0 / pixel))
    jj, ii = np.nonzero(edge)
    angles = np.arctan2(jj - jj.mean(), ii - ii.mean())
    found = [near_dark[jj[sector], ii[sector]].any()
             for sector in (np.abs(np.angle(np.exp(1j * (angles - phi)))) < np.pi / 36
                            for phi in np.linspace(-np.pi, np.pi, 36, endpoint=False))]
    assert np.mean(found) > 0.8


def test_calf_region_runs_from_the_ankle_to_just_above_the_knee(subject):
    low, high = region_z_range_mm(subject, "calf")
    thigh_low, thigh_high = region_z_range_mm(subject, "thigh")
    assert (thigh_low, thigh_high) == subject.z_range_mm
    assert low == pytest.approx(calf_layout.CALF_BOTTOM_H * subject.length_scale
                                * subject.calf_ratio)
    assert 0.0 < high < thigh_high and low < -300.0 and thigh_low < high
    with pytest.raises(ValueError):
        region_z_range_mm(subject, "foot")
    # Below the sole there is nothing; at the region's lower end, tibia and fibula (malleoli).
    grid = calf_grid(subject, pixel=2.0, n=160, step=1.0)
    for h, body in ((calf_layout.SOLE_H - 10.0, False), (calf_layout.CALF_BOTTOM_H, True)):
        z = subject.z_at(h)
        one = VolumeGeometry((1, 160, 160), (1.0, 2.0, 2.0), (*grid.origin[:2], z),
                             (1, 0, 0), (0, 1, 0), (0, 0, 1))
        volumes = render(subject, one)
        assert (volumes.water + volumes.fat).max() > 0.5 if body else (
            volumes.water.max() == 0 and volumes.fat.max() == 0)


def _subject_with(pattern: str) -> object:
    """The first high-infiltration subject with ``pattern`` before the end stage (when most
    muscles are replaced the pattern fades)."""
    for seed in range(300):
        subject = make_subject(seed, "high")
        if subject.disease == pattern and subject.stage <= 0.75:
            return subject
    raise AssertionError(f"no subject with {pattern} among 300 seeds")


def _calf_ff(subject, pixel: float = 2.5) -> dict[str, float]:
    """Mean FF of every calf muscle over both legs at three levels."""
    n = round(450 / pixel)
    grid = calf_grid(subject, pixel=pixel, n=n, step=1.0)
    sums: dict[str, list[float]] = {code: [] for code in CALF}
    for h in (-100.0, -170.0, -240.0):
        one = VolumeGeometry((1, n, n), (1.0, pixel, pixel), (*grid.origin[:2], subject.z_at(h)),
                             (1, 0, 0), (0, 1, 0), (0, 0, 1))
        volumes = render(subject, one)
        total = volumes.water + volumes.fat
        ff = np.divide(volumes.fat, total, out=np.zeros_like(total), where=total > 0)
        for code in CALF:
            for side in ("right", "left"):
                sums[code] += ff[volumes.labels == label(code, side)].tolist()
    return {code: float(np.mean(values)) for code, values in sums.items() if values}


def _mean(ff: dict[str, float], codes: tuple[str, ...]) -> float:
    return float(np.mean([ff[c] for c in codes]))


@pytest.mark.parametrize("pattern", ["dysferlinopathy", "posterior"])
def test_posterior_calf_patterns_hit_medial_gastrocnemius_and_soleus(pattern):
    ff = _calf_ff(_subject_with(pattern))
    assert _mean(ff, ("MG", "SOL")) > _mean(ff, ("TA", "EDL", "TP")) + 0.08, ff


def test_fshd_hits_tibialis_anterior_and_spares_the_peroneal_muscles():
    ff = _calf_ff(_subject_with("fshd"))
    assert ff["TA"] > _mean(ff, ("PL", "PB", "TP")) + 0.08, ff
    assert ff["MG"] > ff["LG"], ff


def test_becker_calf_is_posterior_and_keeps_its_size():
    subject = _subject_with("becker")
    ff = _calf_ff(subject)
    assert _mean(ff, ("MG", "SOL")) > ff["TP"] + 0.05, ff
    names = [name for name, _ in muscle_structures()]
    calf_rows = [names.index(c) for c in CALF]
    assert (subject.fat_params[:, calf_rows, ATROPHY] == 0).all()
    thigh_rows = [names.index(c) for c in ("AM", "Gma")]
    assert (subject.fat_params[:, thigh_rows, ATROPHY] > 0).any()


def test_healthy_calf_muscles_have_low_ff():
    subject = next(s for s in (make_subject(seed, "low") for seed in range(50))
                   if s.disease == "healthy")
    ff = _calf_ff(subject, pixel=1.2)  # fine pixels: little septum fat in the small muscles
    assert len(ff) == len(CALF) - 1  # all but popliteus at these levels
    assert all(0.015 <= v <= 0.15 for v in ff.values()), ff


def test_calf_atlas_codes_match_the_muscle_table():
    calf_codes = {m.code for m in TABLE.for_region("calf").muscles}
    assert set(CALF) == calf_codes
    assert {c.code for c in atlas.CELLS if c.code} == {m.code for m in TABLE.muscles}
