"""Fat fraction maps and per-muscle statistics on constructed volumes with known values."""

import math

import numpy as np
import pytest

from inference.fat_fraction import (
    fat_fraction_map,
    ff_from_scanner_map,
    ff_from_water_fat,
    water_fat_from_ip_op,
)
from inference.quantify import interior_mask, quantify

SPACING = (2.0, 1.5, 1.0)  # 3 mm^3 = 0.003 mL per voxel
NAMES = {1: ("RF", "right"), 2: ("VL", "right"), 101: ("RF", "left")}


def volumes():
    shape = (5, 6, 8)
    k, j, i = np.indices(shape)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[0:4, 1:5, 1:6] = 1  # 80 voxels, touching the first slice
    labels[0:5, 1:5, 6:8] = 101  # 40 voxels, face to face with label 1
    labels[4, 0, 0] = 7  # not a muscle in NAMES: ignored
    ff = (10.0 * k + j + 0.1 * i).astype(np.float32)
    ff[labels == 101] = 30.0
    ff[4, 1:5, 6:8] = np.nan  # 8 masked voxels in the left RF
    return labels, ff


def test_muscle_statistics_match_direct_computation():
    labels, ff = volumes()
    result = quantify(labels, ff, SPACING, NAMES)
    rf = result.muscles[0]
    values = ff[labels == 1].astype(np.float64)
    assert (rf.code, rf.side, rf.voxels) == ("RF", "right", 80)
    assert rf.volume_ml == pytest.approx(0.24)
    assert rf.ff_mean_pct == pytest.approx(values.mean())
    assert rf.ff_median_pct == pytest.approx(np.median(values))
    assert rf.ff_sd_pct == pytest.approx(values.std())
    assert rf.ff_p25_pct == pytest.approx(np.percentile(values, 25))
    assert rf.ff_p75_pct == pytest.approx(np.percentile(values, 75))
    assert rf.contractile_volume_ml == pytest.approx(0.24 * (1 - values.mean() / 100))
    assert rf.ff_nan_voxels == 0


def test_nan_voxels_count_in_volume_but_not_in_ff():
    labels, ff = volumes()
    left = quantify(labels, ff, SPACING, NAMES).muscles[2]
    assert (left.code, left.side, left.voxels, left.ff_nan_voxels) == ("RF", "left", 40, 8)
    assert left.volume_ml == pytest.approx(0.12)
    assert left.ff_mean_pct == pytest.approx(30.0) and left.ff_sd_pct == pytest.approx(0.0)
    assert left.contractile_volume_ml == pytest.approx(0.12 * 0.7)
    assert left.profile[-1].k == 4 and left.profile[-1].voxels == 8
    assert math.isnan(left.profile[-1].ff_mean_pct)


def test_core_is_the_one_voxel_erosion():
    labels, ff = volumes()
    rf3 = quantify(labels, ff, SPACING, NAMES).muscles[0].core
    # 3D: k 1..2 (slice 0 is the volume edge, slice 3 the muscle's end), j 2..3, i 2..4
    assert rf3.voxels == 2 * 2 * 3
    core_values = ff[1:3, 2:4, 2:5].astype(np.float64)
    assert rf3.ff_mean_pct == pytest.approx(core_values.mean())
    assert rf3.ff_p75_pct == pytest.approx(np.percentile(core_values, 75))
    rf2 = quantify(labels, ff, SPACING, NAMES, core="2d").muscles[0].core
    assert rf2.voxels == 4 * 2 * 3  # in-plane erosion keeps every slice


def test_profile_per_slice():
    labels, ff = volumes()
    profile = quantify(labels, ff, SPACING, NAMES).muscles[0].profile
    assert [p.k for p in profile] == [0, 1, 2, 3]
    assert all(p.voxels == 20 for p in profile)
    for p in profile:
        assert p.ff_mean_pct == pytest.approx(ff[p.k][labels[p.k] == 1].mean())


def test_absent_muscle_and_overall_figures():
    labels, ff = volumes()
    result = quantify(labels, ff, SPACING, NAMES)
    vl = result.muscles[1]
    assert vl.voxels == 0 and vl.volume_ml == 0 and vl.contractile_volume_ml == 0 and vl.profile == []
    assert math.isnan(vl.ff_mean_pct)
    muscle = np.isin(labels, [1, 101])
    assert result.overall.voxels == 120 and result.overall.ff_nan_voxels == 8
    assert result.overall.ff_mean_pct == pytest.approx(np.nanmean(ff[muscle].astype(np.float64)))
    assert result.by_side["left"].ff_mean_pct == pytest.approx(30.0)
    assert result.by_side["right"].voxels == 80


