"""crackseg: crack and surface-defect segmentation and anomaly detection with PyTorch Lightning."""

__version__ = "0.1.0"
