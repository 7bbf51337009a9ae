"""The phantom's anatomy and signal model: truth that a segmentation model can be tested on."""

from __future__ import annotations

import numpy as np
import pytest

from common.geometry import VolumeGeometry
from inference.phantom.anatomy import PhantomVolumes, make_subject, render
from inference.phantom.layout import MUSCLE_CODES
from inference.phantom.section import SectionRenderer
from inference.phantom.signals import SIGNAL_SCALE, bias_field, dixon_magnitudes

FOV_MM = 460.8
FEMUR_HIP_H = 430.0  # nominal height of the femoral head centre above the knee joint line


def axial_grid(subject, n: int = 96, n_slices: int = 70, fov: float = FOV_MM,
               z_range: tuple[float, float] | None = None) -> VolumeGeometry:
    """An axial grid over the whole anatomy (or ``z_range``), centred in x and y."""
    z_lo, z_hi = z_range or subject.z_range_mm
    pixel = fov / n
    dz = (z_hi - z_lo) / (n_slices - 1) if n_slices > 1 else 2.0
    origin = (-(n - 1) / 2 * pixel, -(n - 1) / 2 * pixel, z_lo)
    return VolumeGeometry((n_slices, n, n), (dz, pixel, pixel), origin,
                          (1, 0, 0), (0, 1, 0), (0, 0, 1))


@pytest.fixture(scope="module")
def low_subject():
    return make_subject(11, "low")


@pytest.fixture(scope="module")
def low_full(low_subject):
    grid = axial_grid(low_subject)
    return grid, render(low_subject, grid)


def muscle_means(volumes: PhantomVolumes) -> dict[int, float]:
    total = volumes.water + volumes.fat
    ff = np.divide(volumes.fat, total, out=np.zeros_like(total), where=total > 0)
    return {int(label): float(ff[volumes.labels == label].mean())
            for label in np.unique(volumes.labels) if label > 0}


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


def test_all_36_muscles_present_on_a_full_length_grid(low_full):
    _, volumes = low_full
    expected = set(range(1, 19)) | set(range(101, 119))
    assert set(np.unique(volumes.labels).tolist()) - {0} == expected


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
        for code in ("VM", "SM", "GC", "SR"):  # reach the knee
            assert present[MUSCLE_CODES.index(code) + 1 + offset].min() < 60, code
        for code in ("Gma", "Gme"):  # reach above the hip joint
            assert present[MUSCLE_CODES.index(code) + 1 + offset].max() > FEMUR_HIP_H + 80


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


def test_low_infiltration_muscle_ff_between_3_and_15_percent(low_full):
    _, volumes = low_full
    means = muscle_means(volumes)
    assert len(means) == 36
    assert all(0.03 <= ff <= 0.15 for ff in means.values()), means


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
    radius = 13.5 * leg.scale  # shaft radius at mid-thigh (bones.FEMUR)
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


def test_in_phase_and_out_of_phase_from_water_and_fat_without_noise(low_subject):
    grid = axial_grid(low_subject, n=48, n_slices=6, z_range=(150.0, 400.0))
    volumes = render(low_subject, grid)
    images = dixon_magnitudes(volumes, grid, low_subject, np.random.default_rng(0), snr=np.inf)
    w, f = images["water"], images["fat"]
    np.testing.assert_allclose(images["in_phase"], w + f, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(images["out_of_phase"], np.abs(w - f), rtol=1e-6, atol=1e-3)
    inside = volumes.water + volumes.fat > 0.5
    ratio = w[inside] / (volumes.water[inside] * SIGNAL_SCALE)
    assert 0.65 < ratio.min() and ratio.max() < 1.35  # coil sensitivity only
