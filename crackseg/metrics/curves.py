"""Pixel AUROC / AUPRC: binned for probabilities (bounded memory), exact by ranks for unbounded anomaly scores."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat

from crackseg.metrics._common import _is_empty
from crackseg.metrics.classification import _dense_ranks

__all__ = ["BinnedCurves", "RankCurves"]


class BinnedCurves(Metric):
    """Binned pixel AUROC and AUPRC for probabilities in [0, 1], in O(pixels + bins) memory and time.

    Hand-written because torchmetrics' binned curves compare every pixel with every threshold
    (O(pixels x thresholds)): seconds per batch of full-size maps on a CPU. Here each pixel goes to one of
    ``bins`` uniform bins and two histograms (crack, background) are summed; a pixel is positive at threshold
    ``t_k = k / bins`` when its probability is >= t_k. AUROC is the trapezoidal area of the ROC points, AUPRC
    the step-wise ``sum_k (R_k - R_{k+1}) P_k`` (the definition of torchmetrics / scikit-learn). nan when the
    curve is undefined (AUROC without both classes, AUPRC without positives).

    Args:
        bins: number of uniform bins (thresholds).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, bins: int = 1000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = bins
        self.add_state("pos", default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("neg", default=torch.zeros(bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add pixels: ``preds`` probabilities, ``target`` {0, 1}, any matching shapes."""
        index = (preds.detach().flatten().float() * self.bins).long().clamp_(0, self.bins - 1)
        positive = target.flatten() > 0
        self.pos += torch.bincount(index[positive], minlength=self.bins).to(self.pos.dtype)
        self.neg += torch.bincount(index[~positive], minlength=self.bins).to(self.neg.dtype)

    def compute(self) -> dict[str, Tensor]:
        """``{"auroc", "auprc"}``."""
        zero = self.pos.new_zeros(1)
        tp = torch.cat([self.pos.flip(0).cumsum(0).flip(0), zero])  # TP at t_0 .. t_bins (none positive)
        fp = torch.cat([self.neg.flip(0).cumsum(0).flip(0), zero])
        n_pos, n_neg = tp[0], fp[0]
        nan = torch.tensor(float("nan"), dtype=torch.float32, device=tp.device)
        auroc = nan
        if n_pos > 0 and n_neg > 0:
            tpr, fpr = (tp / n_pos).flip(0), (fp / n_neg).flip(0)
            auroc = torch.trapezoid(tpr, fpr).float()
        auprc = nan.clone()
        if n_pos > 0:
            recall = tp / n_pos
            predicted = tp + fp
            precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.ones_like(tp))
            auprc = ((recall[:-1] - recall[1:]) * precision[:-1]).sum().float()
        return {"auroc": auroc, "auprc": auprc}


class RankCurves(Metric):
    """Exact pixel AUROC and AUPRC for unbounded anomaly scores (any range, any monotone scale).

    Hand-written because torchmetrics applies a sigmoid to scores outside [0, 1] (decided per batch,
    saturating large anomaly scores into ties); the scores are stored (float32) and, at compute time,
    replaced by their dense ranks in [0, 1] before torchmetrics' exact functional curves, which depend on
    the order of the scores only. Memory: 8 bytes per pixel.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add pixels: ``preds`` scores of any range, ``target`` {0, 1}, matching shapes."""
        self.scores.append(preds.detach().flatten().float())
        self.targets.append((target.flatten() > 0).float())

    def compute(self) -> dict[str, Tensor]:
        """``{"auroc", "auprc"}`` (nan when undefined, as :class:`BinnedCurves`, or without data)."""
        if _is_empty(self.scores):
            nan = torch.tensor(float("nan"), device=self.device)
            return {"auroc": nan, "auprc": nan.clone()}
        scores, targets = dim_zero_cat(self.scores), dim_zero_cat(self.targets).long()
        nan = torch.tensor(float("nan"), device=scores.device)
        n_pos = int(targets.sum())
        if n_pos == 0:
            return {"auroc": nan, "auprc": nan.clone()}
        ranks = _dense_ranks(scores)
        auprc = binary_average_precision(ranks, targets, thresholds=None).float()
        auroc = binary_auroc(ranks, targets, thresholds=None).float() if n_pos < targets.numel() else nan
        return {"auroc": auroc, "auprc": auprc}
