"""Threshold selection helpers used by the threshold-calibration callbacks."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["f1_optimal_threshold", "mean_std_threshold"]


def mean_std_threshold(scores: Tensor, k: float = 1.0) -> float:
    """Threshold ``mean + k * std`` of the anomaly scores of normal samples.

    ``std`` is the population standard deviation (``torch.std(correction=0)``), computed in float64 over all
    elements of ``scores``.

    Args:
        scores: scores of normal samples, any shape (flattened).
        k: number of standard deviations above the mean.

    Returns:
        The threshold as a Python float.

    Raises:
        ValueError: if there are fewer than 2 scores or a score is not finite.
    """
    values = torch.as_tensor(scores).detach().reshape(-1).double()
    if values.numel() < 2:
        raise ValueError(f"mean_std_threshold needs at least 2 scores, got {values.numel()}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("mean_std_threshold got non-finite scores")
    return float(values.mean() + k * values.std(correction=0))


def f1_optimal_threshold(scores: Tensor, targets: Tensor) -> tuple[float, float]:
    """Threshold maximising F1 over all distinct score values (exact sweep, any score range).

    A sample is predicted positive when ``score >= threshold``. Scores are sorted once in decreasing order and
    TP / FP are cumulative sums taken at the last element of every group of tied scores, so every distinct
    score is evaluated as a threshold. On ties in F1 the highest threshold is returned.

    Args:
        scores: scores (higher = more likely positive), any shape (flattened).
        targets: labels of the same number of elements in ``{0, 1}`` (int, float or bool).

    Returns:
        ``(threshold, best_f1)`` as Python floats.

    Raises:
        ValueError: if the sizes differ, ``scores`` is empty or has non-finite values, or ``targets`` has no
            positive.
    """
    s = torch.as_tensor(scores).detach().reshape(-1)
    y = torch.as_tensor(targets).detach().reshape(-1)
    if s.numel() != y.numel():
        raise ValueError(f"scores and targets differ in size: {s.numel()} vs {y.numel()}")
    if s.numel() == 0:
        raise ValueError("f1_optimal_threshold got no scores")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("f1_optimal_threshold got non-finite scores")
    y = y > 0.5 if y.is_floating_point() else y != 0
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(
            "f1_optimal_threshold needs at least one positive target; the F1-optimal threshold is undefined "
            "without positives"
        )
    order = torch.argsort(s, descending=True)
    s_sorted = s[order]
    tp = y[order].double().cumsum(0)
    predicted = torch.arange(1, s.numel() + 1, device=s.device, dtype=torch.float64)  # TP + FP
    group_end = torch.ones_like(s_sorted, dtype=torch.bool)
    group_end[:-1] = s_sorted[1:] != s_sorted[:-1]
    tp, predicted, thresholds = tp[group_end], predicted[group_end], s_sorted[group_end]
    f1 = 2 * tp / (predicted + n_pos)  # 2TP / (2TP + FP + FN), FN = n_pos - TP
    best = int(torch.argmax(f1))
    return float(thresholds[best]), float(f1[best])
