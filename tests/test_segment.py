"""The segmentation pipeline on a small phantom with tiny real packages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.geometry import VolumeGeometry
from common.muscles import load_muscles
from inference.legs import LegSplit
from inference.models.package import InputSpec, ModelPackage
from inference.models.unet import UNet3D, UNetConfig
from inference.phantom.anatomy import make_subject, render
from inference.phantom.signals import dixon_magnitudes
from inference.resample import (
    Canonical,
    model_grid,
    resample_image,
    resample_scores_argmax,
)
from inference.segment import LegInputs, labels_on_input, required_images, segment

CODES = tuple(m.code for m in load_muscles().for_region("thigh").muscles)
PERCENTILE = {"lower_pct": 0.5, "upper_pct": 99.5, "scale": 1.0, "clip": True}
LI_CLASS, HI_CLASS = 3, 5  # what the hand-made LI and HI networks predict everywhere


def axial(shape, spacing, centre_z, row=(1.0, 0.0, 0.0)) -> VolumeGeometry:
    nk, nj, ni = shape
    dz, dy, dx = spacing
    row_v = np.asarray(row)
    col_v = np.array([0.0, 1.0, 0.0])
    normal = np.cross(row_v, col_v)
    centre = np.array([0.0, 0.0, centre_z])
    origin = centre - (ni - 1) / 2 * dx * row_v - (nj - 1) / 2 * dy * col_v - (nk - 1) / 2 * dz * normal
    return VolumeGeometry(shape, spacing, tuple(origin), tuple(row_v), tuple(col_v), tuple(normal))


@pytest.fixture(scope="module")
def study():
    """A small low-infiltration phantom: 24 slices of 8 mm, 96 x 96 pixels of 4.8 mm."""
    subject = make_subject(5, "low")
    z_lo, z_hi = subject.z_range_mm
    grid = axial((24, 96, 96), (8.0, 4.8, 4.8), (z_lo + z_hi) / 2)
    volumes = render(subject, grid)
    images = dixon_magnitudes(volumes, grid, subject, np.random.default_rng(0), snr=60.0)
    return grid, volumes, images


def constant_network(config: UNetConfig, winner: int) -> UNet3D:
    """A real network whose output ignores its input: zero head weights, one large bias."""
    net = UNet3D(config)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[winner] = 10.0
    return net


def make_package(folder, models: dict[str, list[UNet3D]], spacing=(12.0, 9.6, 9.6), patch=(16, 32, 24)) -> ModelPackage:
    config = UNetConfig.from_dict({"in_channels": 2, "num_classes": 19, "widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1})
    package = ModelPackage(
        name="test",
        version="0",
        anatomy="thigh",
        labels=CODES,
        inputs=(InputSpec("in_phase", "percentile_range", PERCENTILE), InputSpec("out_of_phase", "percentile_range", PERCENTILE)),
        spacing_mm=spacing,
        patch_size=patch,
        network=config,
        models={key: tuple(f"{key}/fold{n + 1}.safetensors" for n in range(len(nets))) for key, nets in models.items()},
        hi_threshold_ff_pct=20.0 if len(models) == 2 else None,
    )
    return package.save(folder, models)


@pytest.fixture(scope="module")
def routing_package(tmp_path_factory):
    config = UNetConfig.from_dict({"in_channels": 2, "num_classes": 19, "widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1})
    return make_package(
        tmp_path_factory.mktemp("routing"),
        {"li": [constant_network(config, LI_CLASS)], "hi": [constant_network(config, HI_CLASS)]},
    )


def test_labels_shape_convention_and_sides(study, routing_package):
    grid, _, images = study
    low_ff = np.full(grid.shape, 5.0, dtype=np.float32)
    result = segment(images, grid, routing_package, device="cpu", ff_pct=low_ff)
    labels = result.labels
    assert labels.shape == grid.shape and labels.dtype == np.int16
    assert result.model == "li" and result.routing_ff_pct == pytest.approx(5.0)
    assert set(np.unique(labels).tolist()) == {0, LI_CLASS, 100 + LI_CLASS}
    # the patient's left is +x in LPS: left labels lie at higher x than every right label
    x_of = lambda value: grid.voxel_to_lps(np.argwhere(labels == value).astype(float))[:, 0]
    assert x_of(100 + LI_CLASS).min() > x_of(LI_CLASS).max()
    # the network ran on the body's bounding box (plus a margin), not on the air around it
    body = images["in_phase"] > 0.1 * np.percentile(images["in_phase"], 99)
    rows, cols = np.flatnonzero(body.any(axis=(0, 2))), np.flatnonzero(body.any(axis=(0, 1)))
    outside = np.ones(grid.shape, dtype=bool)
    outside[:, max(rows[0] - 12, 0) : rows[-1] + 13, max(cols[0] - 12, 0) : cols[-1] + 13] = False
    assert (labels[body] > 0).mean() > 0.95 and outside.any() and not (labels[outside] > 0).any()
    assert {"prepare", "li", "postprocess", "total"} <= result.timings_s.keys()


def test_routing_runs_hi_above_the_threshold_only(study, routing_package):
    grid, _, images = study
    high = segment(images, grid, routing_package, device="cpu", ff_pct=np.full(grid.shape, 35.0, np.float32))
    assert high.model == "hi" and high.routing_ff_pct == pytest.approx(35.0)
    assert set(np.unique(high.labels).tolist()) == {0, HI_CLASS, 100 + HI_CLASS}
    # the FF map is computed from the images when none is given (phantom: fat all around)
    own = segment(images, grid, routing_package, device="cpu")
    assert own.routing_ff_pct is not None and own.model == ("hi" if own.routing_ff_pct > 20 else "li")


def test_water_fat_inputs_derive_in_and_out_of_phase(study, routing_package):
    grid, _, images = study
    wf = {"water": images["water"], "fat": images["fat"]}
    derived, notes = required_images(wf, ("in_phase", "out_of_phase"))
    np.testing.assert_allclose(derived["in_phase"], wf["water"] + wf["fat"])
    np.testing.assert_allclose(derived["out_of_phase"], np.abs(wf["water"] - wf["fat"]))
    assert len(notes) == 2
    result = segment(wf, grid, routing_package, device="cpu", ff_pct=np.full(grid.shape, 5.0, np.float32))
    assert any("derived from water and fat" in w for w in result.warnings)
    with pytest.raises(ValueError, match="out_of_phase"):
        segment({"in_phase": images["in_phase"]}, grid, routing_package, device="cpu")


def test_mirrored_acquisition_gives_the_same_labels_in_patient_space(study, routing_package):
    """Rows running to patient RIGHT (feet-first style): the array is reversed along i, and
    the labels must come out reversed too, the left leg still on the patient's left."""
    grid, _, images = study
    flipped = VolumeGeometry(
        grid.shape, grid.spacing, tuple(grid.voxel_to_lps(np.array([0.0, 0.0, grid.shape[2] - 1]))),
        (-1.0, 0.0, 0.0), grid.col_dir, grid.slice_dir,
    )
    reversed_images = {k: np.ascontiguousarray(v[:, :, ::-1]) for k, v in images.items()}
    ff = np.full(grid.shape, 5.0, np.float32)
    normal = segment(images, grid, routing_package, device="cpu", ff_pct=ff).labels
    mirrored = segment(reversed_images, flipped, routing_package, device="cpu", ff_pct=ff).labels
    np.testing.assert_array_equal(mirrored[:, :, ::-1], normal)


