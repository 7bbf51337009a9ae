"""The U-Net is shaped by its config: validation, layer layout from the seed, odd sizes."""

import pytest
import torch
from torch import nn

from inference.models.unet import UNet3D, UNetConfig, UNetConfigError

SMALL = {"in_channels": 2, "num_classes": 4, "base_width": 4, "depth": 3}


def test_widths_from_base_width_and_depth_double_and_cap():
    config = UNetConfig.from_dict({**SMALL, "depth": 5, "max_width": 32})
    assert config.widths == (4, 8, 16, 32, 32)
    assert config.strides == ((2, 2, 2),) * 4
    assert config.norm == "instance" and config.bottom_convs == 4


def test_to_dict_round_trips():
    config = UNetConfig.from_dict(
        {"in_channels": 3, "num_classes": 19, "widths": [8, 16, 24], "strides": [[1, 2, 2], 2], "norm": "batch"}
    )
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert config.strides == ((1, 2, 2), (2, 2, 2))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"colour": "red"}, "unknown keys"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 1}, "num_classes"),
        ({"norm": "layer"}, "norm"),
        ({"activation": "gelu"}, "activation"),
        ({"strides": [2]}, "strides"),
        ({"strides": [2, 3]}, "strides"),
        ({"widths": [4, 8]}, "OR"),
        ({"depth": 1}, "at least 2 levels"),
    ],
)
def test_invalid_configs_say_what_is_wrong(change, message):
    with pytest.raises(UNetConfigError, match=message):
        UNetConfig.from_dict({**SMALL, **change})


def test_missing_required_key():
    with pytest.raises(UNetConfigError, match="in_channels is missing"):
        UNetConfig.from_dict({"num_classes": 3, "widths": [4, 8]})


def test_layers_follow_the_seed():
    net = UNet3D(UNetConfig.from_dict(SMALL))
    bottom_convs = [m for m in net.bottom.modules() if isinstance(m, nn.Conv3d)]
    assert len(bottom_convs) == 4  # deeper bottom level
    for down in net.downs:
        conv = down[0]
        assert conv.kernel_size == (3, 3, 3) and conv.stride == (2, 2, 2)
    for up in net.ups:
        assert isinstance(up, nn.ConvTranspose3d) and up.kernel_size == (3, 3, 3)
    assert any(isinstance(m, nn.InstanceNorm3d) for m in net.modules())


def test_norm_none_uses_conv_bias():
    net = UNet3D(UNetConfig.from_dict({**SMALL, "norm": "none"}))
    assert not any(isinstance(m, (nn.InstanceNorm3d, nn.BatchNorm3d)) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv3d))


@pytest.mark.parametrize("shape", [(8, 16, 16), (9, 13, 7), (5, 21, 11)])
def test_forward_keeps_any_spatial_size(shape):
    config = UNetConfig.from_dict({**SMALL, "strides": [[1, 2, 2], 2]})
    net = UNet3D(config).eval()
    with torch.inference_mode():
        out = net(torch.randn(2, 2, *shape))
    assert out.shape == (2, 4, *shape)
    assert torch.isfinite(out).all()


def test_bottom_shape_rounds_up():
    config = UNetConfig.from_dict({**SMALL, "strides": [[1, 2, 2], 2]})
    assert config.bottom_shape((81, 384, 192)) == (41, 96, 48)
