"""Fat fraction you can trust: every method recovers known fat fractions on synthetic voxels
(multi-peak fat, R2*, B0, noise), the magnitude ambiguity is decided or flagged, echoes are
classed at 1.5 and 3 T, ``fat_fraction_map`` picks its source and says how, and the phantom's
echoes behave like multi-peak, T2*-decayed Dixon data whose truth the complex fit recovers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from common.geometry import VolumeGeometry
from inference.dixon.ambiguity import choose_branch
from inference.dixon.complex_fit import fit_complex
from inference.dixon.echoes import (
    IN_PHASE,
    OTHER,
    OUT_OF_PHASE,
    EchoSet,
    dixon_triple,
    echo_phase_class,
    phase_echo_time_ms,
)
from inference.dixon.magnitude_fit import (
    branch_table,
    magnitude_branches,
    r2star_from_magnitudes,
)
from inference.dixon.signal_model import echo_signal
from inference.dixon.spectrum import GYROMAGNETIC_MHZ_PER_T, HAMILTON_2011
from inference.fat_fraction import SOURCES, fat_fraction_map
from inference.phantom.anatomy import PhantomVolumes, make_subject, render
from inference.phantom.layout import HIP_CENTRE
from inference.phantom.signals import (
    SIGNAL_SCALE,
    coil_sensitivity,
    dixon_magnitudes,
    echo_images,
    r2star_s,
)

PROTOCOL_3T = (3.45, 4.60, 5.75)
PROTOCOL_15T = (2.30, 4.60, 6.90)
FRACTIONS = np.round(np.arange(0.0, 1.0001, 0.05), 2)


def _patches(field_t, times, r2star=35.0, snr=np.inf, delta=0.0, conjugate=False, seed=0,
             fractions=FRACTIONS, size=24, margin=6):
    """One square patch per fat fraction (slice), smooth B0 ramp with a +-1 ppm offset,
    random initial phase; noise of 1/snr per channel; an optional echo phase error
    (second difference ``delta`` over the first three echoes) and sign reversal."""
    rng = np.random.default_rng(seed)
    n = size + 2 * margin
    water = np.zeros((len(fractions), n, n), np.float32)
    fat = np.zeros_like(water)
    inside = np.zeros(water.shape, bool)
    inside[:, margin:-margin, margin:-margin] = True
    water[inside] = np.repeat(1.0 - np.asarray(fractions), size * size)
    fat[inside] = np.repeat(np.asarray(fractions), size * size)
    rows, cols = np.mgrid[0:n, 0:n] / n
    ppm = rng.uniform(-1, 1, len(fractions))[:, None, None] + 0.3 * rows + 0.2 * cols
    field = ppm * GYROMAGNETIC_MHZ_PER_T * field_t
    phase0 = rng.uniform(-np.pi, np.pi, len(fractions))[:, None, None] + rows
    magnitudes, phases = [], []
    for n_echo, te in enumerate(times):
        u = (te - times[0]) / (times[1] - times[0])
        signal = echo_signal(water, fat, te, field_t, r2star, None,
                             phase0 - 0.5 * delta * u * (2 - u), field)
        if np.isfinite(snr):
            noise = rng.normal(0, 1 / snr, (2,) + signal.shape)
            signal = signal + (noise[0] + 1j * noise[1]).astype(np.complex64)
        magnitudes.append(np.abs(signal).astype(np.float32))
        phases.append(((-1 if conjugate else 1) * np.angle(signal)).astype(np.float32))
    echoes = EchoSet(tuple(times), tuple(magnitudes), tuple(phases), field_t)
    return echoes, 100.0 * np.where(inside, fat, 0.0), inside


def _bias_per_fraction(ff_pct, truth, inside):
    """Mean error (percentage points) of each patch."""
    return np.array([np.mean(ff_pct[k][inside[k]] - truth[k][inside[k]]) for k in range(len(truth))])


# -- spectrum and echoes --------------------------------------------------------------------------


def test_hamilton_spectrum_sits_below_water_and_dephases():
    assert sum(HAMILTON_2011.amplitudes) == pytest.approx(1.0, abs=0.002)
    assert HAMILTON_2011.main_peak_hz(3.0) == pytest.approx(-3.4 * GYROMAGNETIC_MHZ_PER_T * 3.0)
    c = HAMILTON_2011.phasors([0.0, 2.30, 4.60], 3.0)
    assert c[0] == pytest.approx(1.0)
    # at the nominal in-phase echoes only part of the fat is in phase with water
    assert 0.75 < abs(c[1]) < 0.85 and 0.5 < abs(c[2]) < 0.6


@pytest.mark.parametrize("field_t, expected", [
    (3.0, {1.15: OUT_OF_PHASE, 2.30: IN_PHASE, 3.45: OUT_OF_PHASE, 4.60: IN_PHASE,
           5.75: OUT_OF_PHASE, 2.90: OTHER, 1.5: OTHER}),
    (1.5, {2.30: OUT_OF_PHASE, 4.60: IN_PHASE, 6.90: OUT_OF_PHASE, 2.38: OUT_OF_PHASE,
           4.76: IN_PHASE, 3.45: OTHER, 1.15: OTHER}),
])
def test_echo_classes_at_1_5_and_3_tesla(field_t, expected):
    assert {te: echo_phase_class(te, field_t) for te in expected} == expected
    assert phase_echo_time_ms(field_t, OUT_OF_PHASE) == pytest.approx(1.15 * 3.0 / field_t, abs=0.01)
    assert phase_echo_time_ms(field_t, IN_PHASE, 2) == pytest.approx(4.61 * 3.0 / field_t, abs=0.02)
    assert echo_phase_class(1.40, 3.0, tolerance=0.15) == OUT_OF_PHASE  # 0.11 cycles off
    assert echo_phase_class(1.40, 3.0) == OTHER


def test_dixon_triple_finds_the_tightest_out_in_out_set():
    assert dixon_triple(PROTOCOL_3T, 3.0) == (0, 1, 2)
    assert dixon_triple((1.15, 2.30, 3.45, 4.60, 5.75), 3.0) == (0, 1, 2)
    assert dixon_triple((2.30, 3.45, 4.60), 3.0) == (0, 1, 2)  # in/out/in
    assert dixon_triple((1.15, 2.30, 5.75), 3.0) == (0, 1, 2)
    assert dixon_triple((1.15, 2.30, 5.75), 3.0, equally_spaced=True) is None
    assert dixon_triple((2.30, 4.60, 6.91), 3.0) is None  # all in phase
    assert dixon_triple(PROTOCOL_15T, 1.5) == (0, 1, 2)


def test_echo_set_is_checked():
    image = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="ascending"):
        EchoSet((4.6, 3.45), (image, image), None, 3.0)
    with pytest.raises(ValueError, match="magnitudes"):
        EchoSet((3.45, 4.6), (image,), None, 3.0)
    with pytest.raises(ValueError, match="shape"):
        EchoSet((3.45, 4.6), (image, image[:1]), None, 3.0)
    assert EchoSet((3.45, 4.6), (image, image), (image, image), 3.0).shape == (2, 3, 4)


# -- the magnitude fit ----------------------------------------------------------------------------


@pytest.mark.parametrize("field_t, times", [(3.0, PROTOCOL_3T), (1.5, PROTOCOL_15T)])
def test_magnitude_branches_recover_every_fat_fraction_and_r2star(field_t, times):
    table = branch_table(times, field_t)
    assert 0.5 < table.turning_fat_fraction < 0.7
    for r2 in (20.0, 60.0):
        echoes, truth, inside = _patches(field_t, times, r2star=r2)
        water, fat = magnitude_branches(echoes.magnitudes, table, 1e-6)
        true = truth / 100.0
        below = inside & (true < table.turning_fat_fraction - 0.02)
        above = inside & (true > table.turning_fat_fraction + 0.02)
        np.testing.assert_allclose(water[below], true[below], atol=2e-3)
        np.testing.assert_allclose(fat[above], true[above], atol=2e-3)
        # each voxel's other solution differs: the ambiguity is real
        assert np.all(np.abs(fat[below] - true[below]) > 0.03)
        rate = r2star_from_magnitudes(list(echoes.magnitudes), times, true, field_t, 1e-6)
        np.testing.assert_allclose(rate[inside], r2, atol=0.5)


def test_magnitude_fit_is_unbiased_in_noise_across_0_to_50_percent():
    fractions = np.arange(0.0, 0.51, 0.05)
    echoes, truth, inside = _patches(3.0, PROTOCOL_3T, snr=40.0, fractions=fractions, size=40)
    table = branch_table(PROTOCOL_3T, 3.0)
    water, _ = magnitude_branches(echoes.magnitudes, table, 1e-6)
    bias = _bias_per_fraction(100.0 * water, truth, inside)
    assert np.max(np.abs(bias)) < 0.5  # percentage points; values are not clipped at 0


def _ring_slice(sharp: bool):
    """A leg: muscle disc (FF 5 %) in a subcutaneous ring (FF 92 %), a marrow disc (FF 92 %)
    inside a signal-free cortex; the fascia blurred over about two pixels as an MR point-spread
    function does, or ``sharp`` (no intermediate voxel anywhere)."""
    n = 120
    rows, cols = np.mgrid[0:n, 0:n] + 0.5
    r = np.hypot(rows - n / 2, cols - n / 2)
    muscle = (r < 36).astype(float)
    if not sharp:
        muscle = ndimage.gaussian_filter(muscle, 1.0)
    ff = np.where(r < 50, 0.05 * muscle + 0.92 * (1 - muscle), np.nan)
    cortex = (r >= 6) & (r < 10)
    ff[r < 6] = 0.92
    ff[cortex] = np.nan
    pure_muscle = (muscle > 0.99) & (r >= 10)
    return ff[None], np.isfinite(ff)[None], pure_muscle[None]


@pytest.mark.parametrize("sharp", [False, True])
def test_ambiguity_is_decided_by_anatomy_or_flagged_never_swapped(sharp):
    ff, body, muscle = _ring_slice(sharp)
    table = branch_table(PROTOCOL_3T, 3.0)
    values = np.nan_to_num(ff, nan=0.0)
    magnitudes = [np.where(body, np.abs(1 - values + values * c), 0.0).astype(np.float32)
                  for c in HAMILTON_2011.phasors(PROTOCOL_3T, 3.0)]
    water, fat = magnitude_branches(tuple(magnitudes), table, 1e-6)
    chosen, fat_dominant, undecided = choose_branch(water, fat, body)
    subcutaneous = body & (np.nan_to_num(ff) > 0.9) & ~muscle
    inner = muscle & ~undecided
    np.testing.assert_allclose(chosen[muscle], ff[muscle], atol=2e-3)  # muscle: water-dominant
    assert not fat_dominant[muscle].any()
    marrow = np.zeros_like(body)
    marrow[0, 54:66, 54:66] = True
    marrow &= body & (np.nan_to_num(ff) > 0.9)
    np.testing.assert_allclose(chosen[marrow], 0.92, atol=2e-3)  # marrow: inside the cortex
    if not sharp:  # the partial-volume fascia separates the subcutaneous fat
        assert np.mean(np.abs(chosen[subcutaneous] - ff[subcutaneous]) < 0.01) > 0.9
        # undecided: only the widened fold along the fascia (radius 36 px)
        rows, cols = np.nonzero(undecided[0])
        assert np.all(np.abs(np.hypot(rows + 0.5 - 60, cols + 0.5 - 60) - 36) < 5)
    else:  # no fold: the fat leaks into the muscle region, stays water-dominant, is flagged
        assert np.mean(undecided[subcutaneous]) > 0.95
        assert inner.any()


# -- the complex fit ------------------------------------------------------------------------------


@pytest.mark.parametrize("field_t, times", [(3.0, PROTOCOL_3T), (1.5, PROTOCOL_15T)])
def test_complex_fit_recovers_0_to_100_percent_with_b0_and_r2star(field_t, times):
    echoes, truth, inside = _patches(field_t, times, r2star=45.0)
    body = echoes.magnitudes[1] > 0.05
    fit = fit_complex(list(echoes.magnitudes), list(echoes.phases), times, field_t, (0, 1, 2), body)
    assert not fit.conjugated
    core = ndimage.binary_erosion(inside, np.ones((1, 5, 5), bool))  # the field map is smoothed
    np.testing.assert_allclose(100 * fit.fat_fraction[core], truth[core], atol=0.05)
    np.testing.assert_allclose(100 * fit.fat_fraction[inside], truth[inside], atol=0.3)
    np.testing.assert_allclose(fit.r2star[inside], 45.0, atol=1.0)


def test_complex_fit_in_noise_with_echo_phase_error_and_reversed_sign():
    echoes, truth, inside = _patches(3.0, PROTOCOL_3T, snr=40.0, delta=0.12, conjugate=True, size=40)
    body = echoes.magnitudes[1] > 0.2
    fit = fit_complex(list(echoes.magnitudes), list(echoes.phases), PROTOCOL_3T, 3.0, (0, 1, 2), body)
    assert fit.conjugated
    # the error is removed after the sign reversal, where it reads +0.12
    assert np.median(fit.echo_phase_error) == pytest.approx(0.12, abs=0.02)
    bias = _bias_per_fraction(100 * fit.fat_fraction, truth, inside)
    # 0.5 points everywhere but next to the out-of-phase null (~60 % at 3 T): a uniform patch
    # there biases the swap-free field map and some noisy voxels take the swapped root
    near_null = np.abs(FRACTIONS - 0.6) < 0.03
    assert np.max(np.abs(bias[~near_null])) < 0.5
    assert np.max(np.abs(bias[near_null])) < 2.0


# -- fat_fraction_map -----------------------------------------------------------------------------


def test_source_selection_method_and_limits():
    assert SOURCES == ("water_fat", "fat_fraction", "complex_echoes", "magnitude_echoes", "ip_op")
    echoes, truth, inside = _patches(3.0, PROTOCOL_3T, fractions=(0.05, 0.3))
    images = {"in_phase": echoes.magnitudes[1], "out_of_phase": echoes.magnitudes[0]}
    complex_map = fat_fraction_map(images, echoes=echoes)
    assert complex_map.source == "complex_echoes"
    assert "3.45/4.60/5.75 ms at 3 T" in complex_map.method and "Hamilton 2011" in complex_map.method
    assert "one R2*" in complex_map.limits and complex_map.undecided is None
    np.testing.assert_allclose(complex_map.ff_pct[inside], truth[inside], atol=0.3)

    magnitude_only = EchoSet(echoes.echo_times_ms, echoes.magnitudes, None, 3.0)
    magnitude_map = fat_fraction_map(images, echoes=magnitude_only)
    assert magnitude_map.source == "magnitude_echoes"
    assert "R2* from the two out-of-phase echoes" in magnitude_map.method
    assert "undecided" in magnitude_map.limits and magnitude_map.undecided.shape == truth.shape
    np.testing.assert_allclose(magnitude_map.ff_pct[inside], truth[inside], atol=0.2)

    two_point = fat_fraction_map(images, echoes=EchoSet((2.30, 4.60), echoes.magnitudes[1:], None, 3.0))
    assert two_point.source == "ip_op" and "fat < water" in two_point.limits
    assert np.all(two_point.ff_pct[inside] < truth[inside])  # T2* and multi-peak: reads low
    assert fat_fraction_map(images, prefer=("magnitude_echoes", "complex_echoes"),
                            echoes=echoes).source == "magnitude_echoes"
    water_fat = fat_fraction_map({"water": np.ones(3), "fat": np.zeros(3)}, echoes=echoes)
    assert water_fat.source == "water_fat" and water_fat.method and water_fat.limits
    with pytest.raises(ValueError, match="no FF source"):
        fat_fraction_map({}, prefer=("complex_echoes",), echoes=magnitude_only)


def test_pipeline_config_accepts_the_echo_sources():
    from inference.pipeline_config import load_pipeline_config

    assert load_pipeline_config().ff_prefer == SOURCES


# -- the phantom ----------------------------------------------------------------------------------


def _phantom(field_t=3.0, n_slices=4, seed=3, infiltration="high", rows=100, cols=160, pixel=3.0):
    subject = make_subject(seed, infiltration)
    mid_z = HIP_CENTRE[2] * subject.length_scale / 2
    origin = (subject.offset_mm[0] - (cols - 1) / 2 * pixel,
              subject.offset_mm[1] + 5 - (rows - 1) / 2 * pixel, mid_z - 20.0)
    geometry = VolumeGeometry((n_slices, rows, cols), (15.0, pixel, pixel), origin,
                              (1, 0, 0), (0, 1, 0), (0, 0, 1))
    return subject, geometry, render(subject, geometry)


def test_phantom_echoes_decay_and_dephase_like_multi_peak_fat():
    subject, geometry, volumes = _phantom()
    times = (phase_echo_time_ms(3.0, OUT_OF_PHASE), phase_echo_time_ms(3.0, IN_PHASE), 3.45, 4.60)
    echoes = echo_images(volumes, geometry, subject, np.random.default_rng(0), times, 3.0, snr=np.inf)
    magnitude = echoes["magnitude"]
    assert all(m.dtype == np.float32 and m.shape == geometry.shape for m in magnitude)
    assert all(p.min() >= -np.pi and p.max() < np.pi for p in echoes["phase"])
    total = volumes.water + volumes.fat
    ff = np.divide(volumes.fat, total, out=np.zeros_like(total), where=total > 0)
    lean = (volumes.labels > 0) & (total > 0.5) & (ff < 0.01)
    decay = magnitude[3][lean] / magnitude[1][lean]  # both in phase: water decays only
    np.testing.assert_allclose(decay, np.exp(-2.3e-3 * r2star_s("muscle_water", 3.0)), rtol=0.02)
    adipose = (volumes.labels == 0) & (ff > 0.9) & (total > 0.5)
    ip_op = magnitude[1][adipose] / magnitude[0][adipose]
    rate = r2star_s("fat", 3.0)
    expected = [np.abs(echo_signal(1 - ff[adipose], ff[adipose], te, 3.0, rate)) for te in times[:2]]
    np.testing.assert_allclose(ip_op, expected[1] / expected[0], rtol=1e-3)
    # single-peak fat would give 1 / (2 ff - 1) (1.16 for adipose tissue); six peaks more
    assert np.median(ip_op) > 1.03 * np.median(1 / (2 * ff[adipose] - 1))
    # the roles of dixon_magnitudes are these echo magnitudes (and proton densities)
    roles = dixon_magnitudes(volumes, geometry, subject, np.random.default_rng(0), snr=np.inf,
                             echo_times_ms=(3.45, 4.60))
    np.testing.assert_allclose(roles["out_of_phase"], magnitude[2], rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(roles["in_phase"], magnitude[3], rtol=1e-5, atol=1e-2)
    default = dixon_magnitudes(volumes, geometry, subject, np.random.default_rng(0), snr=np.inf)
    np.testing.assert_allclose(default["out_of_phase"], magnitude[0], rtol=1e-5, atol=1e-2)
    gain = roles["water"][total > 0.5] / (volumes.water[total > 0.5] * SIGNAL_SCALE)
    assert 0.5 < gain.min() and gain.max() < 1.8


def test_two_surface_coils_fall_off_with_depth():
    subject = make_subject(3, "low")
    y0 = subject.offset_mm[1]
    points = np.array([[subject.offset_mm[0], y0 + y, 200.0] for y in (-80.0, 10.0, 105.0)])
    anterior, middle, posterior = coil_sensitivity(subject, points)
    assert middle < 0.9 * anterior and middle < 0.9 * posterior


def test_phantom_background_noise_is_rician():
    subject, geometry, volumes = _phantom(n_slices=2, rows=128, cols=128)
    blank = PhantomVolumes(np.zeros_like(volumes.labels), np.zeros_like(volumes.water),
                           np.zeros_like(volumes.fat))
    echoes = echo_images(blank, geometry, subject, np.random.default_rng(1), PROTOCOL_3T, 3.0, snr=40)
    sigma = SIGNAL_SCALE / 40
    for image in echoes["magnitude"]:
        assert image.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)
    assert not np.allclose(echoes["magnitude"][0], echoes["magnitude"][1])


@pytest.mark.parametrize("field_t, times", [(3.0, PROTOCOL_3T), (1.5, PROTOCOL_15T)])
def test_complex_fit_recovers_the_phantom_truth(field_t, times):
    subject, geometry, volumes = _phantom(field_t, seed=11, rows=120, cols=200, pixel=2.5)
    echoes = echo_images(volumes, geometry, subject, np.random.default_rng(2), times, field_t, snr=40)
    echo_set = EchoSet(times, tuple(echoes["magnitude"]), tuple(echoes["phase"]), field_t)
    ff = fat_fraction_map({}, echoes=echo_set)
    assert ff.source == "complex_echoes"
    total = volumes.water + volumes.fat
    truth = 100 * np.divide(volumes.fat, total, out=np.zeros_like(total), where=total > 0)
    muscle = (volumes.labels > 0) & np.isfinite(ff.ff_pct)
    for lo, hi in ((0, 10), (10, 30), (30, 50)):
        inside = muscle & (truth >= lo) & (truth < hi)
        assert inside.sum() > 200
        assert abs(np.mean(ff.ff_pct[inside] - truth[inside])) < 0.5, (lo, hi)
