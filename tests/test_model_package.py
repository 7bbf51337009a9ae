"""Model packages: save/load round trip and a precise message for each kind of defect."""

import copy

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from inference.models.package import InputSpec, ModelPackage, ModelPackageError
from inference.models.unet import UNet3D, UNetConfig

CODES = ["RF", "VL", "VM"]
ALLOWED = {"RF", "VL", "VM", "VI"}
NETWORK = {"in_channels": 2, "num_classes": 4, "widths": [2, 4], "convs_per_level": 1, "bottom_convs": 1}


def metadata(**changes):
    d = {
        "format_version": 1,
        "name": "test-thigh",
        "version": "0.1",
        "anatomy": "thigh",
        "intended_use": "tests only",
        "training_data": "none (random weights)",
        "labels": list(CODES),
        "inputs": [
            {"role": "in_phase", "normalisation": {"method": "percentile_range", "lower_pct": 1, "upper_pct": 99}},
            {"role": "out_of_phase", "normalisation": {"method": "zscore"}},
        ],
        "spacing_mm": [2.0, 1.2, 1.2],
        "patch_size": [8, 16, 8],
        "network": dict(NETWORK),
        "models": {"li": {"folds": ["li/fold1.safetensors", "li/fold2.safetensors"]}, "hi": {"folds": ["hi/fold1.safetensors"]}},
        "routing": {"hi_threshold_ff_pct": 20},
    }
    d.update(changes)
    return d


def networks():
    torch.manual_seed(0)
    config = UNetConfig.from_dict(NETWORK)
    return {"li": [UNet3D(config), UNet3D(config)], "hi": [UNet3D(config)]}


@pytest.fixture()
def saved(tmp_path):
    nets = networks()
    package = ModelPackage.from_dict(metadata(), ALLOWED)
    loaded = package.save(tmp_path / "pkg", nets, allowed_codes=ALLOWED)
    return tmp_path / "pkg", loaded, nets


def expect_problem(folder, text):
    with pytest.raises(ModelPackageError) as info:
        ModelPackage.load(folder, allowed_codes=ALLOWED)
    assert text in str(info.value), str(info.value)


def rewrite_yaml(folder, d):
    with open(folder / "model.yaml", "w") as handle:
        yaml.safe_dump(d, handle)


def test_round_trip_gives_the_same_networks(saved):
    folder, package, nets = saved
    assert package.labels == tuple(CODES)
    assert package.roles == ("in_phase", "out_of_phase")
    assert package.spacing_mm == (2.0, 1.2, 1.2) and package.patch_size == (8, 16, 8)
    built = package.build_networks("cpu")
    assert [len(built[k]) for k in ("li", "hi")] == [2, 1]
    x = torch.randn(1, 2, 8, 16, 8)
    with torch.inference_mode():
        for key in ("li", "hi"):
            for original, rebuilt in zip(nets[key], built[key]):
                assert torch.equal(original.eval()(x), rebuilt(x))
    assert not built["li"][0].training


