"""The phantom's anatomy and signal model: truth that a segmentation model can be tested on.

Thigh anatomy (the calf has tests/test_calf_anatomy.py): every muscle at its levels on both
sides, cross-sectional areas and bone size in published ranges, left/right mirror
consistency, subcutaneous fat from lean to obese, vessels, fascia, intramuscular fat streaks
and texture; and the signal model on top.
"""

from __future__ import annotations

import dataclasses

import anatomy_helpers as slices
import numpy as np
import pytest
from scipy import ndimage

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from inference.dixon.echoes import phase_echo_time_ms
from inference.phantom import atlas, calf_layout, population
from inference.phantom.anatomy import PhantomVolumes, make_subject, render
from inference.phantom.layout import H_BOTTOM, MUSCLE_CODES
from inference.phantom.section import SectionRenderer
from inference.phantom.signals import (
    SIGNAL_SCALE,
    bias_field,
    dixon_magnitudes,
    echo_images,
)

FOV_MM = 460.8
FEMUR_HIP_H = 430.0  # nominal height of the femoral head centre above the knee joint line
MID_THIGH_H = 215.0
TABLE = load_muscles()
# Mid-thigh cross-sectional areas, cm^2, of the nominal young adult: Handsfield et al. 2014
# volumes spread over each muscle's length, largest where Rigakuryoho Kagaku 21(3) puts each
# muscle's maximum (docs/phantom-anatomy.md). A subject's expected area is this times its
# muscle scale squared and its per-muscle size factors (sex, height, BMI, age, scatter).
MID_THIGH_NOMINAL_CM2 = {"RF": 8.7, "VL": 27.7, "VM": 14.0, "VI": 12.0, "AM": 18.8, "SM": 9.1,
                         "ST": 7.5, "BFL": 7.2, "SR": 3.9, "GC": 3.1}
AREA_SPREAD = (0.3, 2.4)  # small old women .. large young men
AREA_TOLERANCE = (0.5, 1.7)  # rendered / expected: neighbours share the space differently
FEMUR_MID_SHAFT_MM = (22.0, 34.0)  # an adult femur is about 27 mm across at mid-shaft


def axial_grid(subject, n: int = 96, n_slices: int = 70, fov: float = FOV_MM,
               z_range: tuple[float, float] | None = None) -> VolumeGeometry:
    """An axial grid over the whole anatomy (or ``z_range``), centred in x and y."""
    z_lo, z_hi = z_range or subject.z_range_mm
    pixel = fov / n
    dz = (z_hi - z_lo) / (n_slices - 1) if n_slices > 1 else 2.0
    origin = (-(n - 1) / 2 * pixel, -(n - 1) / 2 * pixel, z_lo)
    return VolumeGeometry((n_slices, n, n), (dz, pixel, pixel), origin,
                          (1, 0, 0), (0, 1, 0), (0, 0, 1))


def leg_slice(subject, h: float, side: int = 0, pixel: float = 1.0, n: int = 220,
              centre: tuple[float, float] = (5.0, 10.0)) -> tuple[PhantomVolumes, VolumeGeometry]:
    """One axial slice of ``n`` x ``n`` pixels around one thigh at nominal height ``h``."""
    return slices.leg_slice(subject, h, side, pixel, n, centre)


def areas_cm2(labels: np.ndarray, pixel: float) -> dict[int, float]:
    counts = np.bincount(labels.ravel(), minlength=200)
    return {label: counts[label] * pixel * pixel / 100.0 for label in np.nonzero(counts)[0]}


def subcutaneous_mm(volumes: PhantomVolumes, pixel: float, rays: int = 72) -> float:
    """Median over rays from the muscles' centre of the skin-to-fascia distance."""
    water, total = volumes.water[0], (volumes.water + volumes.fat)[0]
    inside, body = slices.muscle_mass(water), ndimage.binary_fill_holes(total > 0.5)
    jj, ii = np.nonzero(inside)
    cj, ci = jj.mean(), ii.mean()
    steps = np.arange(0.0, 200.0, 0.25) / pixel
    depths = []
    for phi in np.linspace(0, 2 * np.pi, rays, endpoint=False):
        rj = np.clip(np.round(cj + steps * np.sin(phi)).astype(int), 0, water.shape[0] - 1)
        ri = np.clip(np.round(ci + steps * np.cos(phi)).astype(int), 0, water.shape[1] - 1)
        in_body, in_muscle = np.nonzero(body[rj, ri])[0], np.nonzero(inside[rj, ri])[0]
        depths.append((in_body.max() - in_muscle.max()) * 0.25)
    return float(np.median(depths))


