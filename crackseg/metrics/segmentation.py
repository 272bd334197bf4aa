"""Pixel-map metrics for crack segmentation and anomaly localisation.

All metrics are computed for the positive class (crack / anomalous pixel). Inputs are float maps of
shape ``(B, 1, H, W)`` or ``(B, H, W)`` and targets of the same shape with values in ``{0, 1}`` (int, float
or bool).

Hand-written metrics (torchmetrics has no equivalent) are :class:`~torchmetrics.Metric` subclasses whose
states carry a ``dist_reduce_fx`` so they synchronise under DDP, one family per module:

* :mod:`crackseg.metrics.sweep` -- :class:`ThresholdSweepF1`, ODS / OIS / AP (König et al.; DeepSegmentor's
  dataset sums);
* :mod:`crackseg.metrics.region` -- :class:`RegionF1`, region-wise (patch) F1 of SCNet (Sharma et al. 2021);
* :mod:`crackseg.metrics.aupro` -- :class:`AUPRO`, area under the per-region-overlap curve (MVTec AD), exact;
* :mod:`crackseg.metrics.curves` -- :class:`BinnedCurves` / :class:`RankCurves`, pixel AUROC / AUPRC.

:class:`SegmentationMetrics` (this module) bundles them with torchmetrics' pixel metrics for a test epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall

from crackseg.metrics._common import _prepare
from crackseg.metrics.aupro import AUPRO
from crackseg.metrics.curves import BinnedCurves, RankCurves
from crackseg.metrics.region import RegionF1
from crackseg.metrics.sweep import ThresholdSweepF1, sweep_thresholds

__all__ = ["AUPRO", "BinnedCurves", "RankCurves", "RegionF1", "SegmentationMetrics", "ThresholdSweepF1",
           "sweep_thresholds"]


class SegmentationMetrics(nn.Module):
    """Pixel-map metrics reported at the end of a test epoch.

    ``update(probs, target, threshold)`` feeds:

    * :class:`ThresholdSweepF1` -> ``"ods"``, ``"ois"``, ``"ap"``, ``"ods_threshold"`` (König et al.: per-image
      means) and ``"ods_dataset"``, ``"ap_dataset"``, ``"ods_dataset_threshold"`` (TP / FP / FN summed over
      the whole set, the "F1" of SCNet and DeepCrack's DeepSegmentor ``prf_metrics``); the sweep uses
      ``probs > t`` at t = 0.01, ..., 0.99. Per-image ODS gives a crack-free image F1 = 0 whatever is
      predicted; the dataset figures count its false positives;
    * ``"auroc"``, ``"auprc"``: :class:`BinnedCurves` with ``binned_auc_thresholds`` uniform bins (bounded
      memory, linear time), or the exact :class:`RankCurves` with ``None`` (stores every pixel; always for
      ``unbounded`` maps); nan when the target has a single class -- for ``"auprc"`` only when it has no
      positive pixel;
    * :class:`AUPRO` (optional, exact, stores every pixel) -> ``"aupro"``;
    * at the given threshold, with a pixel positive when ``probs >= threshold`` (the convention of
      :func:`crackseg.metrics.thresholds.f1_optimal_threshold`): torchmetrics ``BinaryPrecision``,
      ``BinaryRecall``, ``BinaryF1Score``, ``BinaryJaccardIndex`` -> ``"precision"``, ``"recall"``, ``"f1"``,
      ``"iou"`` and ``"dice"`` (the same value as ``"f1"``: pixel Dice equals pixel F1), plus
      :class:`RegionF1` -> ``"region_precision"``, ``"region_recall"``, ``"region_f1"``.

    The binned AUCs and the threshold sweep expect probabilities in ``[0, 1]``: for anomaly maps with other
    ranges the caller must normalise them first (a ``ValueError`` is raised otherwise when either is
    enabled). AUPRO itself would accept any range. The threshold may change only across :meth:`reset`.

    Args:
        threshold_sweep: report ODS / OIS / AP.
        region_f1: report the region-wise metrics.
        aupro: report AUPRO (memory: 8 bytes per pixel of the whole test set).
        auc: report pixel AUROC and AUPRC.
        binned_auc_thresholds: number of thresholds of the binned AUCs, ``None`` for exact (stores every
            pixel).
        unbounded: the maps are anomaly scores of any range: no threshold sweep (ODS / OIS / AP need
            probabilities), exact rank-based AUROC / AUPRC (:class:`RankCurves`), no range check.
    """

    def __init__(
        self,
        threshold_sweep: bool = True,
        region_f1: bool = True,
        aupro: bool = False,
        auc: bool = True,
        binned_auc_thresholds: int | None = 1000,
        unbounded: bool = False,
    ) -> None:
        super().__init__()
        if unbounded:  # anomaly scores: no [0, 1] sweep; exact rank-based curves
            threshold_sweep, binned_auc_thresholds = False, None
        self.unbounded = unbounded
        self.sweep: ThresholdSweepF1 | None = ThresholdSweepF1(average="both") if threshold_sweep else None
        self.region: RegionF1 | None = RegionF1(validate_args=False) if region_f1 else None
        self.aupro: AUPRO | None = AUPRO() if aupro else None
        # Inputs of the torchmetrics metrics are validated/binarised here, so their own checks are skipped.
        self.pixel = MetricCollection(
            {
                "precision": BinaryPrecision(validate_args=False),
                "recall": BinaryRecall(validate_args=False),
                "f1": BinaryF1Score(validate_args=False),
                "iou": BinaryJaccardIndex(validate_args=False),
            }
        )
        self.binned: BinnedCurves | RankCurves | None = None
        if auc:  # exact (rank-based, every pixel stored) for unbounded scores or when asked with None
            self.binned = BinnedCurves(binned_auc_thresholds) if binned_auc_thresholds is not None else RankCurves()
        self._threshold: float | None = None

    def update(self, probs: Tensor, target: Tensor, threshold: float, pro_probs: Tensor | None = None) -> None:
        """Update every enabled metric with a batch.

        Args:
            probs: probabilities in ``[0, 1]``, ``(B, 1, H, W)`` or ``(B, H, W)``.
            target: ground truth of the same shape in ``{0, 1}``.
            threshold: binarisation threshold (``probs >= threshold``); constant between resets.
            pro_probs: another map of the same shape for AUPRO only (MSFlow scores PRO on its
                multiplicative map); None uses ``probs``.
        """
        threshold = float(threshold)
        if self._threshold is None:
            self._threshold = threshold
        elif threshold != self._threshold:
            raise ValueError(
                f"threshold changed from {self._threshold} to {threshold} without reset(); the binary "
                "metrics would mix thresholds"
            )
        probs, target = _prepare(probs, target)
        if probs.numel() == 0:
            return
        probs = probs.detach()
        if not self.unbounded and (self.sweep is not None or isinstance(self.binned, BinnedCurves)):
            lo, hi = torch.aminmax(probs)
            if bool(lo < 0) or bool(hi > 1):
                raise ValueError(
                    "SegmentationMetrics expects probabilities in [0, 1] (got range "
                    f"[{float(lo)}, {float(hi)}]); normalise anomaly maps before calling update()"
                )
        target_long = target.long()
        pred_bin = probs >= threshold

        self.pixel.update(pred_bin.long(), target_long)
        if self.region is not None:
            self.region.update(pred_bin, target)
        if self.sweep is not None:
            self.sweep.update(probs, target)
        if self.binned is not None:
            self.binned.update(probs, target)
        if self.aupro is not None:
            if pro_probs is None:
                self.aupro.update(probs, target)
            else:
                self.aupro.update(_prepare(pro_probs, target)[0].detach(), target)

    def compute(self) -> dict[str, Tensor]:
        """Return the flat dict of scalar tensors described in the class docstring."""
        out: dict[str, Tensor] = {}
        if self.sweep is not None:
            out.update(self.sweep.compute())
        if self.binned is not None:
            out.update(self.binned.compute())
        if self.aupro is not None:
            out["aupro"] = self.aupro.compute()
        pixel = self.pixel.compute()
        for key in ("precision", "recall", "f1", "iou"):
            out[key] = pixel[key].float()
        out["dice"] = out["f1"].clone()
        if self.region is not None:
            region = self.region.compute()
            out["region_precision"] = region["precision"]
            out["region_recall"] = region["recall"]
            out["region_f1"] = region["f1"]
        return out

    def reset(self) -> None:
        """Reset every metric and forget the threshold."""
        for metric in (self.sweep, self.region, self.aupro, self.pixel, self.binned):
            if metric is not None:
                metric.reset()
        self._threshold = None
