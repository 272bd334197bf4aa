"""Region-wise (patch) precision / recall / F1 of SCNet (Sharma et al. 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from crackseg.metrics._common import _prepare, _prf

__all__ = ["RegionF1"]


class RegionF1(Metric):
    """Region-wise (patch) precision / recall / F1 of SCNet (Sharma et al. 2021, eqs. 12-14).

    Hand-written: torchmetrics has no patch-level detection metric.

    Each map is split into non-overlapping ``patch_size x patch_size`` patches; a partial patch at the bottom
    / right border counts as a patch of its real size. A ground-truth patch is positive when its crack pixels
    are ``>= gt_fraction`` of the patch's pixels. The paper says "a region is said to have a crack when the
    model can correctly detect at least 50% of the crack pixels"; the reading implemented here is:

    * GT-positive patch: TP if ``|pred & gt| >= detected_fraction * |gt|`` (in the patch), else FN;
    * GT-negative patch: FP if the predicted crack pixels are ``>= gt_fraction`` of the patch (the same rule
      as for the ground truth), else TN.

    Counts are summed over all patches of all images; ``0 / 0 -> 0`` in precision, recall and F1.

    Args:
        patch_size: side of the square patches in pixels.
        gt_fraction: fraction of crack pixels that makes a patch positive, in ``(0, 1]``.
        detected_fraction: fraction of a positive patch's crack pixels that must be predicted, in ``[0, 1]``.
        validate_args: check that ``preds`` is binary (bool or values in ``{0, 1}``).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: Tensor
    fp: Tensor
    fn: Tensor
    tn: Tensor

    def __init__(
        self,
        patch_size: int = 32,
        gt_fraction: float = 0.05,
        detected_fraction: float = 0.5,
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if not 0.0 < gt_fraction <= 1.0:
            raise ValueError(f"gt_fraction must be in (0, 1], got {gt_fraction}")
        if not 0.0 <= detected_fraction <= 1.0:
            raise ValueError(f"detected_fraction must be in [0, 1], got {detected_fraction}")
        self.patch_size = patch_size
        self.gt_fraction = gt_fraction
        self.detected_fraction = detected_fraction
        self.validate_args = validate_args
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _patch_sums(self, x: Tensor) -> Tensor:
        """Sum ``x`` (``(B, H, W)`` int) over each patch -> ``(B, nh, nw)``; zero-pads the border."""
        k = self.patch_size
        b, h, w = x.shape
        nh, nw = math.ceil(h / k), math.ceil(w / k)
        x = nn.functional.pad(x, (0, nw * k - w, 0, nh * k - h))
        return x.view(b, nh, k, nw, k).sum(dim=(2, 4))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate patch-level TP / FP / FN / TN.

        Args:
            preds: binary prediction (bool or 0/1), ``(B, 1, H, W)`` or ``(B, H, W)``.
            target: ground truth of the same shape in ``{0, 1}``.
        """
        preds, target = _prepare(preds, target)
        if preds.dtype != torch.bool:
            if self.validate_args and not bool(((preds == 0) | (preds == 1)).all()):
                raise ValueError("RegionF1 expects a binary prediction (bool or values in {0, 1})")
            preds = preds != 0
        k = self.patch_size
        _, h, w = preds.shape
        nh, nw = math.ceil(h / k), math.ceil(w / k)
        rows = (h - torch.arange(nh, device=preds.device) * k).clamp(max=k)
        cols = (w - torch.arange(nw, device=preds.device) * k).clamp(max=k)
        area = (rows[:, None] * cols[None, :]).double()  # real size of every patch

        gt_cnt = self._patch_sums(target.int()).double()
        pred_cnt = self._patch_sums(preds.int()).double()
        inter_cnt = self._patch_sums((preds & target).int()).double()

        eps = 1e-9  # counts are integers: absorbs rounding of fraction * count when it is an integer
        gt_pos = gt_cnt >= self.gt_fraction * area - eps
        pred_pos = pred_cnt >= self.gt_fraction * area - eps
        detected = inter_cnt >= self.detected_fraction * gt_cnt - eps

        self.tp += (gt_pos & detected).sum()
        self.fn += (gt_pos & ~detected).sum()
        self.fp += (~gt_pos & pred_pos).sum()
        self.tn += (~gt_pos & ~pred_pos).sum()

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"precision", "recall", "f1"}`` as scalar float tensors."""
        precision, recall, f1 = _prf(self.tp.double(), self.fp.double(), self.fn.double())
        return {"precision": precision.float(), "recall": recall.float(), "f1": f1.float()}