@pytest.fixture(scope="module")
def low_subject():
    return make_subject(11, "low")


@pytest.fixture(scope="module")
def low_full(low_subject):
    grid = axial_grid(low_subject)
    return grid, render(low_subject, grid)


def muscle_means(volumes: PhantomVolumes, region: str = "thigh") -> dict[int, float]:
    """Mean FF of every muscle of ``region`` on the grid (a thigh grid's knee end also
    catches the tops of calf muscles; they belong to the calf station's truth)."""
    total = volumes.water + volumes.fat
    ff = np.divide(volumes.fat, total, out=np.zeros_like(total), where=total > 0)
    own = set(TABLE.for_region(region).combined_labels())
    return {int(label): float(ff[volumes.labels == label].mean())
            for label in np.unique(volumes.labels) if label in own}


def test_subject_and_render_are_deterministic_and_seeds_differ():
    first, again, other = make_subject(3, "high"), make_subject(3, "high"), make_subject(4, "high")
    assert first == again and first != other
    np.testing.assert_array_equal(first.fat_params, again.fat_params)
    grid = axial_grid(first, n=48, n_slices=12)
    a, b, c = render(first, grid), render(again, grid), render(other, grid)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.water, b.water)
    np.testing.assert_array_equal(a.fat, b.fat)
    assert not np.array_equal(a.labels, c.labels)
    assert a.labels.dtype == np.int16 and a.water.dtype == np.float32 and a.fat.dtype == np.float32


def test_same_seed_same_anatomy_whatever_the_infiltration():
    low, high = make_subject(5, "low"), make_subject(5, "high")
    assert low.girth_scale == high.girth_scale and low.rotation_deg == high.rotation_deg
    assert low.disease != high.disease or not np.array_equal(low.fat_params, high.fat_params)
    with pytest.raises(ValueError):
        make_subject(5, "medium")  # type: ignore[arg-type]


def test_all_36_thigh_muscles_present_and_of_the_calf_only_those_at_the_knee(low_full):
    _, volumes = low_full
    present = set(np.unique(volumes.labels).tolist()) - {0}
    thigh = set(TABLE.for_region("thigh").combined_labels())
    assert thigh <= present and len(thigh) == 36
    # The calf muscles that start above the thigh grid's lower end (the tibial plateau)...
    reach_knee = {c.code for c in calf_layout.CALF_CELLS
                  if c.code and max(k[0] for k in c.keys) > H_BOTTOM}
    allowed = {TABLE.label_of(code, side) for code in reach_knee for side in ("right", "left")}
    assert present - thigh <= allowed
    # ...of which the gastrocnemius heads and popliteus continue across the knee.
    for code in ("MG", "LG", "POP"):
        assert {TABLE.label_of(code, "right"), TABLE.label_of(code, "left")} <= present, code


def test_muscles_only_at_their_anatomical_levels(low_subject, low_full):
    grid, volumes = low_full
    h = grid.slice_positions()[:, 2] / low_subject.length_scale  # nominal height per slice
    present = {int(lab): h[np.any(volumes.labels == lab, axis=(1, 2))]
               for lab in np.unique(volumes.labels) if lab > 0}
    distal_third = FEMUR_HIP_H / 3
    proximal_third = 2 * FEMUR_HIP_H / 3
    for code in ("PC", "TFL", "Gma", "Gme", "Gmi"):  # hip muscles
        for offset in (0, 100):
            label = MUSCLE_CODES.index(code) + 1 + offset
            assert present[label].min() > distal_third, code
    for offset in (0, 100):
        bfb = present[MUSCLE_CODES.index("BFB") + 1 + offset]
        assert bfb.max() < proximal_third and bfb.min() < 60  # distal half, down to the knee
        for code in ("VM", "SM", "SR"):  # reach the knee
            assert present[MUSCLE_CODES.index(code) + 1 + offset].min() < 60, code
        for code in ("Gma", "Gme"):  # reach above the hip joint
            assert present[MUSCLE_CODES.index(code) + 1 + offset].max() > FEMUR_HIP_H + 80


