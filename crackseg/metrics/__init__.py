"""Metrics for crack segmentation and anomaly detection (positive class = crack / anomalous)."""

from crackseg.metrics.classification import ImageMetrics
from crackseg.metrics.segmentation import (
    AUPRO,
    BinnedCurves,
    RankCurves,
    RegionF1,
    SegmentationMetrics,
    ThresholdSweepF1,
)
from crackseg.metrics.thresholds import f1_optimal_threshold, mean_std_threshold

__all__ = [
    "AUPRO",
    "ImageMetrics",
    "RegionF1",
    "BinnedCurves",
    "RankCurves",
    "SegmentationMetrics",
    "ThresholdSweepF1",
    "f1_optimal_threshold",
    "mean_std_threshold",
]
