"""Training smoke tests: a tiny network on tiny phantoms, a package that loads, exact resume,
and site data read from NIfTI in its true orientation. (No real training happens in CI.)"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from common.geometry import VolumeGeometry
from inference.models.package import ModelPackage
from inference.phantom.anatomy import make_subject, render
from inference.phantom.signals import dixon_magnitudes
from inference.training.checkpoint import CHECKPOINT
from inference.training.config import TrainingConfigError, load_training_config
from inference.training.data import (
    LegCase,
    geometry_from_nifti,
    read_site_case,
    sample_patch,
    site_case_on_grid,
)
from inference.training.loop import train
from inference.training.loss import segmentation_loss

TINY = {
    "package": {
        "name": "tiny",
        "version": "0",
        "anatomy": "thigh",
        "inputs": [
            {"role": "in_phase", "normalisation": {"method": "percentile_range"}},
            {"role": "out_of_phase", "normalisation": {"method": "percentile_range"}},
        ],
        "spacing_mm": [20.0, 12.0, 12.0],
        "patch_size": [16, 24, 24],
        "network": {"widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1},
    },
    "stages": [
        {"name": "li", "infiltration": "low", "phantoms": 1, "epochs": 2, "learning_rate": 0.01,
         "train_seed_start": 1000, "val_seeds": [900]},
        {"name": "hi", "infiltration": "high", "phantoms": 1, "epochs": 1, "learning_rate": 0.01,
         "init": "li", "train_seed_start": 500000, "val_seeds": [950]},
    ],
    "optimisation": {"patches_per_case": 1, "foreground_fraction": 0.5},
    "validation": {"overlap": 0.0},
    "device": "cpu",
    "cpu_threads": 1,  # tiny tensors: thread hand-over costs more than it saves
}


def write_config(folder, changes=None):
    d = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in (changes or {}).items():
        d[key] = value
    path = folder / "training.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted two-stage run (the resume test must reproduce it exactly)."""
    folder = tmp_path_factory.mktemp("straight")
    config = load_training_config(write_config(folder))
    lines = []
    out = train(config, folder / "pkg", progress=lambda event, text: lines.append(text) if event == "line" else None)
    return config, out, lines


def test_training_writes_a_package_that_loads(straight):
    _, out, lines = straight
    package = ModelPackage.load(out)
    assert set(package.models) == {"li", "hi"} and package.hi_threshold_ff_pct == 20.0
    assert package.spacing_mm == (20.0, 12.0, 12.0) and len(package.labels) == 18  # the thigh muscles only
    nets = package.build_networks()
    assert len(nets["li"]) == len(nets["hi"]) == 1
    card = (out / "MODEL_CARD.md").read_text()
    assert "synthetic phantom data only" in card and "NOT for clinical use" in card
    assert "| RF |" in card and not (out / CHECKPOINT).exists()
    assert sum(" epoch " in line and ": loss " in line and "val Dice" in line for line in lines) == 3
    # the HI model started from the LI model, then moved away from it
    li = load_file(str(out / "li/fold1.safetensors"))
    hi = load_file(str(out / "hi/fold1.safetensors"))
    assert not all(torch.equal(li[k], hi[k]) for k in li)
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "li/fold1.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600