def test_gracilis_reaches_the_knee_as_a_thin_strap(low_subject):
    # Too thin near the knee (about 1 cm^2) for the 4.8 mm grid above: a 1 mm slice.
    volumes, _ = leg_slice(low_subject, 40.0, pixel=1.0, n=200)
    area = areas_cm2(volumes.labels[0], 1.0).get(TABLE.label_of("GC", "right"), 0.0)
    assert 0.2 < area < 3.0


def test_left_muscles_on_patient_left(low_full):
    grid, volumes = low_full
    k, j, i = np.nonzero(volumes.labels)
    x = grid.voxel_to_lps(np.stack([k, j, i], axis=1).astype(float))[:, 0]
    labels = volumes.labels[k, j, i]
    left = labels > 100
    assert x[left].min() > -20 and x[~left].max() < 20  # each side stops at the midline
    for label in np.unique(labels):
        centre = x[labels == label].mean()
        assert (centre > 20) if label > 100 else (centre < -20), label


def test_low_infiltration_muscle_ff_between_2_and_15_percent(low_full):
    _, volumes = low_full
    means = muscle_means(volumes)
    assert len(means) >= 36
    assert all(0.02 <= ff <= 0.15 for ff in means.values()), means


@pytest.mark.parametrize("seed", [2, 7])
def test_high_infiltration_muscles_20_to_90_percent_with_spread(seed):
    subject = make_subject(seed, "high")
    means = muscle_means(render(subject, axial_grid(subject, n=80, n_slices=50)))
    values = np.array(list(means.values()))
    assert values.min() >= 0.20 and values.max() <= 0.90, means
    assert values.max() - values.min() >= 0.3  # some muscles far more affected than others


def test_high_infiltration_is_uneven_along_a_muscle():
    subject = make_subject(2, "high")
    grid = axial_grid(subject, n=80, n_slices=50)
    volumes = render(subject, grid)
    total = volumes.water + volumes.fat
    ff = np.divide(volumes.fat, total, out=np.zeros_like(total), where=total > 0)
    spreads = []
    for label in np.unique(volumes.labels[volumes.labels > 0]):
        per_slice = [ff[k][volumes.labels[k] == label].mean()
                     for k in range(grid.shape[0]) if (volumes.labels[k] == label).sum() > 20]
        if len(per_slice) >= 5:
            spreads.append(np.ptp(per_slice))
    assert max(spreads) > 0.15  # proximodistal gradient and patchiness


def test_femur_cortex_has_no_signal_and_marrow_is_fatty(low_subject):
    leg = SectionRenderer(low_subject).legs[0]
    h = 250.0
    x, y = leg.to_global(0.0, 0.0, h)  # femoral shaft centre, right leg
    radius = 13.5 * leg.bone_scale  # shaft radius at mid-thigh (bones.FEMUR)
    n, pixel = 80, 0.5
    grid = VolumeGeometry((1, n, n), (2.0, pixel, pixel),
                          (x - (n - 1) / 2 * pixel, y - (n - 1) / 2 * pixel,
                           h * low_subject.length_scale), (1, 0, 0), (0, 1, 0), (0, 0, 1))
    volumes = render(low_subject, grid)
    jj, ii = np.mgrid[0:n, 0:n]
    dist = np.hypot((ii - (n - 1) / 2) * pixel, (jj - (n - 1) / 2) * pixel)
    total = (volumes.water + volumes.fat)[0]
    cortex = (dist > radius - 3.5) & (dist < radius - 1.5)
    marrow = dist < radius - 8.0
    assert cortex.sum() > 50 and total[cortex].max() < 0.02
    assert volumes.fat[0][marrow].mean() / total[marrow].mean() > 0.8
    assert (volumes.labels[0][dist < radius] == 0).all()


