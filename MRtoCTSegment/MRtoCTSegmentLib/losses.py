"""Segmentation loss: cross-entropy + soft Dice (Milletari et al. 2016), both on the softmax of the U-Net's logits.

    L = w_ce CE(logits, target) + w_dice (1 - mean_c Dice_c),  Dice_c = (2 sum p_c g_c + s) / (sum p_c + sum g_c + s)

with p = softmax(logits), g the one-hot target, sums over the whole batch (every pixel of every slice) and the mean
over the structures (background excluded by default). The smoothing s (default 1) makes a structure absent from
both the target and the prediction score 1 instead of 0/0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, include_background: bool = False,
                   smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes; probabilities (B, C, H, W) summing to 1 over C, target (B, H, W) int."""
    if probabilities.dim() != 4 or target.shape != probabilities[:, 0].shape:
        raise ValueError(f"expected probabilities (B, C, H, W) and target (B, H, W), got {tuple(probabilities.shape)} "
                         f"and {tuple(target.shape)}")
    n_classes = probabilities.shape[1]
    onehot = F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    dims = (0, 2, 3)
    intersection = (probabilities * onehot).sum(dims)
    denominator = probabilities.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    if not include_background:
        dice = dice[1:]
    return 1 - dice.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 include_background: bool = False, smooth: float = 1.0) -> tuple[torch.Tensor, dict]:
    """w_ce CE + w_dice soft-Dice loss; returns (total, {"ce": float, "dice": float}) (terms unweighted)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target.long())
    dice = soft_dice_loss(logits.softmax(dim=1), target, include_background, smooth)
    return ce_weight * ce + dice_weight * dice, {"ce": float(ce.detach()), "dice": float(dice.detach())}
