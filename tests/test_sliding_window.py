"""Sliding-window inference: exact reassembly, Gaussian weighting, padding, ensembles."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from inference.models.unet import UNet3D, UNetConfig
from inference.sliding_window import (
    gaussian_importance,
    sliding_window_inference,
    window_starts,
)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", [(9, 21, 14), (16, 16, 16), (7, 33, 10)])
def test_identity_network_returns_its_input(overlap, shape):
    torch.manual_seed(1)
    volume = torch.randn(3, *shape)
    out = sliding_window_inference(nn.Identity(), volume, (4, 8, 6), overlap=overlap, batch_size=3, output="logits")
    torch.testing.assert_close(out, volume, rtol=1e-5, atol=1e-5)
    probs = sliding_window_inference(nn.Identity(), volume, (4, 8, 6), overlap=overlap, batch_size=2)
    torch.testing.assert_close(probs, torch.softmax(volume, 0), rtol=1e-5, atol=1e-6)


def test_volume_smaller_than_patch_is_padded_and_cropped():
    volume = torch.randn(2, 3, 5, 4)
    out = sliding_window_inference(nn.Identity(), volume, (8, 8, 8), output="logits", pad_value=-7.0)
    assert out.shape == volume.shape
    torch.testing.assert_close(out, volume)


class PositionNet(nn.Module):
    """Output depends on the position inside the patch, so window placement and weighting matter."""

    def forward(self, x):
        ramp = torch.linspace(0.0, 1.0, x.shape[-1])
        return x * (1.0 + ramp) + x.mean(dim=(2, 3, 4), keepdim=True)


def test_matches_a_direct_weighted_average():
    torch.manual_seed(2)
    volume = torch.randn(2, 6, 11, 13)
    patch, overlap = (4, 6, 8), 0.5
    out = sliding_window_inference(PositionNet(), volume, patch, overlap=overlap, batch_size=4, output="logits")
    weight = gaussian_importance(patch)
    total = torch.zeros_like(volume)
    norm = torch.zeros(volume.shape[1:])
    starts = [window_starts(n, p, overlap) for n, p in zip(volume.shape[1:], patch)]
    for k, j, i in itertools.product(*starts):
        region = (slice(k, k + 4), slice(j, j + 6), slice(i, i + 8))
        total[(slice(None), *region)] += PositionNet()(volume[(slice(None), *region)][None])[0] * weight
        norm[region] += weight
    torch.testing.assert_close(out, total / norm, rtol=1e-5, atol=1e-5)


def test_window_starts_cover_with_the_requested_overlap():
    assert window_starts(5, 8, 0.5) == [0]
    assert window_starts(8, 8, 0.5) == [0]
    for size, patch, overlap in [(100, 32, 0.5), (81, 81, 0.25), (355, 81, 0.5), (37, 10, 0.0)]:
        starts = window_starts(size, patch, overlap)
        assert starts[0] == 0 and starts[-1] == size - patch
        assert max(np.diff(starts), default=0) <= patch * (1 - overlap)


def test_gaussian_importance_peaks_at_the_centre():
    weight = gaussian_importance((5, 7, 9))
    assert weight.shape == (5, 7, 9)
    assert weight[2, 3, 4] == pytest.approx(1.0) and weight.min() > 0
    torch.testing.assert_close(weight, weight.flip(0).flip(1).flip(2))


class Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def test_fold_ensemble_averages():
    volume = torch.randn(4, 6, 10, 9)
    out = sliding_window_inference(nn.ModuleList([Scale(1.0), Scale(3.0)]), volume, (4, 8, 8), output="logits")
    torch.testing.assert_close(out, 2.0 * volume, rtol=1e-5, atol=1e-5)
    probs = sliding_window_inference([Scale(1.0), Scale(3.0)], volume, (4, 8, 8))
    expected = (torch.softmax(volume, 0) + torch.softmax(3 * volume, 0)) / 2
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)


def test_unet_probabilities_and_labels():
    torch.manual_seed(3)
    net = UNet3D(UNetConfig.from_dict({"in_channels": 2, "num_classes": 5, "widths": [4, 8], "convs_per_level": 1})).eval()
    volume = np.random.default_rng(0).normal(size=(2, 10, 20, 13)).astype(np.float32)
    probs = sliding_window_inference(net, volume, (8, 16, 8), overlap=0.25, batch_size=2)
    assert probs.shape == (5, 10, 20, 13)
    torch.testing.assert_close(probs.sum(0), torch.ones(10, 20, 13))
    labels = sliding_window_inference(net, volume, (8, 16, 8), overlap=0.25, output="labels")
    assert torch.equal(labels, probs.argmax(0))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"overlap": 1.0}, "overlap"), ({"batch_size": 0}, "batch_size"), ({"output": "softmax"}, "output"), ({"patch_size": (4, 4)}, "patch_size")],
)
def test_bad_arguments(kwargs, message):
    args = {"patch_size": (4, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=message):
        sliding_window_inference(nn.Identity(), torch.zeros(1, 4, 4, 4), **args)
