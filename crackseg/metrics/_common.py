"""Input handling shared by the pixel metrics: shapes, binarised targets, safe ratios, empty states."""

from __future__ import annotations

import torch
from torch import Tensor


def _to_bhw(x: Tensor, name: str = "input") -> Tensor:
    """Return ``x`` as a ``(B, H, W)`` tensor (squeezing a singleton channel dimension)."""
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
        return x[:, 0]
    if x.ndim == 3:
        return x
    raise ValueError(f"{name} must have shape (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")


def _binarize_target(target: Tensor) -> Tensor:
    """Return a bool mask of the positive class: ``target > 0.5`` for float, ``target != 0`` otherwise."""
    if target.dtype == torch.bool:
        return target
    if target.is_floating_point():
        return target > 0.5
    return target != 0


def _prepare(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Reshape ``preds``/``target`` to ``(B, H, W)``, check shapes and binarise the target."""
    preds = _to_bhw(preds, "preds")
    target = _to_bhw(target, "target")
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
    return preds, _binarize_target(target)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """Element-wise ``num / den`` with ``0 / 0 -> 0`` (``np.nan_to_num`` as in König's evaluate.py)."""
    return torch.nan_to_num(num / den, nan=0.0)


def _prf(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F1 from float counts, each with ``0 / 0 -> 0``."""
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1


def _is_empty(state: Tensor | list[Tensor]) -> bool:
    if isinstance(state, list):
        return all(x.numel() == 0 for x in state)
    return state.numel() == 0