def test_resume_continues_to_the_same_weights(straight, tmp_path):
    config, reference, _ = straight

    def stop_after_first_epoch(event, text):
        if event == "line" and "li/fold1 epoch 1/2:" in text:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", progress=stop_after_first_epoch)
    assert (tmp_path / "resumed" / CHECKPOINT).exists()
    with pytest.raises(TrainingConfigError, match="unfinished"):
        train(config, tmp_path / "resumed")
    with pytest.raises(TrainingConfigError, match="seed"):
        train(dataclasses.replace(config, seed=5), tmp_path / "resumed", resume=True)
    resumed = train(config, tmp_path / "resumed", resume=True)
    for name in ("li/fold1.safetensors", "hi/fold1.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_starts_li_from_the_package_and_hi_from_the_new_li(straight, tmp_path):
    config, package_dir, _ = straight
    config = config.with_overrides(epochs=1, init_package=str(package_dir))
    lines = []
    out = train(config, tmp_path / "tuned", progress=lambda event, text: lines.append(text) if event == "line" else None)
    starts = [line for line in lines if ": start at epoch" in line]
    assert f"li/fold1: start at epoch 1/1, init package {package_dir} (tiny 0, li/fold1.safetensors)" in starts
    assert any(line.startswith("hi/fold1: start") and "init best li fold li/fold1" in line for line in starts)
    assert ModelPackage.load(out).network == ModelPackage.load(package_dir).network


def test_config_keeps_acceptance_and_validation_seeds_out_of_training(tmp_path):
    stages = [dict(TINY["stages"][0], val_seeds=[899])]
    with pytest.raises(TrainingConfigError, match="900..999"):
        load_training_config(write_config(tmp_path, {"stages": stages}))
    stages = [dict(TINY["stages"][0], train_seed_start=950)]
    with pytest.raises(TrainingConfigError, match=">= 1000"):
        load_training_config(write_config(tmp_path, {"stages": stages}))
    with pytest.raises(TrainingConfigError, match="unknown key"):
        load_training_config(write_config(tmp_path, {"optimiser": {}}))
    default = load_training_config()
    assert [s.name for s in default.stages] == ["li", "hi"] and default.stages[1].init == "li"


def test_foreground_patches_find_a_small_muscle_that_uniform_ones_miss():
    labels = np.zeros((30, 100, 90), np.uint8)
    labels[20:22, 80:83, 5:8] = 5  # 18 voxels of one muscle
    labels[0:10, 0:50, 0:50] = 1
    case = LegCase("x", np.zeros((2, 30, 100, 90), np.float16), labels, np.zeros(2, np.float32))
    rng = np.random.default_rng(0)
    hits = {True: 0, False: 0}
    for foreground in hits:
        for _ in range(100):
            image, patch = sample_patch(case, (8, 40, 36), rng, foreground)
            assert image.shape == (2, 8, 40, 36) and patch.shape == (8, 40, 36)
            hits[foreground] += int((patch == 5).any())
    assert hits[False] < 25 and hits[True] > 35  # classes 1 and 5 each drawn about half the time
    empty = LegCase("empty", np.zeros((2, 4, 10, 10), np.float16), np.zeros((4, 10, 10), np.uint8), np.zeros(2, np.float32))
    assert sample_patch(empty, (8, 40, 36), rng, True)[1].max() == 0  # no muscle: padded as usual


def test_foreground_fraction_is_checked_and_the_shipped_recipes_load(tmp_path):
    with pytest.raises(TrainingConfigError, match="foreground_fraction"):
        load_training_config(write_config(tmp_path, {"optimisation": {"foreground_fraction": 1.5}}))
    recipe = load_training_config(Path(__file__).parents[1] / "config" / "training-thigh-phantom-0.2.yaml")
    assert recipe.foreground_fraction == pytest.approx(0.33) and recipe.package["version"] == "0.2.0"


def test_loss_is_low_for_a_confident_correct_prediction():
    target = torch.zeros((1, 4, 6, 6), dtype=torch.int64)
    target[0, 1:3, 2:4, 2:4] = 2
    right = torch.nn.functional.one_hot(target, 19).movedim(-1, 1).float() * 20.0
    good, _, _ = segmentation_loss(right, target, (1.0, 1.0))
    bad, _, _ = segmentation_loss(torch.zeros_like(right), target, (1.0, 1.0))
    assert float(good) < 0.01 and float(bad) > 2.0


def test_dice_term_ignores_muscles_absent_from_the_patch():
    target = torch.zeros((1, 4, 6, 6), dtype=torch.int64)
    target[0, 1:3, 2:4, 2:4] = 2
    logits = torch.nn.functional.one_hot(target, 19).movedim(-1, 1).float() * 5.0
    logits[0, 5] += 3.0  # probability mass on muscle 5, which the patch does not contain
    _, _, dice_loss = segmentation_loss(logits, target, (1.0, 1.0))
    probs = torch.softmax(logits, dim=1)[0, 2]
    inside = target[0] == 2
    only_present = 1.0 - (2.0 * probs[inside].sum() + 1.0) / (probs.sum() + inside.sum() + 1.0)
    assert dice_loss == pytest.approx(float(only_present), rel=1e-5)
    background = torch.zeros_like(target)
    loss, ce, dice = segmentation_loss(logits, background, (1.0, 1.0))
    assert dice == 0.0 and float(loss) == pytest.approx(ce)


def save_nifti(path, array_kji, geometry, flip_i=False):
    """Write as myonode does (array [i, j, k], RAS affine), optionally with i reversed."""
    data = np.ascontiguousarray(array_kji.transpose(2, 1, 0))
    affine = geometry.affine_ras_ijk()
    if flip_i:
        ni = data.shape[0]
        data = np.ascontiguousarray(data[::-1])
        affine = affine.copy()
        affine[:3, 3] = affine[:3, :3] @ np.array([ni - 1, 0, 0]) + affine[:3, 3]
        affine[:3, 0] *= -1
    nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory):
    """Two tiny cases of one phantom: one as written by myonode, one with the i axis stored
    reversed (a different but equivalent NIfTI orientation)."""
    root = tmp_path_factory.mktemp("site")
    subject = make_subject(7, "low")
    z_lo, z_hi = subject.z_range_mm
    n, pixel, nz, dz = 64, 7.2, 16, 10.0
    geometry = VolumeGeometry(
        (nz, n, n), (dz, pixel, pixel), (-(n - 1) / 2 * pixel, -(n - 1) / 2 * pixel, (z_lo + z_hi) / 2 - nz / 2 * dz),
        (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
    )
    volumes = render(subject, geometry)
    images = dixon_magnitudes(volumes, geometry, subject, np.random.default_rng(1))
    for name, flip in (("a_standard", False), ("b_flipped", True)):
        case = root / name
        case.mkdir()
        for role in ("water", "fat"):
            save_nifti(case / f"{role}.nii.gz", images[role], geometry, flip)
        save_nifti(case / "labels.nii.gz", volumes.labels, geometry, flip)
    return root, geometry, volumes, images


def test_site_case_is_read_in_patient_orientation(site_folder):
    root, geometry, volumes, images = site_folder
    read_images, labels, read_geometry = read_site_case(root / "a_standard")
    np.testing.assert_array_equal(labels, volumes.labels)
    np.testing.assert_allclose(read_images["water"], images["water"])
    np.testing.assert_allclose(read_geometry.affine_lps(), geometry.affine_lps(), atol=1e-4)
    # left-leg labels (100 + n) lie at positive LPS x, the patient's left
    left = read_geometry.voxel_to_lps(np.argwhere(labels > 100).astype(float))[:, 0]
    right = read_geometry.voxel_to_lps(np.argwhere((labels > 0) & (labels < 100)).astype(float))[:, 0]
    assert left.min() > 0 > right.max()
    # the reversed file describes the same patient: same arrays in the canonical frame
    _, flipped_labels, flipped_geometry = read_site_case(root / "b_flipped")
    assert flipped_geometry.row_dir[0] < 0
    np.testing.assert_array_equal(flipped_labels[:, :, ::-1], labels)
    a = site_case_on_grid(root / "a_standard", (20.0, 12.0, 12.0))
    b = site_case_on_grid(root / "b_flipped", (20.0, 12.0, 12.0))
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0]["fat"], b[0]["fat"], rtol=1e-5, atol=1e-3)
    assert a[1].shape == (8, 38, 38) and {3, 103} <= set(np.unique(a[1]).tolist())


def test_geometry_from_nifti_inverts_affine_ras_ijk():
    geometry = VolumeGeometry.from_orientation((5, 7, 9), (3.0, 1.5, 1.2), (10.0, -20.0, 30.0),
                                               (0.96, 0.28, 0.0, 0.0, 0.0, -1.0))
    back = geometry_from_nifti(geometry.affine_ras_ijk(), (9, 7, 5))
    assert back.shape == geometry.shape
    np.testing.assert_allclose(back.spacing, geometry.spacing)
    np.testing.assert_allclose(back.affine_lps(), geometry.affine_lps(), atol=1e-9)


def test_training_with_site_data(tmp_path, site_folder):
    root = site_folder[0]
    stages = [dict(TINY["stages"][0], phantoms=0, epochs=1)]
    config = load_training_config(write_config(tmp_path, {"stages": stages})).with_overrides(site_data=str(root))
    lines = []
    out = train(config, tmp_path / "pkg", progress=lambda event, text: lines.append(text) if event == "line" else None)
    assert ModelPackage.load(out).models.keys() == {"li"}
    assert any("site case a_standard" in line and "-> li" in line for line in lines)
    assert any("2/0 site cases train/val" in line for line in lines)
