"""ODS / OIS / AP over a fixed threshold sweep: König et al.'s per-image means and DeepSegmentor's dataset sums."""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from crackseg.metrics._common import _is_empty, _prepare, _prf, _safe_div

__all__ = ["ThresholdSweepF1", "sweep_thresholds"]


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

    def macro_f1(self) -> Tensor:
        """König et al.'s official ``evaluate.py`` figure ("Macro F1"): per threshold, precision and recall
        averaged over the images (``0 / 0 -> 0``), the F1 of those two averages, best threshold. Eq. (10)'s
        ODS (``compute()["ods"]``) averages the per-image F1 instead. The official grid is 0.00, 0.01, ...,
        0.99 with ``pred > t``: pass ``thresholds=torch.arange(100) / 100`` for the exact figure."""
        if _is_empty(self.tp):
            return torch.tensor(float("nan"), device=self.device)
        n_thr = self._thresholds.numel()
        tp, fp, fn = (dim_zero_cat(s).double().view(-1, n_thr) for s in (self.tp, self.fp, self.fn))
        precision, recall, _ = _prf(tp, fp, fn)
        pr_mean, re_mean = precision.mean(0), recall.mean(0)
        f1 = _safe_div(2 * pr_mean * re_mean, pr_mean + re_mean)
        return f1.max().float()

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

        _warn_if_collapsed(tp + fp, (tp + fn)[:, 0], thr)
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


def _warn_if_collapsed(predicted: Tensor, positives: Tensor, thresholds: Tensor) -> None:
    """Warn when the maps' values (above the lowest threshold) all lie within two neighbouring threshold steps and
    more pixels than there are cracks lie there: the sweep then sees about one value and ODS / OIS / AP measure
    little more than the crack prevalence (binary or all-zero maps do not warn)."""
    totals = predicted.sum(0)  # pixels predicted crack at each threshold, summed over the images
    peak = totals.max()
    if thresholds.numel() < 3 or peak <= positives.sum() or totals[-1] != 0:
        return
    between = int(((totals > 0) & (totals < peak)).sum())
    if between <= 1 and bool(totals[0] == peak):
        step = float(thresholds[1] - thresholds[0])
        warnings.warn(f"ThresholdSweepF1: all map values lie within two steps ({step:g}) of the threshold sweep, "
                      "so ODS / OIS / AP see an almost constant map; the maps have collapsed (an under-trained "
                      "network, or maps that are not probabilities). The F1 at a calibrated threshold "
                      "(F1Threshold searches the exact values) can still be informative", stacklevel=3)