def test_save_without_weights_copies_the_files(saved, tmp_path):
    _, package, _ = saved
    copied = package.save(tmp_path / "copy", allowed_codes=ALLOWED)
    a = load_file(str(copied.folder / "hi/fold1.safetensors"))
    b = load_file(str(package.folder / "hi/fold1.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_routing_chooses_li_or_hi(saved):
    _, package, _ = saved
    assert package.model_for(11.3) == "li"
    assert package.model_for(44.3) == "hi"


def test_missing_yaml(tmp_path):
    expect_problem(tmp_path, "missing file model.yaml")


def test_missing_weight_file(saved):
    folder, _, _ = saved
    (folder / "li/fold2.safetensors").unlink()
    expect_problem(folder, "models.li: li/fold2.safetensors: missing file")


def test_wrong_tensor_shape_names_the_tensor(saved):
    folder, _, _ = saved
    tensors = load_file(str(folder / "hi/fold1.safetensors"))
    tensors["head.weight"] = torch.zeros(5, 2, 1, 1, 1)
    save_file(tensors, str(folder / "hi/fold1.safetensors"))
    expect_problem(folder, "tensor head.weight has shape [5, 2, 1, 1, 1], network config expects [4, 2, 1, 1, 1]")


def test_missing_and_unexpected_tensors(saved):
    folder, _, _ = saved
    tensors = load_file(str(folder / "hi/fold1.safetensors"))
    del tensors["head.bias"]
    tensors["extra.weight"] = torch.zeros(1)
    save_file(tensors, str(folder / "hi/fold1.safetensors"))
    with pytest.raises(ModelPackageError) as info:
        ModelPackage.load(folder, allowed_codes=ALLOWED)
    assert "missing tensor(s) ['head.bias']" in str(info.value)
    assert "unexpected tensor(s) ['extra.weight']" in str(info.value)


def test_weights_of_another_network_config(saved):
    folder, _, _ = saved
    rewrite_yaml(folder, metadata(network={**NETWORK, "widths": [3, 4]}))
    expect_problem(folder, "network config expects [3, 2, 3, 3, 3]")


@pytest.mark.parametrize(
    "changes, text",
    [
        ({"labels": ["RF", "XX"]}, "unknown muscle code(s) ['XX']"),
        ({"labels": ["RF", "RF", "VL"]}, "listed more than once"),
        ({"inputs": [{"role": "in_phase"}, {"role": "t1"}]}, "inputs[1]: unknown role 't1'"),
        ({"inputs": [{"normalisation": {"method": "none"}}, {"role": "fat"}]}, "inputs[0]: role is missing"),
        ({"inputs": [{"role": "in_phase"}]}, "network.in_channels is 2 but 1 inputs are listed"),
        ({"inputs": [{"role": "fat"}, {"role": "fat"}]}, "['fat'] given more than once"),
        ({"inputs": [{"role": "fat", "normalisation": {"method": "histogram"}}, {"role": "water"}]}, "normalisation.method"),
        ({"spacing_mm": [2.0, -1.2, 1.2]}, "spacing_mm must hold positive finite numbers"),
        ({"spacing_mm": [2.0, 1.2]}, "spacing_mm must be a list of 3"),
        ({"patch_size": [8, 16.5, 8]}, "patch_size must hold positive integers"),
        ({"patch_size": [1, 1, 1]}, "instance norm"),
        ({"labels": ["RF", "VL"]}, "num_classes is 4 but labels give 2 muscles"),
        ({"routing": None}, "routing.hi_threshold_ff_pct is missing"),
        ({"routing": {"hi_threshold_ff_pct": 120}}, "must be a number in (0, 100)"),
        ({"models": {"mid": {"folds": ["a.safetensors"]}}}, "unknown model 'mid'"),
        ({"models": {"li": {"folds": ["../w.safetensors"]}}}, "relative *.safetensors path"),
        ({"models": {"li": {"folds": ["w.pt"]}}}, "relative *.safetensors path"),
        ({"format_version": 2}, "format_version must be 1"),
        ({"name": None}, "name is missing"),
        ({"colour": "red"}, "unknown keys ['colour']"),
    ],
)
def test_malformed_metadata(saved, changes, text):
    folder, _, _ = saved
    d = metadata(**changes)
    if d.get("routing") is None:
        d.pop("routing")
    rewrite_yaml(folder, d)
    expect_problem(folder, text)


def test_all_problems_reported_at_once(saved):
    folder, _, _ = saved
    rewrite_yaml(folder, metadata(labels=["RF", "XX", "VM"], spacing_mm=[0, 1, 1]))
    with pytest.raises(ModelPackageError) as info:
        ModelPackage.load(folder, allowed_codes=ALLOWED)
    assert len(info.value.problems) == 2


def test_single_model_package_needs_no_routing(tmp_path):
    d = metadata(models={"li": {"folds": ["f.safetensors"]}})
    d.pop("routing")
    config = UNetConfig.from_dict(NETWORK)
    package = ModelPackage.from_dict(d, ALLOWED).save(tmp_path, {"li": [UNet3D(config)]}, allowed_codes=ALLOWED)
    assert package.model_for(80.0) == "li"


def test_save_refuses_a_wrong_number_of_fold_weights(tmp_path):
    package = ModelPackage.from_dict(metadata(), ALLOWED)
    nets = networks()
    nets["li"] = nets["li"][:1]
    with pytest.raises(ModelPackageError, match="2 fold files but 1 weights given"):
        package.save(tmp_path, nets, allowed_codes=ALLOWED)


def test_normalisations():
    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 100.0, size=(6, 20, 20)).astype(np.float32)
    ranged = InputSpec("in_phase", "percentile_range", {"lower_pct": 0, "upper_pct": 100, "scale": 100.0, "clip": True})
    out = ranged.normalise(volume)
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(100.0)
    z = InputSpec("water", "zscore", {"foreground_fraction": 0.0}).normalise(volume)
    assert z.mean() == pytest.approx(0.0, abs=1e-4) and z.std() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(InputSpec("fat").normalise(volume), volume)


def test_yaml_written_is_readable_metadata(saved):
    folder, package, _ = saved
    d = yaml.safe_load((folder / "model.yaml").read_text())
    assert d["labels"] == CODES and d["network"]["widths"] == [2, 4]
    assert ModelPackage.from_dict(copy.deepcopy(d), ALLOWED).network == package.network


def test_label_codes_checked_against_the_muscle_table_by_default():
    assert ModelPackage.from_dict(metadata()).labels == tuple(CODES)
    with pytest.raises(ModelPackageError, match=r"unknown muscle code\(s\) \['QF'\]"):
        ModelPackage.from_dict(metadata(labels=["RF", "QF", "VM"]))
