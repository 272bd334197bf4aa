"""Segmentation losses on logits (B, 1, H, W) against {0, 1} targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 1.0, gamma: float = 2.0) -> Tensor:
    """Binary focal loss α·(1 − p_t)^γ·BCE, mean over pixels (Lin et al.; DeepCrack / SCNet α=1, γ=2).

    ``alpha`` multiplies every pixel as in DeepSegmentor's loss (torchvision's ``alpha`` weights the two
    classes differently, so it is called with alpha=-1, no class weighting).
    """
    return alpha * sigmoid_focal_loss(logits, target, alpha=-1, gamma=gamma, reduction="mean")


def soft_iou_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft-IoU loss 1 − (Σpg + ε)/(Σp + Σg − Σpg + ε) per image, averaged over the batch."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    union = prob.sum(1) + target.sum(1) - inter
    return (1 - (inter + eps) / (union + eps)).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy on logits, mean over pixels."""
    return F.binary_cross_entropy_with_logits(logits, target)


def lovasz_hinge_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary Lovász hinge (Berman et al., CVPR 2018) per image, averaged over the batch.

    The hinge errors ``1 − logit·(2g − 1)`` sorted in decreasing order are weighted by the gradient of
    the Lovász extension of the Jaccard loss, ``J(i) − J(i − 1)`` with ``J(i)`` the IoU loss of the
    first i sorted pixels marked positive: a convex, tight surrogate of 1 − IoU.
    """
    losses = []
    for scores, labels in zip(logits.flatten(1), target.flatten(1).to(logits.dtype), strict=True):
        errors = 1.0 - scores * (2.0 * labels - 1.0)
        errors_sorted, order = torch.sort(errors, descending=True)
        gt_sorted = labels[order]
        positives = gt_sorted.sum()
        jaccard = 1.0 - (positives - gt_sorted.cumsum(0)) / (positives + (1.0 - gt_sorted).cumsum(0))
        weights = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.relu(errors_sorted), weights))
    return torch.stack(losses).mean()


LOSSES = {"bce": bce_loss, "focal": focal_loss, "soft_iou": soft_iou_loss, "lovasz": lovasz_hinge_loss}


def combined_loss(logits: Tensor, target: Tensor, terms: Sequence[str]) -> Tensor:
    """Sum of the named loss terms (names in :data:`LOSSES`)."""
    return sum(LOSSES[name](logits, target) for name in terms)  # type: ignore[return-value]


def parse_loss(spec: str) -> tuple[str, ...]:
    """``"focal+soft_iou"`` → ``("focal", "soft_iou")``; raises ValueError naming unknown terms."""
    terms = tuple(t.strip() for t in spec.split("+") if t.strip())
    unknown = [t for t in terms if t not in LOSSES]
    if not terms or unknown:
        raise ValueError(f"unknown loss {spec!r}: use terms from {sorted(LOSSES)} joined by '+'")
    return terms
