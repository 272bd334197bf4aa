"""A classical reference on the same test images: per-image Otsu threshold of the darkest pixels."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer

from crackseg.callbacks.visualization import to_uint8_image
from crackseg.metrics import SegmentationMetrics

COMPARED = ("ods", "ois", "ap", "ods_dataset", "ap_dataset", "f1", "iou", "region_f1")


def otsu_dark_map(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image in [0, 1] → (1, H, W) {0, 1} map: pixels darker than the image's Otsu threshold."""
    gray = cv2.cvtColor(to_uint8_image(image), cv2.COLOR_RGB2GRAY)
    _, binary = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    return torch.from_numpy(binary.astype(np.float32))[None]


class OtsuBaseline(Callback):
    """Scores the per-image Otsu threshold of dark pixels beside the model at test time.

    Cracks are mostly darker than their surroundings, so "pixels below the image's Otsu threshold" is
    the classical baseline a learned model must clearly beat. Its metrics are logged as ``otsu/<name>``
    and a model-vs-Otsu table is printed at the end of the test.
    """

    def __init__(self) -> None:
        self.metrics = SegmentationMetrics(aupro=False)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.metrics.reset()
        self._updated = False

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        keep = batch["has_mask"]
        if not keep.any():
            return
        maps = torch.stack([otsu_dark_map(image) for image in batch["image"][keep]])
        self.metrics.to("cpu").update(maps, batch["mask"][keep].cpu(), 0.5)
        self._updated = True

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if getattr(self, "_updated", False):
            values = self.metrics.compute()
            pl_module.log_dict({f"otsu/{k}": v.float() for k, v in values.items() if v.numel() == 1})

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        if not trainer.is_global_zero or "otsu/f1" not in metrics:
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{type(pl_module).__name__} vs per-image Otsu of dark pixels (test set)")
        table.add_column("metric")
        table.add_column(type(pl_module).__name__, justify="right")
        table.add_column("Otsu", justify="right")
        for key in COMPARED:
            if f"test/{key}" in metrics and f"otsu/{key}" in metrics:
                table.add_row(key, f"{float(metrics[f'test/{key}']):.4f}", f"{float(metrics[f'otsu/{key}']):.4f}")
        Console().print(table)
