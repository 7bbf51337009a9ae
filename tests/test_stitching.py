"""Stacks and stitching against studies whose image is a known function of position."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from input_side_helpers import (
    field_on,
    grid,
    info,
    roles_from,
    write_geometries,
    write_stacks,
)

from dicom_node.phantom.writer import StackImages, write_study
from dicom_node.study.dixon_roles import DixonRules
from dicom_node.study.scan import scan_folder
from dicom_node.study.stacks import group_studies
from dicom_node.study.stitch import stitch

RULES = DixonRules.load()


def _study(folder: Path):
    scan = scan_folder(folder, RULES)
    studies = group_studies(scan.frames)
    assert len(studies) == 1
    return studies[0]


def _assert_matches_truth(stitched, truth_grid, tolerance=0.01):
    """Positions within 0.1 mm, and the image equal to the field up to one global scale."""
    geometry = stitched.plan.geometry
    assert geometry.shape == truth_grid.shape
    assert np.abs(geometry.slice_positions() - truth_grid.slice_positions()).max() <= 0.1
    expected = field_on(truth_grid)
    ratio = stitched.images["in_phase"] / expected
    scale = np.median(ratio)
    assert np.abs(ratio / scale - 1).max() < tolerance
    # Water/fat keep their ratio through gains and blending, so FF is unchanged.
    ff = stitched.images["fat"] / (stitched.images["fat"] + stitched.images["water"])
    assert np.abs(ff - 0.25).max() < 0.005


@pytest.mark.parametrize(
    "slabs",
    [[(0, 12)], [(0, 12), (9, 21)], [(0, 12), (9, 21), (18, 30)]],
    ids=["1-stack", "2-stacks", "3-stacks"],
)
def test_stitching_reproduces_geometry_and_values(tmp_path, slabs):
    truth = grid(slabs[-1][1])
    write_stacks(tmp_path, truth, slabs)
    study = _study(tmp_path)
    assert len(study.stacks) == len(slabs)
    for stack, (start, stop) in zip(study.stacks, slabs):
        expected = truth.sub_slab(start, stop).slice_offsets()
        assert stack.z_range_mm == pytest.approx((expected[0], expected[-1]), abs=0.1)
        assert set(stack.roles) == {"water", "fat", "in_phase", "out_of_phase"}
    stitched = stitch(study)
    _assert_matches_truth(stitched, truth)
    # Every stitched slice traces back to its sources with weights summing to one.
    for entries in stitched.plan.sources:
        assert entries and sum(e.weight for e in entries) == pytest.approx(1.0)


def test_no_step_at_seams_with_noise_and_falloff(tmp_path):
    """Noisy stacks, each dimmer at its ends (coil coverage) and scaled on its own: the
    stitched slice means follow the truth with no step at the seams beyond the noise."""
    truth = grid(24)
    rng = np.random.default_rng(4)
    stacks = []
    for start, stop in [(0, 12), (6, 18), (12, 24)]:
        geometry = truth.sub_slab(start, stop)
        values = field_on(geometry)
        edge = np.minimum(np.arange(12), np.arange(12)[::-1])
        falloff = 1.0 - 0.06 * np.clip(1.0 - edge / 2.0, 0.0, 1.0)
        noisy = values * falloff[:, None, None] + rng.normal(0, 10.0, values.shape)
        stacks.append(StackImages(geometry=geometry, images=roles_from(noisy.astype(np.float32))))
    write_study(tmp_path, "siemens", info("noise"), stacks, np.random.default_rng(0))
    stitched = stitch(_study(tmp_path))
    profile = (stitched.images["in_phase"] / field_on(truth)).mean(axis=(1, 2))
    profile /= np.median(profile)
    # The outer ends (slices 0-1 and 22-23) keep their falloff: no other stack covers them.
    inner = profile[2:-2]
    # Noise: 1% per voxel. Without blending the 6% end falloff gives 3-6% steps.
    assert np.abs(np.diff(inner)).max() < 0.01
    assert np.abs(inner - 1).max() < 0.01


def test_oblique_stacks(tmp_path):
    truth = grid(24, tilt_deg=17.0)
    write_stacks(tmp_path, truth, [(0, 14), (10, 24)], vendor="ge")
    stitched = stitch(_study(tmp_path))
    _assert_matches_truth(stitched, truth)
    assert np.allclose(stitched.plan.geometry.slice_dir, truth.slice_dir, atol=1e-4)


def test_shuffled_file_order(tmp_path):
    truth = grid(21)
    source = tmp_path / "source"
    paths = write_stacks(source, truth, [(0, 12), (9, 21)])
    shuffled = tmp_path / "shuffled"
    order = list(range(len(paths)))
    random.Random(3).shuffle(order)
    for n, index in enumerate(order):
        target = shuffled / f"d{n % 3}" / f"{n:05d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[index], target)
    a = stitch(_study(source))
    b = stitch(_study(shuffled))
    for role in a.images:
        assert np.array_equal(a.images[role], b.images[role])


def test_missing_slice_reported_and_filled(tmp_path):
    truth = grid(12)
    paths = write_stacks(tmp_path, truth, [(0, 12)], vendor="siemens")
    study = _study(tmp_path)
    victim = study.stacks[0].roles["water"][5]
    # Single-frame files: remove the file holding the water image of slice 5.
    victim.path.unlink()
    assert len(paths) > 1
    study = _study(tmp_path)
    assert any("water" in w and "missing slice" in w for w in study.warnings)
    stitched = stitch(study)
    assert any("filled by interpolation" in w for w in stitched.warnings)
    expected = field_on(truth)[5] * 0.75
    scale = np.median(stitched.images["water"] / (field_on(truth) * 0.75))
    assert np.abs(stitched.images["water"][5] / (expected * scale) - 1).max() < 0.02


def test_two_studies_in_one_folder(tmp_path):
    write_stacks(tmp_path / "a", grid(10), [(0, 10)], tag="first")
    write_stacks(tmp_path / "b", grid(8, z0=50.0), [(0, 8)], tag="second", vendor="philips")
    studies = group_studies(scan_folder(tmp_path, RULES).frames)
    assert len(studies) == 2
    assert sorted(s.stacks[0].geometry.shape[0] for s in studies) == [8, 10]


def test_different_in_plane_grid_is_resampled(tmp_path):
    """A stack with coarser pixels is resampled onto the finest stack's grid."""
    fine = grid(12, matrix=24, pixel=4.0)
    coarse = grid(12, matrix=16, pixel=6.0, z0=-100.0 + 9 * 5.0)
    write_geometries(tmp_path, [fine, coarse])
    study = _study(tmp_path)
    assert len(study.stacks) == 2
    stitched = stitch(study)
    geometry = stitched.plan.geometry
    assert geometry.spacing[1:] == (4.0, 4.0)
    assert geometry.shape == (21, 24, 24)
    # The outer ring lies past the coarse stack's last pixel centres (its voxels' own
    # half-pixel border, filled with the nearest value): compare inside it.
    expected = field_on(geometry)[:, 1:-1, 1:-1]
    ratio = stitched.images["in_phase"][:, 1:-1, 1:-1] / expected
    # Trilinear interpolation of a smooth field on 6 mm pixels: within 1%.
    assert np.abs(ratio / np.median(ratio) - 1).max() < 0.01
