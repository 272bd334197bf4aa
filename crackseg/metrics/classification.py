"""Image-level metrics (crack present / anomalous image) built on torchmetrics."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric, MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

__all__ = ["ImageMetrics"]

# Messages torchmetrics emits when the labels have a single class; we return nan instead.
_ONE_CLASS_WARNINGS = (
    r"No (positive|negative) samples (found )?in target.*",
    r"No (positive|negative) samples in targets.*",
)


def _dense_ranks(scores: Tensor) -> Tensor:
    """Map scores to ``[0, 1]`` by their dense rank (order and ties preserved, float64)."""
    unique, inverse = torch.unique(scores, return_inverse=True)
    return inverse.double() / max(unique.numel() - 1, 1)


class ImageMetrics(nn.Module):
    """Image-level classification metrics for the positive (crack / anomalous) class.

    ``update(scores, labels, threshold)`` predicts an image positive when ``score >= threshold`` (the
    convention of :func:`crackseg.metrics.thresholds.f1_optimal_threshold`) and feeds torchmetrics'
    ``BinaryAccuracy``, ``BinaryPrecision``, ``BinaryRecall``, ``BinaryF1Score`` and
    ``BinaryConfusionMatrix``. The raw scores and labels are kept (torchmetrics ``CatMetric``, float32) for
    the exact AUROC / AUPRC, computed by torchmetrics' functional ``binary_auroc`` /
    ``binary_average_precision`` on the dense ranks of the scores: these metrics only depend on the order of
    the scores, and the ranks lie in ``[0, 1]`` so torchmetrics never applies its automatic sigmoid (which it
    decides per batch and which saturates for large unbounded anomaly scores).

    When the labels contain a single class, ``"image_auroc"`` is nan (no exception, torchmetrics' warning is
    silenced); ``"image_auprc"`` is nan when there is no positive image. The threshold may change only across
    :meth:`reset`.

    ``compute()`` returns ``"image_accuracy"``, ``"image_precision"``, ``"image_recall"``, ``"image_f1"``,
    ``"image_auroc"``, ``"image_auprc"`` (scalar float tensors) and ``"confusion_matrix"`` (2x2 int64 tensor
    ``[[TN, FP], [FN, TP]]``).
    """

    def __init__(self) -> None:
        super().__init__()
        # Inputs are binarised here, so torchmetrics' own input checks are skipped.
        self.binary = MetricCollection(
            {
                "image_accuracy": BinaryAccuracy(validate_args=False),
                "image_precision": BinaryPrecision(validate_args=False),
                "image_recall": BinaryRecall(validate_args=False),
                "image_f1": BinaryF1Score(validate_args=False),
            }
        )
        self.confusion_matrix = BinaryConfusionMatrix(validate_args=False)
        self.scores = CatMetric(nan_strategy="disable")  # stores float32
        self.labels = CatMetric(nan_strategy="disable")
        self._threshold: float | None = None

    def update(self, scores: Tensor, labels: Tensor, threshold: float) -> None:
        """Update with a batch.

        Args:
            scores: ``(B,)`` float image scores (probabilities or unbounded anomaly scores).
            labels: ``(B,)`` labels in ``{0, 1}`` (int, float or bool).
            threshold: decision threshold (``score >= threshold`` is positive); constant between resets.
        """
        threshold = float(threshold)
        if self._threshold is None:
            self._threshold = threshold
        elif threshold != self._threshold:
            raise ValueError(
                f"threshold changed from {self._threshold} to {threshold} without reset(); the binary "
                "metrics would mix thresholds"
            )
        scores = scores.detach().reshape(-1)
        labels = labels.detach().reshape(-1)
        if scores.numel() != labels.numel():
            raise ValueError(f"scores and labels differ in size: {scores.numel()} vs {labels.numel()}")
        if scores.numel() == 0:
            return
        if labels.dtype == torch.bool:
            labels = labels.long()
        elif labels.is_floating_point():
            labels = (labels > 0.5).long()
        else:
            labels = (labels != 0).long()
        pred = (scores >= threshold).long()
        self.binary.update(pred, labels)
        self.confusion_matrix.update(pred, labels)
        self.scores.update(scores)
        self.labels.update(labels)

    def compute(self) -> dict[str, Tensor]:
        """Return the metric dict described in the class docstring (every value nan, the confusion matrix
        zeros, when no image was seen)."""
        if not self.scores.update_count:
            nan = torch.tensor(float("nan"))
            out = {key: nan.clone() for key in (*self.binary.keys(), "image_auroc", "image_auprc")}
            out["confusion_matrix"] = torch.zeros(2, 2, dtype=torch.long)
            return out
        out = {key: value.float() for key, value in self.binary.compute().items()}
        confmat = self.confusion_matrix.compute()
        scores = self.scores.compute().reshape(-1)
        labels = self.labels.compute().reshape(-1).long()
        n_pos = int(labels.sum())
        n_neg = labels.numel() - n_pos
        nan = torch.tensor(float("nan"), device=confmat.device)
        ranks = _dense_ranks(scores)
        with warnings.catch_warnings():
            for message in _ONE_CLASS_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            if n_pos > 0 and n_neg > 0:
                out["image_auroc"] = binary_auroc(ranks, labels, thresholds=None).float()
            else:
                out["image_auroc"] = nan
            if n_pos > 0:
                out["image_auprc"] = binary_average_precision(ranks, labels, thresholds=None).float()
            else:
                out["image_auprc"] = nan.clone()
        out["confusion_matrix"] = confmat
        return out

    def reset(self) -> None:
        """Reset every metric and forget the threshold."""
        self.binary.reset()
        self.confusion_matrix.reset()
        self.scores.reset()
        self.labels.reset()
        self._threshold = None
