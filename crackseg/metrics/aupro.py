"""AUPRO: area under the per-region-overlap curve up to a false-positive rate (MVTec AD / anomalib), exact."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from crackseg.metrics._common import _is_empty, _prepare

__all__ = ["AUPRO"]


class AUPRO(Metric):
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit`` (MVTec AD / anomalib).

    Hand-written: torchmetrics has no PRO curve; this version is exact (no score binning).

    Ground-truth regions are the 8-connected components of each image's mask. For a threshold ``t`` (pixel
    anomalous when ``score >= t``) ``FPR(t)`` is the fraction of normal pixels above it and ``PRO(t)`` the
    mean over all regions (of all images) of the fraction of the region's pixels above it. In :meth:`compute`
    all scores are sorted once in decreasing order: ``FPR = cumsum(is_normal) / N_normal`` and
    ``PRO = cumsum(w) / N_regions`` with ``w = 1 / |region|`` on region pixels and 0 on normal pixels; the
    last point of every group of tied scores is kept, ``(0, 0)`` is prepended, ``PRO`` is linearly
    interpolated at ``FPR = fpr_limit`` and the curve is integrated with the trapezoid rule and divided by
    ``fpr_limit`` (a perfect detector scores 1.0). Works with unbounded anomaly scores and is invariant to
    strictly increasing score transforms. Images without any region contribute only normal pixels.

    State: the flattened scores and the per-pixel weight ``w`` (``dist_reduce_fx="cat"``), plus the number of
    regions (``"sum"``); scores and weights are stored as float32 (the layout torchmetrics can synchronise
    when a DDP rank received no data). Storing ``w`` instead of a region id keeps regions distinct across
    batches and DDP ranks without any id bookkeeping; ``w == 0`` marks the normal pixels. Memory is 8 bytes
    per pixel; pass ``compute_on_cpu=True`` to keep the states in host memory.

    Args:
        fpr_limit: upper FPR integration limit in ``(0, 1]``.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    scores: list[Tensor] | Tensor
    weights: list[Tensor] | Tensor
    num_regions: Tensor

    def __init__(self, fpr_limit: float = 0.3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.fpr_limit = fpr_limit
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("weights", default=[], dist_reduce_fx="cat")
        self.add_state("num_regions", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Label the ground-truth regions and store scores and per-pixel region weights.

        Args:
            preds: anomaly scores (any real range), ``(B, 1, H, W)`` or ``(B, H, W)``.
            target: ground truth of the same shape in ``{0, 1}``.
        """
        preds, target = _prepare(preds, target)
        mask = target.detach().cpu().numpy()
        # 3-D labelling of the whole batch; the structure connects nothing across the batch axis.
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = True  # 8-connectivity inside each image
        labels, n_regions = ndimage.label(mask, structure=structure)
        if n_regions > 0:
            sizes = np.bincount(labels.ravel(), minlength=n_regions + 1).astype(np.float64)
            per_label = np.zeros(n_regions + 1, dtype=np.float32)
            per_label[1:] = 1.0 / sizes[1:]
            weights = per_label[labels]
        else:
            weights = np.zeros(mask.shape, dtype=np.float32)
        self.scores.append(preds.detach().reshape(-1).float())
        self.weights.append(torch.from_numpy(weights.reshape(-1)).to(preds.device))
        self.num_regions += n_regions

    def compute(self) -> Tensor:
        """Return the normalised AUPRO as a scalar float tensor (nan without a region or a normal pixel)."""
        if _is_empty(self.scores):
            return torch.tensor(float("nan"), device=self.device)
        scores = dim_zero_cat(self.scores)
        weights = dim_zero_cat(self.weights).double()
        normal = weights == 0
        n_normal = int(normal.sum())
        n_regions = int(self.num_regions)
        if n_normal == 0 or n_regions == 0:
            warnings.warn(
                f"AUPRO is undefined with {n_regions} anomalous regions and {n_normal} normal pixels; "
                "returning nan.",
                UserWarning,
                stacklevel=2,
            )
            return torch.tensor(float("nan"), device=scores.device)

        order = torch.argsort(scores, descending=True)
        sorted_scores = scores[order]
        fpr = normal[order].double().cumsum(0) / n_normal
        pro = weights[order].cumsum(0) / n_regions
        group_end = torch.ones_like(sorted_scores, dtype=torch.bool)
        group_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
        zero = fpr.new_zeros(1)
        fpr = torch.cat([zero, fpr[group_end]])
        pro = torch.cat([zero, pro[group_end]])

        limit = torch.tensor([self.fpr_limit], dtype=fpr.dtype, device=fpr.device)
        # first point with FPR >= limit; exists because the last point has FPR = 1, and k >= 1 as FPR[0] = 0.
        k = int(torch.searchsorted(fpr, limit, side="left"))
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        pro_at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs = torch.cat([fpr[:k], limit])
        ys = torch.cat([pro[:k], pro_at_limit])
        return (torch.trapezoid(ys, xs) / self.fpr_limit).float()