def test_dict_keys_and_json_safe_values():
    labels, ff = volumes()
    d = quantify(labels, ff, SPACING, NAMES).to_dict()
    rf = d["muscles"][0]
    assert list(rf) == [
        "code", "side", "voxels", "volume_ml", "ff_mean_pct", "ff_median_pct", "ff_sd_pct",
        "ff_p25_pct", "ff_p75_pct", "contractile_volume_ml", "ff_nan_voxels", "core", "profile",
    ]
    assert set(rf["core"]) == {"ff_mean_pct", "ff_median_pct", "ff_sd_pct", "ff_p25_pct", "ff_p75_pct", "voxels"}
    assert set(rf["profile"][0]) == {"k", "voxels", "ff_mean_pct"}
    assert d["muscles"][1]["ff_mean_pct"] is None
    assert d["muscles"][2]["profile"][-1]["ff_mean_pct"] is None


def test_interior_mask_treats_the_volume_edge_as_boundary():
    labels = np.ones((3, 3, 3), dtype=np.uint8)
    inner = interior_mask(labels)
    assert inner.sum() == 1 and inner[1, 1, 1]


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in shape"):
        quantify(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3)), SPACING, NAMES)


# --- fat fraction maps ----------------------------------------------------------------


def test_ff_from_water_and_fat_with_background_masked():
    water = np.array([80.0, 50.0, 0.0, 0.5, 100.0])
    fat = np.array([20.0, 50.0, 100.0, 0.5, 0.0])
    ff = ff_from_water_fat(water, fat, background_fraction=0.05)
    np.testing.assert_allclose(ff[[0, 1, 2, 4]], [20.0, 50.0, 100.0, 0.0])
    assert np.isnan(ff[3])  # total 1 < 5% of the robust maximum (100)


def test_ip_op_assumes_water_dominates():
    water, fat = np.array([60.0, 20.0]), np.array([20.0, 60.0])
    in_phase, out_of_phase = water + fat, np.abs(water - fat)  # magnitude images
    w, f = water_fat_from_ip_op(in_phase, out_of_phase)
    ff = ff_from_water_fat(w, f)
    assert ff[0] == pytest.approx(25.0)  # correct where water > fat
    assert ff[1] == pytest.approx(25.0)  # true FF 75%: magnitude OP cannot tell


@pytest.mark.parametrize("units, stored", [("percent", 42.0), ("fraction", 0.42), ("permille", 420.0)])
def test_scanner_ff_units(units, stored):
    ff = ff_from_scanner_map(np.array([stored, 0.0]), units, mask=np.array([True, False]))
    assert ff[0] == pytest.approx(42.0) and np.isnan(ff[1])


def test_source_preference():
    images = {
        "water": np.array([75.0, 60.0]),
        "fat": np.array([25.0, 40.0]),
        "fat_fraction": np.array([500.0, 100.0]),
        "in_phase": np.array([100.0, 100.0]),
        "out_of_phase": np.array([50.0, 20.0]),
    }
    default = fat_fraction_map(images)
    assert default.source == "water_fat"
    np.testing.assert_allclose(default.ff_pct, [25.0, 40.0])
    scanner = fat_fraction_map(images, prefer=("fat_fraction",), ff_units="permille")
    assert scanner.source == "fat_fraction"
    np.testing.assert_allclose(scanner.ff_pct, [50.0, 10.0])
    ipop = fat_fraction_map({k: images[k] for k in ("in_phase", "out_of_phase")})
    assert ipop.source == "ip_op"
    np.testing.assert_allclose(ipop.ff_pct, [25.0, 40.0])
    with pytest.raises(ValueError, match="no FF source"):
        fat_fraction_map({"water": images["water"]})


def test_works_with_the_muscle_table_labels():
    from common.muscles import load_muscles

    names = load_muscles().combined_labels()
    labels, ff = volumes()
    result = quantify(labels, ff, SPACING, names)
    assert len(result.muscles) == 2 * len(load_muscles().muscles)  # every muscle, both sides
    found = {(m.code, m.side): m.voxels for m in result.muscles if m.voxels}
    assert found == {("RF", "right"): 80, ("RF", "left"): 40, ("AL", "right"): 1}  # label 7 is AL here