def test_oblique_render_agrees_with_axial(low_subject):
    tilt = np.deg2rad(12.0)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    normal = np.cross(row, col)
    n, pixel, nz, dz = 72, 5.0, 24, 8.0
    centre = np.array([0.0, 10.0, 250.0 * low_subject.length_scale])
    origin = centre - (n - 1) / 2 * pixel * (row + col) - (nz - 1) / 2 * dz * normal
    oblique = VolumeGeometry((nz, n, n), (dz, pixel, pixel), tuple(origin), tuple(row),
                             tuple(col), tuple(normal))
    tilted = render(low_subject, oblique)
    # The same voxel centres, rendered one axial slice at a time.
    kji = np.stack(np.meshgrid(np.arange(nz), np.arange(n), np.arange(n), indexing="ij"), -1)
    points = oblique.voxel_to_lps(kji.reshape(-1, 3).astype(float))
    agree = total = 0
    for k in range(0, nz, 4):
        for j in range(0, n, 9):
            p = points.reshape(nz, n, n, 3)[k, j]
            line = VolumeGeometry((1, 1, n), (1.0, 1.0, pixel), tuple(p[0]), (1, 0, 0),
                                  (0, 1, 0), (0, 0, 1))
            direct = render(low_subject, line).labels[0, 0]
            mask = (direct > 0) | (tilted.labels[k, j] > 0)
            agree += int((direct[mask] == tilted.labels[k, j][mask]).sum())
            total += int(mask.sum())
    assert total > 200 and agree / total > 0.85


def test_axis_flips_give_the_same_anatomy(low_subject):
    grid = axial_grid(low_subject, n=40, n_slices=6, z_range=(200.0, 260.0))
    flipped = VolumeGeometry(grid.shape, grid.spacing,
                             tuple(grid.voxel_to_lps(np.array([5.0, 39.0, 39.0]))),
                             (-1, 0, 0), (0, -1, 0), (0, 0, -1))
    a, b = render(low_subject, grid), render(low_subject, flipped)
    np.testing.assert_array_equal(a.labels, b.labels[::-1, ::-1, ::-1])
    np.testing.assert_allclose(a.water, b.water[::-1, ::-1, ::-1])


def _blank(geometry: VolumeGeometry) -> PhantomVolumes:
    zeros = np.zeros(geometry.shape, np.float32)
    return PhantomVolumes(np.zeros(geometry.shape, np.int16), zeros, zeros.copy())


def test_rician_noise_in_background_has_the_expected_sigma(low_subject):
    grid = axial_grid(low_subject, n=128, n_slices=8)
    images = dixon_magnitudes(_blank(grid), grid, low_subject, np.random.default_rng(1), snr=40)
    sigma = SIGNAL_SCALE / 40
    for role, image in images.items():
        assert image.dtype == np.float32 and image.shape == grid.shape
        # Pure noise: Rayleigh with mean sigma*sqrt(pi/2) and variance (4 - pi)/2 sigma^2.
        assert image.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01), role
        assert image.std() == pytest.approx(sigma * np.sqrt((4 - np.pi) / 2), rel=0.02), role
    assert not np.allclose(images["water"], images["fat"])  # independent noise per role


