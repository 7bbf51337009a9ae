"""Gaussian-weighted sliding-window inference of a patch network over a whole volume.

The seed (Huysmans 2023, 2.2) combined "partially overlapping patches" of 81 slices; we use
regular overlapping windows with the last window aligned to the volume's end, weighted by a
Gaussian importance map (nnU-Net, Isensee 2021) because a convolutional network is least
reliable at patch borders where it lacks context.

What is averaged: per-patch softmax PROBABILITIES (default), not logits. A softmax output is
bounded, so one over-confident patch border cannot outvote the better-placed windows with a
large logit, and fold ensembles average the same quantity in the same buffer. The seed
combined its 5 fold models by majority voting; averaging probabilities (soft voting) is a
departure: it has no ties and keeps a probability map. ``output="logits"`` averages logits
instead (used to check that the weighting is exact).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Network = Callable[[torch.Tensor], torch.Tensor]
OUTPUTS = ("probabilities", "logits", "labels")


def configure_cpu_threads() -> int:
    """Let torch use every core this process may run on (call once, at the caller level).

    ``sched_getaffinity`` respects CPU pinning and container limits; ``os.cpu_count()`` is
    the fallback where it does not exist.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(cores)
    return cores


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA if supported (no overflow risk), else fp16; no mixed precision on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis: evenly spread, first at 0, last ending at ``size``.

    The step is at most ``patch * (1 - overlap)``, so neighbours overlap at least as asked.
    """
    if size <= patch:
        return [0]
    step = max(1, math.floor(patch * (1.0 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - patch, count)})


@lru_cache(maxsize=8)
def _gaussian_cpu(patch: tuple[int, int, int], sigma_scale: float) -> torch.Tensor:
    axes = []
    for n in patch:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    # keep every weight usably positive so a voxel seen only by patch corners is defined
    return weights.clamp_min(1e-6).to(torch.float32)


def gaussian_importance(
    patch: Sequence[int], sigma_scale: float = 0.125, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Separable Gaussian weight map of a patch, 1 at the centre (sigma = patch/8, nnU-Net)."""
    return _gaussian_cpu(tuple(int(p) for p in patch), float(sigma_scale)).to(device)


@torch.inference_mode()
def sliding_window_inference(
    networks: Network | Sequence[Network],
    volume: np.ndarray | torch.Tensor,
    patch_size: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    amp: bool = True,
    output: str = "probabilities",
    pad_value: float = 0.0,
    sigma_scale: float = 0.125,
) -> torch.Tensor:
    """Run ``networks`` (one, or fold models to ensemble) over a ``[C, k, j, i]`` volume.

    Returns ``[classes, k, j, i]`` float32 probabilities (or averaged logits), or ``[k, j, i]``
    int64 labels (argmax), on ``device``. A volume smaller than the patch is padded with
    ``pad_value`` (centred) and the padding is cropped off again. Accumulation happens on the
    device in float32 whatever the autocast precision.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_size must be 3 positive integers [k, j, i], got {patch_size!r}")
    nets = list(networks) if isinstance(networks, (list, tuple, nn.ModuleList)) else [networks]
    device = pick_device(None if device is None else str(device))
    image = torch.as_tensor(volume, dtype=torch.float32).to(device)
    if image.ndim != 4:
        raise ValueError(f"volume must be [C, k, j, i], got shape {tuple(image.shape)}")

    shape = tuple(image.shape[1:])
    before = [max(p - n, 0) // 2 for n, p in zip(shape, patch)]
    after = [max(p - n, 0) - b for n, p, b in zip(shape, patch, before)]
    if any(before) or any(after):
        pads = [v for axis in (2, 1, 0) for v in (before[axis], after[axis])]
        image = F.pad(image, pads, mode="constant", value=pad_value)
    padded = tuple(image.shape[1:])

    windows = [
        (k, j, i)
        for k in window_starts(padded[0], patch[0], overlap)
        for j in window_starts(padded[1], patch[1], overlap)
        for i in window_starts(padded[2], patch[2], overlap)
    ]
    importance = gaussian_importance(patch, sigma_scale, device)
    weight_sum = torch.zeros(padded, dtype=torch.float32, device=device)
    total: torch.Tensor | None = None
    amp_dtype = autocast_dtype(device) if amp else None

    for first in range(0, len(windows), batch_size):
        batch_windows = windows[first : first + batch_size]
        regions = [
            (slice(k, k + patch[0]), slice(j, j + patch[1]), slice(i, i + patch[2])) for k, j, i in batch_windows
        ]
        batch = torch.stack([image[(slice(None), *region)] for region in regions])
        for net in nets:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                scores = net(batch)
            scores = scores.float()
            if output != "logits":
                scores = torch.softmax(scores, dim=1)
            scores *= importance
            if total is None:
                total = torch.zeros((scores.shape[1], *padded), dtype=torch.float32, device=device)
            for n, region in enumerate(regions):
                total[(slice(None), *region)] += scores[n]
        for region in regions:
            weight_sum[region] += importance

    crop = tuple(slice(b, b + n) for b, n in zip(before, shape))
    total = total[(slice(None), *crop)]
    if output == "labels":
        return total.argmax(dim=0)  # positive per-voxel weights do not change the argmax
    total /= weight_sum[crop] * len(nets)
    return total.contiguous()
