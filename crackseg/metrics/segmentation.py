"""Pixel-map metrics for crack segmentation and anomaly localisation.

All metrics are computed for the positive class (crack / anomalous pixel). Inputs are float maps of
shape ``(B, 1, H, W)`` or ``(B, H, W)`` and targets of the same shape with values in ``{0, 1}`` (int, float
or bool).

Hand-written metrics (torchmetrics has no equivalent) are :class:`~torchmetrics.Metric` subclasses whose
states carry a ``dist_reduce_fx`` so they synchronise under DDP:

* :class:`ThresholdSweepF1` -- ODS / OIS / AP of König et al.
* :class:`RegionF1` -- region-wise (patch) F1 of SCNet (Sharma et al. 2021).
* :class:`AUPRO` -- area under the per-region-overlap curve (MVTec AD / anomalib), exact.

:class:`SegmentationMetrics` bundles them with torchmetrics' pixel metrics for a test epoch.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection, SumMetric
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat

from crackseg.metrics.classification import _dense_ranks

__all__ = ["AUPRO", "BinnedCurves", "RankCurves", "RegionF1", "SegmentationMetrics", "ThresholdSweepF1"]

# Messages torchmetrics emits when the target has a single class; we return nan instead (see compute()).
_ONE_CLASS_WARNINGS = (
    r"No (positive|negative) samples (found )?in target.*",
    r"No (positive|negative) samples in targets.*",
)


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


def sweep_thresholds(count: int = 99) -> Tensor:
    """``count`` evenly spaced thresholds from 0.01 to 0.99 (float64), each the nearest double to its decimal.

    Built as integers divided by their denominator: ``linspace(0.01, 0.99, 99)`` is one ulp low at 7 values
    (0.07 becomes 0.06999...), so a prediction of exactly 0.07 would count as above it, unlike in the
    papers' ``np.arange(1, 100) / 100`` grids.
    """
    if count == 1:
        return torch.tensor([0.01], dtype=torch.float64)
    # t_k = 0.01 + 0.98 k / (count - 1) = (count - 1 + 98 k) / (100 (count - 1)), exact in integers
    k = torch.arange(count, dtype=torch.float64)
    return (count - 1 + 98 * k) / (100 * (count - 1))


class ThresholdSweepF1(Metric):
    """ODS, OIS and AP over a fixed threshold sweep (König et al. 2021, eqs. 9-11).

    Reference: J. König, M. D. Jenkins, M. Mannion, P. Barrie, G. Morison, "Optimized deep encoder-decoder
    methods for crack segmentation", Digital Signal Processing, 2021.

    Hand-written: torchmetrics has no per-image (OIS) / dataset-scale (ODS) threshold sweep.

    A pixel is predicted crack when ``pred > t``. For every image ``i`` and threshold ``t`` the state keeps
    TP, FP and FN (``(N_img, T)`` counts, concatenated across updates and DDP ranks), so memory is
    ``O(images x thresholds)``. The counts are stored flattened as float32 (exact up to 2**24 pixels per
    image), the only layout torchmetrics can synchronise when a DDP rank received no data. From them, with
    ``0 / 0 -> 0`` everywhere (``np.nan_to_num`` as in König's ``evaluate.py``; note that an image without
    cracks therefore has F1 = 0 at every threshold):

    * ``PR = TP / (TP + FP)``, ``RE = TP / (TP + FN)``, ``F1 = 2 PR RE / (PR + RE)``.
    * OIS = ``mean_i max_t F1_t^i`` (eq. 9), always per image.
    * ODS = ``max_t mean_i F1_t^i`` (eq. 10) for ``average="image"``; for ``average="dataset"``
      (DeepSegmentor ``prf_metrics`` style) ``max_t F1_t`` with F1 from TP/FP/FN summed over all images.
      ``ods_threshold`` is the maximising threshold (the lowest one on ties).
    * AP: the paper's eq. 11 reads ``AP = sum_t (1/T)(RE_t - RE_{t-0.01}) PR_t``; the ``1/T`` factor would
      cap AP at ``1/T`` whereas the paper reports 0.4-0.9, so the factor is dropped and the step-wise area
      ``AP = sum_t |RE_t - RE_{t+1}| PR_t`` is computed over thresholds in increasing order, with the end
      point ``RE = 0`` appended at ``t -> 1`` (the last term uses ``RE_T - 0``). ``PR_t``/``RE_t`` are the
      means over images (``average="image"``) or come from the summed counts (``average="dataset"``).

    Predictions are expected to be probabilities in ``[0, 1]`` (not checked here).

    Args:
        thresholds: number ``T`` of evenly spaced thresholds from 0.01 to 0.99 (:func:`sweep_thresholds`;
            default 99: exactly 0.01, 0.02, ..., 0.99) or a 1-D tensor of thresholds (sorted internally).
        average: ``"image"`` (König) or ``"dataset"`` (DeepSegmentor, SCNet) for ODS and AP; ``"both"``
            returns the image averages under their names and the dataset ones as ``"ods_dataset"``,
            ``"ap_dataset"``, ``"ods_dataset_threshold"`` (one state: the dataset sums come from the same
            per-image counts).
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    tp: list[Tensor] | Tensor
    fp: list[Tensor] | Tensor
    fn: list[Tensor] | Tensor

    def __init__(
        self,
        thresholds: int | Tensor = 99,
        average: Literal["image", "dataset", "both"] = "image",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(thresholds, int):
            if thresholds < 1:
                raise ValueError(f"thresholds must be >= 1, got {thresholds}")
            thr = sweep_thresholds(thresholds)
        else:
            thr = torch.as_tensor(thresholds, dtype=torch.float64).flatten()
            if thr.numel() == 0:
                raise ValueError("thresholds must not be empty")
            thr = thr.sort().values
        if average not in ("image", "dataset", "both"):
            raise ValueError(f"average must be 'image', 'dataset' or 'both', got {average!r}")
        self.average = average
        # float64 master copy on the CPU; not a buffer, so `.half()` cannot round it.
        self._thresholds = thr
        self._thr_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self.add_state("tp", default=[], dist_reduce_fx="cat")
        self.add_state("fp", default=[], dist_reduce_fx="cat")
        self.add_state("fn", default=[], dist_reduce_fx="cat")

    @property
    def thresholds(self) -> Tensor:
        """Sorted thresholds (float64, CPU)."""
        return self._thresholds

    def _thresholds_as(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (device, dtype)
        if key not in self._thr_cache:
            self._thr_cache[key] = self._thresholds.to(device=device, dtype=dtype)
        return self._thr_cache[key]

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate per-image TP/FP/FN at every threshold.

        Args:
            preds: probabilities, ``(B, 1, H, W)`` or ``(B, H, W)``.
            target: ground truth of the same shape in ``{0, 1}``.
        """
        preds, target = _prepare(preds, target)
        b = preds.shape[0]
        if b == 0:
            return
        dtype = torch.promote_types(preds.dtype, torch.float32)
        thr = self._thresholds_as(preds.device, dtype)
        n_thr = thr.numel()
        p = preds.reshape(b, -1).to(dtype)
        g = target.reshape(b, -1)
        # bucket k = number of thresholds strictly below the prediction, i.e. pred > thr[j] for all j < k.
        bucket = torch.bucketize(p, thr)
        offset = torch.arange(b, device=p.device).unsqueeze(1) * (n_thr + 1)
        code = (bucket + offset) * 2 + g.long()  # one bincount for (image, bucket, class)
        hist = torch.bincount(code.reshape(-1), minlength=b * (n_thr + 1) * 2).view(b, n_thr + 1, 2)
        # pixels with pred > thr[j] = sum of the buckets k >= j + 1 (reverse cumulative sum).
        above = hist.flip(1).cumsum(1).flip(1)[:, 1:]
        tp = above[..., 1]
        fp = above[..., 0]
        fn = hist[..., 1].sum(1, keepdim=True) - tp
        self.tp.append(tp.reshape(-1).float())
        self.fp.append(fp.reshape(-1).float())
        self.fn.append(fn.reshape(-1).float())

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"ods", "ois", "ap", "ods_threshold"}`` as scalar float tensors (nan without data); with
        ``average="both"`` also ``"ods_dataset"``, ``"ap_dataset"`` and ``"ods_dataset_threshold"``."""
        # (average, suffix of its keys)
        averages = [("image", ""), ("dataset", "_dataset")] if self.average == "both" else [(self.average, "")]
        if _is_empty(self.tp):
            nan = torch.tensor(float("nan"), device=self.device)
            keys = ["ois"] + [f"{name}{suffix}" for _, suffix in averages for name in ("ods", "ap")]
            keys += [f"ods{suffix}_threshold" for _, suffix in averages]
            return {key: nan.clone() for key in keys}
        thr = self._thresholds
        tp = dim_zero_cat(self.tp).double().view(-1, thr.numel())
        fp = dim_zero_cat(self.fp).double().view(-1, thr.numel())
        fn = dim_zero_cat(self.fn).double().view(-1, thr.numel())
        thr = thr.to(tp.device)

        pr_img, re_img, f1_img = _prf(tp, fp, fn)  # (N, T)
        out = {"ois": f1_img.max(dim=1).values.mean().float()}
        for average, suffix in averages:
            if average == "image":
                pr_t, re_t, f1_t = pr_img.mean(0), re_img.mean(0), f1_img.mean(0)
            else:
                pr_t, re_t, f1_t = _prf(tp.sum(0), fp.sum(0), fn.sum(0))
            best = torch.argmax(f1_t)
            re_next = torch.cat([re_t[1:], re_t.new_zeros(1)])
            out[f"ods{suffix}"] = f1_t[best].float()
            out[f"ap{suffix}"] = ((re_t - re_next).abs() * pr_t).sum().float()
            out[f"ods{suffix}_threshold"] = thr[best].float()
        return out


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


class SegmentationMetrics(nn.Module):
    """Pixel-map metrics reported at the end of a test epoch.

    ``update(probs, target, threshold)`` feeds:

    * :class:`ThresholdSweepF1` -> ``"ods"``, ``"ois"``, ``"ap"``, ``"ods_threshold"`` (König et al.: per-image
      means) and ``"ods_dataset"``, ``"ap_dataset"``, ``"ods_dataset_threshold"`` (TP / FP / FN summed over
      the whole set, the "F1" of SCNet and DeepCrack's DeepSegmentor ``prf_metrics``); the sweep uses
      ``probs > t`` at t = 0.01, ..., 0.99. Per-image ODS gives a crack-free image F1 = 0 whatever is
      predicted; the dataset figures count its false positives;
    * ``"auroc"``, ``"auprc"``: :class:`BinnedCurves` with ``binned_auc_thresholds`` uniform bins (bounded
      memory, linear time), or torchmetrics' exact ``BinaryAUROC`` / ``BinaryAveragePrecision`` with ``None``
      (stores every pixel); nan when the target has a single class -- for ``"auprc"`` only when it has no
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
        self.auc: MetricCollection | None = None
        self.num_pos: SumMetric | None = None
        self.num_neg: SumMetric | None = None
        self.binned: BinnedCurves | RankCurves | None = None
        if auc and unbounded:
            self.binned = RankCurves()
        elif auc and binned_auc_thresholds is not None:
            self.binned = BinnedCurves(binned_auc_thresholds)
        elif auc:
            self.auc = MetricCollection(
                {
                    "auroc": BinaryAUROC(thresholds=binned_auc_thresholds, validate_args=False),
                    "auprc": BinaryAveragePrecision(thresholds=binned_auc_thresholds, validate_args=False),
                }
            )
            self.num_pos = SumMetric()
            self.num_neg = SumMetric()
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
        if not self.unbounded and (self.sweep is not None or self.auc is not None or self.binned is not None):
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
        if self.auc is not None:
            assert self.num_pos is not None and self.num_neg is not None
            self.auc.update(probs, target_long)
            n_pos = target.sum()
            self.num_pos.update(n_pos)
            self.num_neg.update(target.numel() - n_pos)
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
        if self.auc is not None:
            assert self.num_pos is not None and self.num_neg is not None
            n_pos = float(self.num_pos.compute())
            n_neg = float(self.num_neg.compute())
            with warnings.catch_warnings():
                for message in _ONE_CLASS_WARNINGS:
                    warnings.filterwarnings("ignore", message=message)
                auc = self.auc.compute()
            nan = torch.tensor(float("nan"), device=auc["auroc"].device)
            out["auroc"] = auc["auroc"].float() if n_pos > 0 and n_neg > 0 else nan
            out["auprc"] = auc["auprc"].float() if n_pos > 0 else nan.clone()
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
        for metric in (self.sweep, self.region, self.aupro, self.pixel, self.auc, self.num_pos, self.num_neg,
                       self.binned):
            if metric is not None:
                metric.reset()
        self._threshold = None
