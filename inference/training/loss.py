"""The training loss and the validation score.

Loss = cross-entropy (the seed's) + soft Dice over the muscles present in a batch; validation
runs the same sliding window as inference on held-out legs and scores Dice per muscle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from inference.models.package import ModelPackage
from inference.models.unet import UNet3D
from inference.segment import predict_legs
from inference.training.data import LegCase


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights: tuple[float, float]) -> tuple[torch.Tensor, float, float]:
    """Weighted cross-entropy + soft Dice loss; returns (loss, ce, dice loss).

    Soft Dice per muscle over the whole batch, averaged over the muscles PRESENT in the
    batch's labels (background left out); a patch without any muscle has no Dice term. A
    muscle absent from a patch must not score: with a smoothing term such a muscle's "Dice"
    is 1 / (predicted mass + 1), which pushes its probability down everywhere in the ~98% of
    thin patches that miss a small muscle, and in thigh-phantom 0.1.0/0.2.0 kept the
    pectineus at a validation Dice of 0. False positives of absent muscles are left to the
    cross-entropy term. (nnU-Net's tiny smoothing has the same effect: no gradient there.)"""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, 2, 3, 4)
    overlap = (probs * onehot).sum(dims)[1:]
    truth = onehot.sum(dims)[1:]
    dice = (2.0 * overlap + 1.0) / (probs.sum(dims)[1:] + truth + 1.0)
    present = truth > 0
    dice_loss = 1.0 - dice[present].mean() if bool(present.any()) else probs.new_zeros(())
    loss = weights[0] * ce + weights[1] * dice_loss
    return loss, float(ce.detach()), float(dice_loss.detach())


def dice_per_class(predicted: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[int, float]:
    """Dice of every class present in ``truth`` (absent muscles are not scored)."""
    out = {}
    for c in range(1, n_classes):
        t = truth == c
        size = int(t.sum())
        if size == 0:
            continue
        p = predicted == c
        out[c] = 2.0 * float((p & t).sum()) / (size + float(p.sum()))
    return out


def validate(
    model: UNet3D,
    cases: Sequence[LegCase],
    package: ModelPackage,
    overlap: float,
    device: torch.device,
) -> dict[str, float]:
    """Mean Dice per muscle code over the validation legs (sliding window, like inference)."""
    model.eval()
    scores: dict[int, list[float]] = {}
    for case in cases:
        probs = predict_legs([model], [case.image.astype(np.float32)], case.pad_values, package.patch_size, overlap, device=device)[0]
        for c, value in dice_per_class(probs.argmax(axis=0), case.labels, len(package.labels) + 1).items():
            scores.setdefault(c, []).append(value)
    model.train()
    return {package.labels[c - 1]: float(np.mean(v)) for c, v in sorted(scores.items())}

