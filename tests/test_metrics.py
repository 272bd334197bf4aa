"""Tests for crackseg.metrics against hand-computed values and literal reference implementations."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_jaccard_index,
    binary_precision,
    binary_precision_recall_curve,
    binary_recall,
)

from crackseg.metrics import (
    AUPRO,
    ImageMetrics,
    RegionF1,
    SegmentationMetrics,
    ThresholdSweepF1,
    f1_optimal_threshold,
    mean_std_threshold,
)

# --------------------------------------------------------------------------------------------------
# ThresholdSweepF1
# --------------------------------------------------------------------------------------------------

# Two 2x2 images, thresholds {0.25, 0.5, 0.75}, prediction = pred > t.
#   image A (gt = top row):  t=.25 TP2 FP1 FN0 -> PR 2/3 RE 1  F1 .8 | t=.5 TP2 FP0 FN0 -> 1 1 1
#                            t=.75 TP1 FP0 FN1 -> PR 1 RE .5 F1 2/3
#   image B (gt = anti-diagonal, positives 0.4 / 0.7, negatives 0.8 / 0.2):
#     t=.25 TP2 FP1 FN0 -> 2/3 1 .8 | t=.5 TP1 FP1 FN1 -> .5 .5 .5 | t=.75 TP0 FP1 FN2 -> 0 0 0
HAND_PREDS = torch.tensor([[[0.9, 0.6], [0.3, 0.1]], [[0.8, 0.4], [0.7, 0.2]]])
HAND_TARGET = torch.tensor([[[1, 1], [0, 0]], [[0, 1], [1, 0]]])
HAND_THR = torch.tensor([0.25, 0.5, 0.75])


def test_sweep_hand_example_image_average() -> None:
    metric = ThresholdSweepF1(thresholds=HAND_THR)
    metric.update(HAND_PREDS.unsqueeze(1), HAND_TARGET.unsqueeze(1))
    out = metric.compute()
    # OIS = mean(1, .8); mean F1_t = [.8, .75, 1/3] -> ODS .8 at .25
    # mean PR_t = [2/3, .75, .5], mean RE_t = [1, .75, .25]; AP = .25*2/3 + .5*.75 + .25*.5
    assert out["ois"].item() == pytest.approx(0.9)
    assert out["ods"].item() == pytest.approx(0.8)
    assert out["ods_threshold"].item() == pytest.approx(0.25)
    assert out["ap"].item() == pytest.approx(0.25 * 2 / 3 + 0.5 * 0.75 + 0.25 * 0.5)


def test_sweep_hand_example_dataset_average() -> None:
    # thresholds unsorted on purpose
    metric = ThresholdSweepF1(thresholds=torch.tensor([0.75, 0.25, 0.5]), average="dataset")
    metric.update(HAND_PREDS, HAND_TARGET)
    out = metric.compute()
    # summed: t=.25 TP4 FP2 FN0 (PR 2/3 RE 1 F1 .8), t=.5 TP3 FP1 FN1 (.75 .75 .75),
    #         t=.75 TP1 FP1 FN3 (.5 .25 1/3)
    assert out["ods"].item() == pytest.approx(0.8)
    assert out["ods_threshold"].item() == pytest.approx(0.25)
    assert out["ois"].item() == pytest.approx(0.9)
    assert out["ap"].item() == pytest.approx(0.25 * 2 / 3 + 0.5 * 0.75 + 0.25 * 0.5)


def test_sweep_empty_image_and_ties() -> None:
    # An image without crack and no prediction: all counts 0 -> F1 = 0 at every threshold
    # (0/0 -> 0, as König).
    # A prediction exactly equal to the threshold is not a crack (pred > t).
    preds = torch.tensor([[[0.5, 0.5]], [[0.0, 0.0]]])
    target = torch.tensor([[[1, 0]], [[0, 0]]])
    metric = ThresholdSweepF1(thresholds=torch.tensor([0.4, 0.5]))
    metric.update(preds, target)
    out = metric.compute()
    # image 1: t=.4 TP1 FP1 -> F1 2/3; t=.5 nothing predicted -> 0. image 2: 0, 0.
    assert out["ois"].item() == pytest.approx((2 / 3 + 0) / 2)
    assert out["ods"].item() == pytest.approx(1 / 3)
    # PR_t = [.25, 0], RE_t = [.5, 0]; AP = (.5 - 0) * .25 + 0
    assert out["ap"].item() == pytest.approx(0.125)


def _sweep_reference(
    preds: np.ndarray, target: np.ndarray, thr: np.ndarray, average: str
) -> dict[str, float]:
    """Literal double loop over images and thresholds (König eqs. 9-11, AP without the 1/T factor)."""
    n, t_count = preds.shape[0], len(thr)
    tp = np.zeros((n, t_count))
    fp = np.zeros((n, t_count))
    fn = np.zeros((n, t_count))
    for i in range(n):
        for j, t in enumerate(thr):
            pred = preds[i] > t
            gt = target[i] == 1
            tp[i, j] = np.sum(pred & gt)
            fp[i, j] = np.sum(pred & ~gt)
            fn[i, j] = np.sum(~pred & gt)
    with np.errstate(invalid="ignore", divide="ignore"):
        pr = np.nan_to_num(tp / (tp + fp))
        re = np.nan_to_num(tp / (tp + fn))
        f1 = np.nan_to_num(2 * pr * re / (pr + re))
        ois = float(np.mean(f1.max(axis=1)))
        if average == "image":
            f1_t, pr_t, re_t = f1.mean(0), pr.mean(0), re.mean(0)
        else:
            stp, sfp, sfn = tp.sum(0), fp.sum(0), fn.sum(0)
            pr_t = np.nan_to_num(stp / (stp + sfp))
            re_t = np.nan_to_num(stp / (stp + sfn))
            f1_t = np.nan_to_num(2 * pr_t * re_t / (pr_t + re_t))
    ap = 0.0
    for j in range(t_count):
        re_next = re_t[j + 1] if j + 1 < t_count else 0.0
        ap += abs(re_t[j] - re_next) * pr_t[j]
    best = int(np.argmax(f1_t))
    return {"ods": float(f1_t[best]), "ois": ois, "ap": ap, "ods_threshold": float(thr[best])}


@pytest.mark.parametrize("average", ["image", "dataset"])
def test_sweep_matches_reference_and_batching(average: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n = 5
    target = (torch.rand(n, 1, 12, 10, generator=gen) > 0.7).long()
    # correlated scores rounded to 0.01 so that many predictions tie with thresholds
    preds = (0.5 * target + 0.6 * torch.rand(n, 1, 12, 10, generator=gen)).clamp(0, 1)
    preds = torch.round(preds * 100) / 100
    target[3] = 0  # an image without crack
    metric = ThresholdSweepF1(average=average)
    metric.update(preds, target)
    out = metric.compute()
    # compare in float32 like the metric does for float32 predictions
    thr32 = torch.linspace(0.01, 0.99, 99, dtype=torch.float64).float().numpy()
    ref = _sweep_reference(preds[:, 0].numpy(), target[:, 0].numpy(), thr32, average)
    for key in ("ods", "ois", "ap", "ods_threshold"):
        assert out[key].item() == pytest.approx(ref[key], abs=1e-6), key

    batched = ThresholdSweepF1(average=average)
    batched.update(preds[:2], target[:2].bool())
    batched.update(preds[2:, 0], target[2:, 0].float())
    out_b = batched.compute()
    for key in out:
        assert out_b[key].item() == pytest.approx(out[key].item(), abs=1e-7), key

    # DDP-style merge of two ranks' states (uses the dist_reduce_fx of every state)
    rank0, rank1 = ThresholdSweepF1(average=average), ThresholdSweepF1(average=average)
    rank0.update(preds[:3], target[:3])
    rank1.update(preds[3:], target[3:])
    rank0.merge_state(rank1)
    for key, value in rank0.compute().items():
        assert value.item() == pytest.approx(out[key].item(), abs=1e-7), key


def test_sweep_default_thresholds_and_state_size() -> None:
    metric = ThresholdSweepF1()
    assert metric.thresholds.numel() == 99
    assert metric.thresholds[0].item() == pytest.approx(0.01)
    assert metric.thresholds[49].item() == pytest.approx(0.50)
    assert metric.thresholds[-1].item() == pytest.approx(0.99)
    metric.update(torch.rand(3, 1, 64, 64), torch.randint(0, 2, (3, 1, 64, 64)))
    assert metric.tp[0].shape == (3 * 99,)  # O(images x thresholds), not pixels


# --------------------------------------------------------------------------------------------------
# RegionF1
# --------------------------------------------------------------------------------------------------


def _fill(mask: torch.Tensor, r0: int, c0: int, count: int) -> None:
    """Set ``count`` pixels of the 32x32 patch whose corner is (r0, c0), row-major from the corner."""
    idx = torch.arange(count)
    mask[r0 + idx // 32, c0 + idx % 32] = 1


def test_region_f1_known_patches() -> None:
    gt = torch.zeros(64, 64, dtype=torch.long)
    pred = torch.zeros(64, 64, dtype=torch.long)
    # patch (0,0): 100 crack px (>= 0.05*1024 = 51.2 -> positive), 60 of them predicted (>= 50) -> TP
    _fill(gt, 0, 0, 100)
    _fill(pred, 0, 0, 60)
    # patch (0,1): 100 crack px, 49 predicted (< 50) -> FN
    _fill(gt, 0, 32, 100)
    _fill(pred, 0, 32, 49)
    # patch (1,0): 51 crack px (< 51.2 -> negative), 52 px predicted (>= 51.2) -> FP
    _fill(gt, 32, 0, 51)
    _fill(pred, 32, 0, 52)
    # patch (1,1): no crack, 51 px predicted (< 51.2) -> TN
    _fill(pred, 32, 32, 51)
    metric = RegionF1()
    metric.update(pred[None, None], gt[None, None])
    assert (metric.tp.item(), metric.fn.item(), metric.fp.item(), metric.tn.item()) == (1, 1, 1, 1)
    out = metric.compute()
    assert out["precision"].item() == pytest.approx(0.5)
    assert out["recall"].item() == pytest.approx(0.5)
    assert out["f1"].item() == pytest.approx(0.5)

    # exactly half of the crack pixels detected counts as detected; bool input
    pred2 = pred.clone().bool()
    _fill(pred2, 0, 32, 50)
    metric2 = RegionF1()
    metric2.update(pred2[None], gt[None].float())
    assert (metric2.tp.item(), metric2.fn.item(), metric2.fp.item(), metric2.tn.item()) == (2, 0, 1, 1)
    out2 = metric2.compute()
    assert out2["precision"].item() == pytest.approx(2 / 3)
    assert out2["recall"].item() == pytest.approx(1.0)
    assert out2["f1"].item() == pytest.approx(0.8)


def test_region_f1_partial_border_patches_and_batching() -> None:
    # 40x40 map, patch 32 -> patches of 32x32, 32x8, 8x32 and 8x8 pixels
    gt = torch.zeros(40, 40, dtype=torch.long)
    pred = torch.zeros(40, 40, dtype=torch.long)
    # 8x8 corner patch (64 px; positive needs >= 3.2): 4 crack px, 2 predicted (>= 0.5*4) -> TP
    gt[32, 32:36] = 1
    pred[32, 32:34] = 1
    # 32x8 right patch (256 px; threshold 12.8): 12 crack px -> negative; 13 predicted -> FP
    gt[0:12, 32] = 1
    pred[0:13, 33] = 1
    # 8x32 bottom patch (256 px): 13 crack px -> positive; none predicted -> FN
    gt[33, 0:13] = 1
    # 32x32 patch: empty -> TN
    metric = RegionF1()
    metric.update(pred[None], gt[None])
    assert (metric.tp.item(), metric.fn.item(), metric.fp.item(), metric.tn.item()) == (1, 1, 1, 1)

    # two images in one batch == two batches == merged states of two "ranks"
    preds = torch.stack([pred, torch.flip(pred, dims=(0,))])
    gts = torch.stack([gt, torch.flip(gt, dims=(0,))])
    one = RegionF1()
    one.update(preds, gts)
    two = RegionF1()
    two.update(preds[:1], gts[:1])
    two.update(preds[1:], gts[1:])
    other = RegionF1()
    other.update(preds[1:], gts[1:])
    merged = RegionF1()
    merged.update(preds[:1], gts[:1])
    merged.merge_state(other)
    for m in (two, merged):
        for key, value in m.compute().items():
            assert value.item() == pytest.approx(one.compute()[key].item()), key


def test_region_f1_rejects_probabilities() -> None:
    with pytest.raises(ValueError, match="binary"):
        RegionF1().update(torch.full((1, 8, 8), 0.7), torch.zeros(1, 8, 8))


# --------------------------------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------------------------------


def _aupro_reference(scores: np.ndarray, target: np.ndarray, fpr_limit: float) -> float:
    """Slow reference: loop over thresholds = distinct scores (descending), PRO = mean per-region overlap."""
    masks = []
    for img in range(target.shape[0]):
        labels, n = ndimage.label(target[img], structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            region = np.zeros(target.shape, dtype=bool)
            region[img] = labels == r
            masks.append(region)
    normal = target == 0
    points = [(0.0, 0.0)]
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        fpr = np.sum(pred & normal) / np.sum(normal)
        pro = np.mean([np.sum(pred & m) / np.sum(m) for m in masks])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y) / 2
            break
    return area / fpr_limit


def _aupro_example() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    target = torch.zeros(3, 1, 10, 10, dtype=torch.long)
    target[0, 0, 1:3, 1:4] = 1  # 6 px region
    target[0, 0, 5, 5] = 1  # single pixel region ...
    target[0, 0, 6, 6] = 1  # ... diagonally connected to this one (8-connectivity -> one region of 2 px)
    target[0, 0, 8:10, 0:10] = 1  # 20 px region
    target[1, 0, 4:7, 2] = 1  # 3 px region
    # image 2: no region, only normal pixels
    scores = torch.randint(0, 25, (3, 1, 10, 10), generator=gen).float() + 15.0 * target  # ties + signal
    scores[2] += 5.0  # shift the normal-only image
    return scores, target


def test_aupro_hand_example() -> None:
    # 1x4 map, scores 4 3 2 1, gt 1 0 1 0 -> two 1-px regions, 2 normal px.
    # curve (0,0) (0,.5) (.5,.5) (.5,1) (1,1): area to FPR 1 = .75; to .3: .3 * .5 -> normalised .5
    scores = torch.tensor([[[4.0, 3.0, 2.0, 1.0]]])
    target = torch.tensor([[[1, 0, 1, 0]]])
    full = AUPRO(fpr_limit=1.0)
    full.update(scores, target)
    assert full.compute().item() == pytest.approx(0.75)
    assert full.num_regions.item() == 2
    part = AUPRO()
    part.update(scores, target)
    assert part.compute().item() == pytest.approx(0.5)


def test_aupro_perfect_detector() -> None:
    _, target = _aupro_example()
    metric = AUPRO()
    metric.update(target.float() * 3.0 - 1.0, target)
    assert metric.compute().item() == pytest.approx(1.0)


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_reference(fpr_limit: float) -> None:
    scores, target = _aupro_example()
    metric = AUPRO(fpr_limit=fpr_limit)
    metric.update(scores, target)
    assert metric.num_regions.item() == 4
    ref = _aupro_reference(scores[:, 0].numpy(), target[:, 0].numpy(), fpr_limit)
    assert 0.0 < ref < 1.0
    assert metric.compute().item() == pytest.approx(ref, abs=1e-6)


def test_aupro_monotone_invariance_and_batching() -> None:
    scores, target = _aupro_example()
    metric = AUPRO()
    metric.update(scores, target)
    base = metric.compute().item()
    transforms = (lambda s: 3.0 * s - 7.0, lambda s: torch.exp(s / 10.0), lambda s: torch.sigmoid(s / 10.0))
    for transform in transforms:
        other = AUPRO()
        other.update(transform(scores), target)
        assert other.compute().item() == pytest.approx(base, abs=1e-6)

    batched = AUPRO()
    batched.update(scores[:2], target[:2])
    batched.update(scores[2:, 0], target[2:, 0].bool())
    assert batched.compute().item() == pytest.approx(base, abs=1e-7)

    rank0, rank1 = AUPRO(), AUPRO()
    rank0.update(scores[:1], target[:1])
    rank1.update(scores[1:], target[1:])
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(base, abs=1e-7)


def test_aupro_without_regions_is_nan() -> None:
    metric = AUPRO()
    metric.update(torch.rand(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(metric.compute().item())


# --------------------------------------------------------------------------------------------------
# SegmentationMetrics
# --------------------------------------------------------------------------------------------------


def test_segmentation_metrics_bundle() -> None:
    gen = torch.Generator().manual_seed(2)
    target = (torch.rand(4, 1, 40, 40, generator=gen) > 0.9).long()
    probs = (0.4 * target + 0.6 * torch.rand(4, 1, 40, 40, generator=gen)).clamp(0, 1)
    bundle = SegmentationMetrics(aupro=True, binned_auc_thresholds=None)
    bundle.update(probs[:2], target[:2], threshold=0.5)
    bundle.update(probs[2:], target[2:], threshold=0.5)
    out = bundle.compute()
    assert set(out) == {
        "ods",
        "ois",
        "ap",
        "ods_threshold",
        "ods_dataset",
        "ap_dataset",
        "ods_dataset_threshold",
        "auroc",
        "auprc",
        "aupro",
        "precision",
        "recall",
        "f1",
        "iou",
        "dice",
        "region_precision",
        "region_recall",
        "region_f1",
    }
    pred = (probs >= 0.5).long()
    assert out["precision"].item() == pytest.approx(binary_precision(pred, target).item())
    assert out["recall"].item() == pytest.approx(binary_recall(pred, target).item())
    assert out["f1"].item() == pytest.approx(binary_f1_score(pred, target).item())
    assert out["dice"].item() == pytest.approx(out["f1"].item())
    assert out["iou"].item() == pytest.approx(binary_jaccard_index(pred, target).item())
    assert out["auroc"].item() == pytest.approx(binary_auroc(probs, target).item(), abs=1e-6)
    assert out["auprc"].item() == pytest.approx(binary_average_precision(probs, target).item(), abs=1e-6)
    sweep = ThresholdSweepF1()
    sweep.update(probs, target)
    for key, value in sweep.compute().items():
        assert out[key].item() == pytest.approx(value.item()), key
    region = RegionF1()
    region.update(pred, target)
    assert out["region_f1"].item() == pytest.approx(region.compute()["f1"].item())
    aupro = AUPRO()
    aupro.update(probs, target)
    assert out["aupro"].item() == pytest.approx(aupro.compute().item())

    with pytest.raises(ValueError, match="threshold"):
        bundle.update(probs, target, threshold=0.4)
    bundle.reset()
    bundle.update(probs, target, threshold=0.4)  # allowed after reset
    assert out["f1"].item() != pytest.approx(bundle.compute()["f1"].item())


def test_segmentation_metrics_binned_and_options() -> None:
    gen = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 32, 32, generator=gen) > 0.8).long()
    probs = (0.5 * target + 0.5 * torch.rand(2, 32, 32, generator=gen)).clamp(0, 1)
    bundle = SegmentationMetrics(threshold_sweep=False, region_f1=False)
    bundle.update(probs, target, 0.5)
    out = bundle.compute()
    assert set(out) == {"auroc", "auprc", "precision", "recall", "f1", "iou", "dice"}
    assert out["auroc"].item() == pytest.approx(binary_auroc(probs, target).item(), abs=2e-2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bundle.update(probs * 3, target, 0.5)


def test_segmentation_metrics_single_class_auc_is_nan() -> None:
    bundle = SegmentationMetrics(threshold_sweep=False, region_f1=False)
    bundle.update(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = bundle.compute()
    assert math.isnan(out["auroc"].item())
    assert math.isnan(out["auprc"].item())


# --------------------------------------------------------------------------------------------------
# ImageMetrics
# --------------------------------------------------------------------------------------------------


def test_image_metrics_hand_example() -> None:
    metrics = ImageMetrics()
    # score >= 3 is positive: preds 0 1 1 1 0 0, labels 0 0 1 1 1 0 -> TN2 FP1 FN1 TP2
    metrics.update(torch.tensor([1.0, 5.0, 100.0]), torch.tensor([0, 0, 1]), threshold=3.0)
    metrics.update(torch.tensor([3.0, 0.5, 0.9]), torch.tensor([1, 1, 0]), threshold=3.0)
    out = metrics.compute()
    assert out["confusion_matrix"].tolist() == [[2, 1], [1, 2]]
    assert out["image_accuracy"].item() == pytest.approx(4 / 6)
    assert out["image_precision"].item() == pytest.approx(2 / 3)
    assert out["image_recall"].item() == pytest.approx(2 / 3)
    assert out["image_f1"].item() == pytest.approx(2 / 3)
    # positives 100, 3, 0.5 vs negatives 1, 5, 0.9: pairs won = 3 + 2 + 0 out of 9 (batch 2 lies in [0, 1]
    # and batch 1 does not: no per-batch sigmoid may break the ranking)
    assert out["image_auroc"].item() == pytest.approx(5 / 9)
    # ranking 100(+) 5(-) 3(+) 1(-) .9(-) .5(+): precision at each positive 1/1, 2/3, 3/6
    assert out["image_auprc"].item() == pytest.approx((1 / 1 + 2 / 3 + 3 / 6) / 3)
    with pytest.raises(ValueError, match="threshold"):
        metrics.update(torch.tensor([1.0]), torch.tensor([1]), threshold=2.0)
    metrics.reset()
    metrics.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), threshold=2.0)
    assert metrics.compute()["confusion_matrix"].tolist() == [[1, 0], [0, 1]]


def test_image_metrics_single_class_auroc_is_nan() -> None:
    for labels in (torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])):
        metrics = ImageMetrics()
        metrics.update(torch.tensor([0.2, 0.7, 0.9]), labels, threshold=0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = metrics.compute()
        assert math.isnan(out["image_auroc"].item())
    assert out["image_auprc"].item() == pytest.approx(1.0)  # only positives: AP defined (= 1)


# --------------------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------------------


def test_f1_optimal_threshold_hand_example() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    targets = torch.tensor([1, 0, 1, 1, 0, 0])
    # t = .9 .8 .7 .6 .5 .4 -> F1 = 2TP / (TP + FP + P) = 2/4, 2/5, 4/6, 6/7, 6/8, 6/9
    thr, f1 = f1_optimal_threshold(scores, targets)
    assert thr == pytest.approx(0.6)
    assert f1 == pytest.approx(6 / 7)
    # unbounded scores, shuffled, float targets
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    thr, f1 = f1_optimal_threshold(scores[perm] * 100 - 50, targets[perm].float())
    assert thr == pytest.approx(10.0)
    assert f1 == pytest.approx(6 / 7)
    # ties: both tied samples are predicted together (score >= threshold)
    thr, f1 = f1_optimal_threshold(torch.tensor([3.0, 3.0, 1.0]), torch.tensor([1, 0, 0]))
    assert (thr, f1) == (3.0, pytest.approx(2 / 3))
    with pytest.raises(ValueError, match="positive"):
        f1_optimal_threshold(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]))


def test_f1_optimal_threshold_matches_torchmetrics_curve() -> None:
    gen = torch.Generator().manual_seed(4)
    targets = torch.randint(0, 2, (300,), generator=gen)
    scores = torch.round(10 * (targets + torch.randn(300, generator=gen))) / 10  # with ties
    thr, f1 = f1_optimal_threshold(scores, targets)
    precision, recall, _ = binary_precision_recall_curve(torch.sigmoid(scores.double()), targets)
    f1_curve = torch.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    assert f1 == pytest.approx(f1_curve.max().item())
    pred = (scores >= thr).long()
    assert binary_f1_score(pred, targets).item() == pytest.approx(f1, abs=1e-6)


def test_mean_std_threshold() -> None:
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population std sqrt(1.25)
    assert mean_std_threshold(scores) == pytest.approx(2.5 + math.sqrt(1.25))
    assert mean_std_threshold(scores, k=3.0) == pytest.approx(2.5 + 3 * math.sqrt(1.25))
    assert mean_std_threshold(scores.reshape(2, 2), k=0.0) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="at least 2"):
        mean_std_threshold(torch.tensor([1.0]))


def test_binned_curves_match_exact_torchmetrics() -> None:
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    from crackseg.metrics import BinnedCurves

    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(4, 1, 40, 40, generator=gen) > 0.9).long()
    probs = (0.35 * target + 0.65 * torch.rand(4, 1, 40, 40, generator=gen)).clamp(0, 1)
    metric = BinnedCurves(bins=1000)
    metric.update(probs[:2], target[:2])
    metric.update(probs[2:], target[2:])
    out = metric.compute()
    assert float(out["auroc"]) == pytest.approx(float(binary_auroc(probs.flatten(), target.flatten())), abs=2e-3)
    assert float(out["auprc"]) == pytest.approx(
        float(binary_average_precision(probs.flatten(), target.flatten())), abs=5e-3)
    perfect = BinnedCurves(bins=100)
    perfect.update(target.float(), target)
    assert float(perfect.compute()["auroc"]) == pytest.approx(1.0)
    assert float(perfect.compute()["auprc"]) == pytest.approx(1.0)
    empty = BinnedCurves(bins=10)
    empty.update(torch.rand(10), torch.zeros(10))
    assert torch.isnan(empty.compute()["auroc"]) and torch.isnan(empty.compute()["auprc"])


def test_rank_curves_exact_and_scale_free() -> None:
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    from crackseg.metrics import RankCurves, SegmentationMetrics

    gen = torch.Generator().manual_seed(1)
    target = (torch.rand(3, 1, 16, 16, generator=gen) > 0.85).long()
    probs = (0.3 * target + 0.7 * torch.rand(3, 1, 16, 16, generator=gen)).clamp(0, 1)
    metric = RankCurves()
    metric.update(probs, target)
    out = metric.compute()
    assert float(out["auroc"]) == pytest.approx(float(binary_auroc(probs.flatten(), target.flatten())), abs=1e-6)
    assert float(out["auprc"]) == pytest.approx(
        float(binary_average_precision(probs.flatten(), target.flatten())), abs=1e-6)
    # an unbounded monotone transform (anomaly scores) gives the same curves, without a range error
    seg = SegmentationMetrics(unbounded=True, aupro=True)
    seg.update(torch.exp(8 * probs) + 100.0, target, threshold=float(torch.exp(torch.tensor(4.0)) + 100))
    values = seg.compute()
    assert "ods" not in values
    assert float(values["auroc"]) == pytest.approx(float(out["auroc"]), abs=1e-6)
    assert float(values["auprc"]) == pytest.approx(float(out["auprc"]), abs=1e-6)