def test_fold_ensemble_and_majority_vote(study, tmp_path):
    grid, _, images = study
    config = UNetConfig.from_dict({"in_channels": 2, "num_classes": 19, "widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1})
    nets = [constant_network(config, 2), constant_network(config, 2), constant_network(config, 7)]
    package = make_package(tmp_path, {"li": nets})
    ff = np.full(grid.shape, 5.0, np.float32)
    for ensemble in ("mean", "vote"):
        labels = segment(images, grid, package, device="cpu", ff_pct=ff, ensemble=ensemble).labels
        assert set(np.unique(labels).tolist()) == {0, 2, 102}  # two folds of three win


def test_no_resampling_when_the_model_spacing_is_the_scan_spacing(study, tmp_path):
    grid, _, images = study
    config = UNetConfig.from_dict({"in_channels": 2, "num_classes": 19, "widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1})
    package = make_package(tmp_path, {"li": [constant_network(config, 9)]}, spacing=grid.spacing, patch=(24, 64, 56))
    labels = segment(images, grid, package, device="cpu", ff_pct=np.full(grid.shape, 5.0, np.float32)).labels
    assert set(np.unique(labels).tolist()) == {0, 9, 109}
    x_of = lambda value: grid.voxel_to_lps(np.argwhere(labels == value).astype(float))[:, 0]
    assert x_of(109).min() > x_of(9).max()


def test_random_network_runs_on_a_full_phantom_grid(study, tmp_path):
    grid, _, images = study
    config = UNetConfig.from_dict({"in_channels": 2, "num_classes": 19, "widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1})
    torch.manual_seed(0)
    package = make_package(tmp_path, {"li": [UNet3D(config)]})
    steps = []
    result = segment(images, grid, package, device="cpu", progress=lambda step, f: steps.append((step, f)))
    assert result.labels.shape == grid.shape
    labels = np.unique(result.labels)
    assert labels.min() >= 0 and all(v < 19 or 101 <= v < 119 for v in labels)
    li = [f for step, f in steps if step == "li"]
    assert li == sorted(li) and li[-1] == pytest.approx(1.0)


def test_canonical_round_trip_for_a_permuted_grid():
    sagittal = VolumeGeometry((5, 6, 7), (3.0, 1.0, 2.0), (10.0, -5.0, 40.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0))
    canonical = Canonical.of(sagittal)
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    forward = canonical.forward(volume)
    assert forward.shape == canonical.geometry.shape == (6, 7, 5)
    np.testing.assert_array_equal(canonical.backward(forward), volume)
    # every voxel sits at the same patient position in both grids
    kji = np.array([[1, 2, 3], [4, 0, 6]], dtype=float)
    for k, j, i in kji.astype(int):
        value = volume[k, j, i]
        where = np.argwhere(forward == value)[0].astype(float)
        np.testing.assert_allclose(canonical.geometry.voxel_to_lps(where), sagittal.voxel_to_lps(np.array([k, j, i], float)))


def test_score_resampling_keeps_a_sphere_centred():
    fine = axial((40, 60, 60), (2.0, 1.0, 1.0), 0.0)
    coarse = model_grid(fine, (5.0, 3.0, 3.0))
    centre = np.array([4.3, -6.1, 3.7])
    points = coarse.voxel_to_lps(np.indices(coarse.shape).reshape(3, -1).T.astype(float))
    inside = (np.linalg.norm(points - centre, axis=1) < 14.0).reshape(coarse.shape)
    scores = np.stack([~inside, inside]).astype(np.float32)
    labels, _ = resample_scores_argmax(scores, coarse, fine)
    assert labels.shape == fine.shape
    found = fine.voxel_to_lps(np.argwhere(labels == 1).astype(float)).mean(axis=0)
    expected = points[inside.ravel()].mean(axis=0)  # the coarse (blocky) sphere's centre
    assert np.all(np.abs(found - expected) < 0.25 * np.array([1.0, 1.0, 2.0]))  # < 1/4 fine voxel
    # images: a linear ramp survives down-sampling exactly in the interior
    ramp = np.broadcast_to(np.arange(60, dtype=np.float32), fine.shape)
    down = resample_image(ramp, fine, coarse)
    expected = coarse.voxel_to_lps(np.array([[0.0, 0.0, i] for i in range(coarse.shape[2])]))[:, 0]
    expected = (expected - fine.origin[0]) / fine.spacing[2]
    np.testing.assert_allclose(down[coarse.shape[0] // 2, coarse.shape[1] // 2, 2:-2], expected[2:-2], atol=1e-3)


def test_model_grid_labels_return_aligned_to_the_fine_truth(study):
    """Truth rendered on the model grid, split into legs as the pipeline does, then brought
    back to the input grid: it must overlap the truth rendered on the input grid."""
    grid, _, _ = study
    subject = make_subject(5, "low")
    coarse = model_grid(grid, (12.0, 9.6, 9.6))
    truth_coarse = render(subject, coarse).labels
    truth_fine = render(subject, grid).labels
    offset = load_muscles().left_label_offset
    split = LegSplit(coarse.shape[2], coarse.shape[2] // 2, left_is_high_i=True)
    right, left = split.split(truth_coarse)
    onehot = lambda half, side_offset: np.stack(
        [half == 0] + [half == side_offset + c for c in range(1, 19)]
    ).astype(np.float32)
    legs = LegInputs(split, (slice(0, coarse.shape[1]), slice(0, coarse.shape[2])), right[None], left[None], np.zeros(1), "gap")
    right_lut = np.arange(19, dtype=np.int16)
    left_lut = np.where(right_lut > 0, right_lut + offset, 0).astype(np.int16)
    labels = labels_on_input(onehot(right, 0), onehot(left, offset), legs, coarse, Canonical.of(grid), (right_lut, left_lut))
    for value in (2, 11, 102, 112):  # VL and ST of both legs
        a, b = labels == value, truth_fine == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.75
        shift = grid.voxel_to_lps(np.argwhere(a).astype(float)).mean(0) - grid.voxel_to_lps(np.argwhere(b).astype(float)).mean(0)
        assert np.all(np.abs(shift) < 0.5 * np.array([9.6, 9.6, 12.0]))