def test_bias_field_is_a_function_of_patient_position(low_subject):
    grid = axial_grid(low_subject, n=48, n_slices=30, z_range=(100.0, 390.0))
    volumes = render(low_subject, grid)
    first, second = grid.sub_slab(0, 20), grid.sub_slab(10, 30)

    def images(start, stop, geometry):
        part = PhantomVolumes(volumes.labels[start:stop], volumes.water[start:stop],
                              volumes.fat[start:stop])
        return dixon_magnitudes(part, geometry, low_subject, np.random.default_rng(0),
                                snr=np.inf, stack_falloff=False)

    a, b = images(0, 20, first), images(10, 30, second)
    for role in a:
        np.testing.assert_allclose(a[role][10:], b[role][:10], rtol=1e-5, atol=1e-3)
    points = grid.voxel_to_lps(np.array([[12.0, 20.0, 30.0], [15.0, 5.0, 7.0]]))
    np.testing.assert_array_equal(bias_field(low_subject, points),
                                  bias_field(low_subject, points.copy()))
    field = bias_field(low_subject, grid.voxel_to_lps(
        np.stack(np.meshgrid(*[np.arange(s) for s in grid.shape], indexing="ij"), -1)
        .reshape(-1, 3).astype(float)))
    assert 0.7 <= field.min() and field.max() <= 1.3 and field.std() > 0.01
    # With falloff on, the stack's end slices are a few per cent darker than its middle.
    dimmed = dixon_magnitudes(PhantomVolumes(volumes.labels[:20], volumes.water[:20],
                                             volumes.fat[:20]), first, low_subject,
                              np.random.default_rng(0), snr=np.inf)
    ratio = dimmed["in_phase"].sum(axis=(1, 2)) / a["in_phase"].sum(axis=(1, 2))
    assert 0.9 < ratio[0] < 0.99 and ratio[10] > 0.999


