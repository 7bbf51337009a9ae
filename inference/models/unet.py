"""3D U-Net for single-leg muscle segmentation, shaped by a config dict.

Huysmans et al. 2023 (section 2.2, Figure 3) used a 3D U-Net with two changes to the
classic design: down-sampling and up-sampling use 3x3x3 filters (a strided convolution
instead of max-pooling, a 3x3x3 transposed convolution instead of a 2x2x2 up-convolution),
and the deepest level holds 4 convolutional layers. Their text cites nnU-Net (Isensee 2021)
as the base; the encoder/decoder layout here is the 3D U-Net of Cicek et al. 2016
(two 3x3x3 conv + norm + activation per level, skip connections by concatenation).

Depth, widths, strides, channel counts and normalisation are NOT fixed in code: they come
from the model package (``network:`` in ``model.yaml``), so that a package's weights and its
network always agree. Instance normalisation is the default (batch size 1 in the seed makes
batch statistics meaningless).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NORMS = ("instance", "batch", "none")
ACTIVATIONS = ("relu", "leaky_relu")
_KEYS = {
    "in_channels",
    "num_classes",
    "widths",
    "base_width",
    "depth",
    "max_width",
    "strides",
    "convs_per_level",
    "bottom_convs",
    "norm",
    "activation",
}


class UNetConfigError(ValueError):
    """A network config that cannot describe a U-Net."""


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UNetConfigError(f"network.{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class UNetConfig:
    """Everything that fixes the network's tensors; ``widths[-1]`` is the bottom level."""

    in_channels: int
    num_classes: int
    widths: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    convs_per_level: int = 2
    bottom_convs: int = 4
    norm: str = "instance"
    activation: str = "relu"

    @property
    def depth(self) -> int:
        """Number of resolution levels, the bottom included."""
        return len(self.widths)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        """Validate a ``network:`` mapping.

        Widths are given either as ``widths: [w0, w1, ...]`` or as ``base_width`` + ``depth``
        (doubling per level, capped at ``max_width`` if given). ``strides`` is one ``[sk, sj,
        si]`` (or a single int) per down-sampling step, default 2; anisotropic strides let a
        package keep thick slices un-pooled.
        """
        if not isinstance(d, Mapping):
            raise UNetConfigError(f"network must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - _KEYS)
        if unknown:
            raise UNetConfigError(f"network has unknown keys {unknown}; allowed {sorted(_KEYS)}")
        for key in ("in_channels", "num_classes"):
            if key not in d:
                raise UNetConfigError(f"network.{key} is missing")
        in_channels = _positive_int(d["in_channels"], "in_channels")
        num_classes = _positive_int(d["num_classes"], "num_classes")
        if num_classes < 2:
            raise UNetConfigError("network.num_classes must be >= 2 (background + muscles)")

        if "widths" in d:
            if any(k in d for k in ("base_width", "depth", "max_width")):
                raise UNetConfigError("give network.widths OR base_width/depth, not both")
            raw = d["widths"]
            if not isinstance(raw, Sequence) or isinstance(raw, str):
                raise UNetConfigError(f"network.widths must be a list, got {raw!r}")
            widths = tuple(_positive_int(w, "widths[]") for w in raw)
        else:
            if "base_width" not in d or "depth" not in d:
                raise UNetConfigError("network needs widths, or base_width and depth")
            base = _positive_int(d["base_width"], "base_width")
            depth = _positive_int(d["depth"], "depth")
            cap = _positive_int(d["max_width"], "max_width") if "max_width" in d else None
            widths = tuple(
                base * 2**level if cap is None else min(base * 2**level, cap)
                for level in range(depth)
            )
        if len(widths) < 2:
            raise UNetConfigError(f"network needs at least 2 levels, got widths {list(widths)}")

        raw_strides = d.get("strides", [2] * (len(widths) - 1))
        if not isinstance(raw_strides, Sequence) or len(raw_strides) != len(widths) - 1:
            raise UNetConfigError(
                f"network.strides must list {len(widths) - 1} down-sampling steps, "
                f"got {raw_strides!r}"
            )
        strides = []
        for step in raw_strides:
            triple = [step] * 3 if isinstance(step, int) else list(step)
            if len(triple) != 3 or any(
                isinstance(s, bool) or not isinstance(s, int) or s not in (1, 2) for s in triple
            ):
                raise UNetConfigError(f"network.strides entries must be 1 or 2 per axis, got {step!r}")
            strides.append(tuple(triple))

        norm = d.get("norm", "instance")
        if norm not in NORMS:
            raise UNetConfigError(f"network.norm must be one of {NORMS}, got {norm!r}")
        activation = d.get("activation", "relu")
        if activation not in ACTIVATIONS:
            raise UNetConfigError(f"network.activation must be one of {ACTIVATIONS}, got {activation!r}")
        return cls(
            in_channels=in_channels,
            num_classes=num_classes,
            widths=widths,
            strides=tuple(strides),
            convs_per_level=_positive_int(d.get("convs_per_level", 2), "convs_per_level"),
            bottom_convs=_positive_int(d.get("bottom_convs", 4), "bottom_convs"),
            norm=norm,
            activation=activation,
        )

    def bottom_shape(self, patch: Sequence[int]) -> tuple[int, int, int]:
        """Spatial size at the bottom level for an input ``patch`` (each stride-2 step halves,
        rounding up, as a 3x3x3 conv with padding 1 does)."""
        shape = [int(p) for p in patch]
        for stride in self.strides:
            shape = [-(-n // s) for n, s in zip(shape, stride)]
        return tuple(shape)

    def to_dict(self) -> dict[str, Any]:
        """Canonical mapping (explicit widths and strides) for ``model.yaml``."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "widths": list(self.widths),
            "strides": [list(s) for s in self.strides],
            "convs_per_level": self.convs_per_level,
            "bottom_convs": self.bottom_convs,
            "norm": self.norm,
            "activation": self.activation,
        }


def _conv_unit(cin: int, cout: int, config: UNetConfig, stride: Sequence[int] = (1, 1, 1)) -> nn.Sequential:
    """3x3x3 convolution, normalisation, activation (bias only when there is no norm)."""
    layers: list[nn.Module] = [
        nn.Conv3d(cin, cout, 3, stride=tuple(stride), padding=1, bias=config.norm == "none")
    ]
    if config.norm == "instance":
        layers.append(nn.InstanceNorm3d(cout, affine=True))
    elif config.norm == "batch":
        layers.append(nn.BatchNorm3d(cout))
    layers.append(nn.ReLU(inplace=True) if config.activation == "relu" else nn.LeakyReLU(0.01, inplace=True))
    return nn.Sequential(*layers)


def _conv_block(cin: int, cout: int, n: int, config: UNetConfig) -> nn.Sequential:
    return nn.Sequential(*[_conv_unit(cin if i == 0 else cout, cout, config) for i in range(n)])


class UNet3D(nn.Module):
    """Encoder-decoder with skip connections; input ``[B, C, k, j, i]``, output logits.

    Any spatial size works: each transposed convolution is given the size of its skip
    connection, so odd sizes (e.g. the seed's 81 slices) round-trip without cropping.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        cin = config.in_channels
        for level in range(config.depth - 1):
            self.encoders.append(_conv_block(cin, w[level], config.convs_per_level, config))
            # strided 3x3x3 conv in place of max-pooling (seed); keeps the width like a pool
            self.downs.append(_conv_unit(w[level], w[level], config, stride=config.strides[level]))
            cin = w[level]
        self.bottom = _conv_block(cin, w[-1], config.bottom_convs, config)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth - 1)):
            self.ups.append(
                nn.ConvTranspose3d(w[level + 1], w[level], 3, stride=config.strides[level], padding=1)
            )
            self.decoders.append(_conv_block(2 * w[level], w[level], config.convs_per_level, config))
        self.head = nn.Conv3d(w[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encode, down in zip(self.encoders, self.downs):
            x = encode(x)
            skips.append(x)
            x = down(x)
        x = self.bottom(x)
        for up, decode, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = up(x, output_size=skip.shape[2:])
            x = decode(torch.cat([skip, x], dim=1))
        return self.head(x)
