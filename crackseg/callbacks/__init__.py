"""Callbacks: threshold calibration, map logging, prediction writing, classical baseline."""

from crackseg.callbacks.baseline import OtsuBaseline
from crackseg.callbacks.thresholds import F1Threshold, MeanStdThreshold, ThresholdCalibration
from crackseg.callbacks.visualization import MapLogger
from crackseg.callbacks.writer import PredictionWriter

__all__ = ["F1Threshold", "MapLogger", "MeanStdThreshold", "OtsuBaseline", "PredictionWriter", "ThresholdCalibration"]