def test_in_phase_and_out_of_phase_are_the_simulated_echoes_without_noise(low_subject):
    """IP and OP are the echo magnitudes at the field's first out-of-phase and in-phase echo
    times (multi-peak fat, T2* decay): never above W + F, and below it where fat dephases."""
    grid = axial_grid(low_subject, n=48, n_slices=6, z_range=(150.0, 400.0))
    volumes = render(low_subject, grid)
    images = dixon_magnitudes(volumes, grid, low_subject, np.random.default_rng(0), snr=np.inf)
    times = (phase_echo_time_ms(3.0, "out_of_phase"), phase_echo_time_ms(3.0, "in_phase"))
    echoes = echo_images(volumes, grid, low_subject, np.random.default_rng(0), times, 3.0,
                         snr=np.inf)["magnitude"]
    np.testing.assert_allclose(images["out_of_phase"], echoes[0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(images["in_phase"], echoes[1], rtol=1e-5, atol=1e-3)
    w, f = images["water"], images["fat"]
    assert (images["in_phase"] <= w + f + 1e-3).all()
    fatty = (volumes.fat > 0.8 * (volumes.water + volumes.fat)) & (volumes.water + volumes.fat > 0.5)
    assert (images["in_phase"][fatty] < 0.99 * (w + f)[fatty]).mean() > 0.9
    inside = volumes.water + volumes.fat > 0.5
    ratio = w[inside] / (volumes.water[inside] * SIGNAL_SCALE)
    assert 0.5 < ratio.min() and ratio.max() < 1.8  # two surface coils' sensitivity only


def test_population_spans_lean_to_obese_with_realistic_medians():
    subjects = [make_subject(seed, "low") for seed in range(300)]
    fat = {sex: np.array([s.subcutaneous_mm for s in subjects if s.sex == sex]) for sex in "MF"}
    assert 5.0 <= np.median(fat["M"]) <= 9.0  # adult men: about 5-8 mm at mid-thigh
    assert 10.0 <= np.median(fat["F"]) <= 16.0  # adult women: about 10-15 mm
    everyone = np.concatenate(list(fat.values()))
    assert np.percentile(everyone, 5) < 5.0 and np.percentile(everyone, 95) > 25.0
    assert everyone.max() <= population.SUBCUTANEOUS_RANGE[1]
    obese_women = [s.subcutaneous_mm for s in subjects if s.sex == "F" and s.bmi >= 33]
    assert obese_women and np.median(obese_women) > 22.0
    assert min(s.age_years for s in subjects) < 25 and max(s.age_years for s in subjects) > 70


def test_rendered_subcutaneous_fat_follows_the_subject():
    subjects = sorted((make_subject(seed, "low") for seed in range(40)),
                      key=lambda s: s.subcutaneous_mm)
    chosen = subjects[:2] + subjects[18:20] + subjects[-2:]
    measured = []
    for subject in chosen:
        volumes, _ = leg_slice(subject, MID_THIGH_H, pixel=1.0, n=240)
        measured.append(subcutaneous_mm(volumes, 1.0))
    drawn = np.array([s.subcutaneous_mm for s in chosen])
    assert np.all(np.abs(np.array(measured) - drawn) < np.maximum(2.5, 0.3 * drawn)), (
        measured, drawn)
    assert min(measured) < 7.0 and max(measured) > 18.0


def test_mid_thigh_areas_and_femur_in_published_ranges():
    ratios = []
    for seed in (0, 3, 8, 10):
        subject = make_subject(seed, "low")
        volumes, _ = leg_slice(subject, MID_THIGH_H, pixel=1.0, n=240)
        areas = areas_cm2(volumes.labels[0], 1.0)
        leg = SectionRenderer(subject).legs[0]
        for code, nominal in MID_THIGH_NOMINAL_CM2.items():
            area = areas.get(TABLE.label_of(code, "right"), 0.0)
            assert AREA_SPREAD[0] * nominal <= area <= AREA_SPREAD[1] * nominal, (seed, code, area)
            size = np.mean([subject.cell_jitter[0, i, 2] for i, c in enumerate(atlas.CELLS)
                            if c.code == code])
            expected = nominal * (leg.scale * size) ** 2
            assert AREA_TOLERANCE[0] <= area / expected <= AREA_TOLERANCE[1], (seed, code, area)
            ratios.append(area / expected)
        # The largest muscle at mid-thigh is vastus lateralis or adductor magnus.
        largest = max(MID_THIGH_NOMINAL_CM2, key=lambda c: areas.get(TABLE.label_of(c, "right"), 0))
        assert largest in ("VL", "AM"), seed
        # Femur: the region inside the outer edge of the void cortex, as a circle.
        femur, _ = leg_slice(subject, MID_THIGH_H, pixel=0.25, n=200, centre=(0.0, 0.0))
        cortex = (femur.water + femur.fat)[0] < 0.05
        bone, _ = ndimage.label(ndimage.binary_fill_holes(cortex))
        diameter = 2 * np.sqrt((bone == bone[100, 100]).sum() * 0.0625 / np.pi)
        assert FEMUR_MID_SHAFT_MM[0] <= diameter <= FEMUR_MID_SHAFT_MM[1], (seed, diameter)
        assert abs(diameter - 27.5 * leg.bone_scale) < 3.0
    assert 0.85 <= np.median(ratios) <= 1.15  # the atlas matches the cited sizes on average


def test_left_and_right_thighs_mirror_each_other():
    subject = make_subject(4, "low")
    legs = SectionRenderer(subject).legs
    stats = []
    for side, name in ((0, "right"), (1, "left")):
        volumes, grid = leg_slice(subject, MID_THIGH_H, side=side, pixel=1.5, n=160)
        ox, oy = legs[side].to_global(0.0, 0.0, MID_THIGH_H)  # femoral shaft axis
        labels = volumes.labels[0]
        jj, ii = np.indices(labels.shape)
        x = grid.origin[0] + ii * 1.5
        y = grid.origin[1] + jj * 1.5
        per = {}
        for code in MUSCLE_CODES:
            mask = labels == TABLE.label_of(code, name)
            if mask.sum() > 20:
                # lateral and posterior offset from the femur, in the leg's own sense
                per[code] = (mask.sum(), legs[side].sigma * (x[mask].mean() - ox),
                             y[mask].mean() - oy)
        stats.append(per)
    right, left = stats
    assert set(right) == set(left) and len(right) >= 12
    for code in right:
        area_ratio = left[code][0] / right[code][0]
        assert 0.65 <= area_ratio <= 1.5, (code, area_ratio)
        assert np.hypot(left[code][1] - right[code][1], left[code][2] - right[code][2]) < 25.0, code


def test_thigh_vessels_deep_and_saphenous():
    # A subject with some subcutaneous fat: in the leanest the vein lies on the fascia.
    subject = next(s for s in (make_subject(seed, "low") for seed in range(20))
                   if s.subcutaneous_mm > 10.0)
    volumes, _ = leg_slice(subject, 250.0, pixel=0.8, n=300)
    water, fat = volumes.water[0], volumes.fat[0]
    inside = slices.deep_region(volumes.labels[0], 0.8)
    body = ndimage.binary_fill_holes((water + fat) > 0.5)
    blood = (water > 0.86) & (fat < 0.05)  # bright inflow; muscle has water <= 0.8
    n_deep = ndimage.label(blood & inside)[1]
    n_superficial = ndimage.label(blood & body & ~inside)[1]
    # femoral artery and vein (side by side, often touching) and profunda femoris
    assert n_deep >= 2 and (blood & inside).sum() * 0.64 > 0.7 * np.pi * (4.0**2 + 5.0**2)
    assert n_superficial >= 1  # the great saphenous vein, in the subcutaneous fat
    assert not (volumes.labels[0][blood] > 0).any()  # vessels are not muscle


def test_fascia_lines_between_compartments_and_around_the_muscles():
    subject = make_subject(2, "low")
    pixel = 0.4
    volumes, _ = leg_slice(subject, 150.0, pixel=pixel, n=450)
    labels, total = volumes.labels[0], (volumes.water + volumes.fat)[0]
    dark = total < 0.45
    reach = round(1.6 / pixel)

    def zone(codes_a, codes_b):
        near = [ndimage.binary_dilation(
            np.isin(labels, [TABLE.label_of(c, "right") for c in codes]), iterations=reach)
            for codes in (codes_a, codes_b)]
        return near[0] & near[1] & (labels == 0)

    # The lateral intermuscular septum (quadriceps | hamstrings) has a dark fascia line; the
    # border between two vasti is fat only.
    between = zone(("VL",), ("BFB", "BFL"))
    within = zone(("VL",), ("RF",))
    assert between.sum() > 30 and within.sum() > 30
    assert dark[between].mean() > 0.15 and dark[within].mean() < 0.5 * dark[between].mean()
    # Fascia lata: along rays, a low-signal line just outside the muscles.
    inside = slices.muscle_mass(volumes.water[0])
    edge = inside & ~ndimage.binary_erosion(inside)
    ring = ndimage.binary_dilation(edge, iterations=round(2.0 / pixel)) & ~inside
    assert dark[ring].any()
    jj, ii = np.nonzero(edge)
    cj, ci = jj.mean(), ii.mean()
    angles = np.arctan2(jj - cj, ii - ci)
    near_dark = ndimage.binary_dilation(dark & ring, iterations=round(1.0 / pixel))
    found = [near_dark[jj[sector], ii[sector]].any()
             for sector in (np.abs(np.angle(np.exp(1j * (angles - phi)))) < np.pi / 36
                            for phi in np.linspace(-np.pi, np.pi, 36, endpoint=False))]
    assert np.mean(found) > 0.8


def test_intramuscular_streaks_add_fat_and_texture_varies_water():
    base = make_subject(9, "low")
    plain = dataclasses.replace(base, streaks=0.0, texture=0.0)
    streaky = dataclasses.replace(base, streaks=0.8, texture=0.0)
    grainy = dataclasses.replace(base, streaks=0.0, texture=0.04)
    label = TABLE.label_of("VL", "right")
    results = {}
    for name, subject in (("plain", plain), ("streaky", streaky), ("grainy", grainy)):
        volumes, _ = leg_slice(subject, MID_THIGH_H, pixel=0.6, n=300)
        inside = volumes.labels[0] == label
        water, fat = volumes.water[0][inside], volumes.fat[0][inside]
        results[name] = (float((fat / (water + fat)).mean()), float(water.std() / water.mean()))
    gain = results["streaky"][0] - results["plain"][0]
    assert 0.003 < gain < 0.05, results  # thin septa: up to a few per cent FF
    assert results["grainy"][1] > results["plain"][1] + 0.005, results
    assert results["grainy"][1] < 0.1


def test_atrophy_with_age_is_muscle_specific():
    old, young = 75.0, 25.0
    assert population.age_size_factor("RF", "RF", young) == 1.0
    rf, soleus = (population.age_size_factor(c, c, old) for c in ("RF", "SOL"))
    assert rf < soleus < 1.0  # rectus femoris loses the most, soleus the least
    assert rf ** 2 == pytest.approx(1 - 0.0066 * 50, abs=1e-6)  # area loss 0.66 %/year
