"""Panels of input | ground truth | map | binary mask | extra maps, sent to the active logger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torch.nn import functional as F

from crackseg.data.io import write_png


def to_uint8_image(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def colorize(map_: Tensor, size: tuple[int, int] | None = None, normalize: bool = False) -> np.ndarray:
    """(1, h, w) or (h, w) map → (H, W, 3) uint8 with OpenCV's inferno colour map.

    Args:
        map_: the map; probabilities in [0, 1] unless ``normalize``.
        size: (H, W) to resize to (bilinear).
        normalize: min-max normalise the map first (anomaly scores, attention).
    """
    m = map_.detach().float()
    if m.ndim == 2:
        m = m[None]
    if size is not None and tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
    if normalize:
        m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
    gray = (m[0].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def binary_to_rgb(mask: Tensor) -> np.ndarray:
    """(1, H, W) {0, 1} → (H, W, 3) uint8 white on black."""
    gray = (mask.detach()[0].float().cpu().numpy() > 0.5).astype(np.uint8) * 255
    return np.repeat(gray[..., None], 3, axis=2)


def overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 0, 0),
            alpha: float = 0.6) -> np.ndarray:
    """Blend ``color`` over ``image`` where ``mask`` (H, W) is set."""
    out = image.copy()
    sel = mask.astype(bool)
    out[sel] = (alpha * np.array(color) + (1 - alpha) * out[sel]).round().astype(np.uint8)
    return out


def make_panel(image: Tensor, mask: Tensor | None, map_: Tensor, pred: Tensor, extras: dict[str, Tensor],
               normalize_map: bool = False) -> np.ndarray:
    """One row: input | ground truth (if any) | map | binary mask | each extra map."""
    size = tuple(image.shape[-2:])
    tiles = [to_uint8_image(image)]
    if mask is not None:
        tiles.append(binary_to_rgb(mask))
    tiles += [colorize(map_, size, normalize=normalize_map), binary_to_rgb(pred)]
    tiles += [colorize(extra, size, normalize=True) for extra in extras.values()]
    separator = np.full((size[0], 4, 3), 255, dtype=np.uint8)
    row = []
    for tile in tiles:
        row += [tile, separator]
    return np.concatenate(row[:-1], axis=1)


def run_log_dir(trainer: Trainer) -> Path:
    """The folder ``trainer.log_dir`` names, read on this rank only.

    ``trainer.log_dir`` broadcasts from rank 0, a collective every rank must join; a callback that writes on
    rank 0 alone would wait there forever under DDP (seen: a 2-process fit with map panels made no progress).
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (TensorBoardLogger, CSVLogger)) else logger.save_dir
        if folder:
            return Path(folder)
    return Path(trainer.default_root_dir)


class MapLogger(Callback):
    """Logs map panels of the first evaluation batch of an epoch.

    Panels: input | ground truth | probability or anomaly map | binary mask | every map the module
    exposes through ``extra_maps`` (attention, Grad-CAM, side outputs). Sent as W&B images with a
    :class:`~lightning.pytorch.loggers.WandbLogger`, as TensorBoard images with a TensorBoard logger,
    and as PNG files under ``<log_dir>/maps/`` otherwise (CSV logger, no logger).

    Args:
        max_images: panels per stage and epoch.
        every_n_epochs: log validation panels every n epochs.
        stages: which of ``"val"``, ``"test"``, ``"predict"`` to log.
    """

    def __init__(self, max_images: int = 4, every_n_epochs: int = 1,
                 stages: tuple[str, ...] = ("val", "test")) -> None:
        if max_images < 1 or every_n_epochs < 1:
            raise ValueError("MapLogger needs max_images >= 1 and every_n_epochs >= 1")
        self.max_images = max_images
        self.every_n_epochs = every_n_epochs
        self.stages = tuple(stages)

    def _log(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: dict[str, Any],
             stage: str) -> None:
        if not isinstance(outputs, dict) or "map" not in outputs or not trainer.is_global_zero:
            return
        normalize = not getattr(pl_module, "maps_are_probabilities", True)
        panels, captions = [], []
        for i in range(min(self.max_images, len(batch["image"]))):
            mask = batch["mask"][i] if bool(batch["has_mask"][i]) else None
            extras = {k: v[i] for k, v in outputs.get("extra_maps", {}).items()}
            panels.append(make_panel(batch["image"][i], mask, outputs["map"][i], outputs["pred_mask"][i], extras,
                                     normalize_map=normalize))
            captions.append(f"{Path(batch['path'][i]).name}: score {float(outputs['score'][i]):.4g}")
        self.send(trainer, panels, captions, f"{stage}/maps")

    def send(self, trainer: Trainer, panels: list[np.ndarray], captions: list[str], key: str) -> list[Path]:
        """Send panels to the first W&B / TensorBoard logger, else write PNGs; returns files written."""
        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=panels, caption=captions, step=step)
                return []
            if isinstance(logger, TensorBoardLogger):
                for i, panel in enumerate(panels):
                    logger.experiment.add_image(f"{key}/{i}", panel, step, dataformats="HWC")
                return []
        folder = run_log_dir(trainer) / "maps"
        written = []
        for i, panel in enumerate(panels):
            path = folder / f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}_step{step:06d}_{i}.png"
            write_png(path, panel)
            written.append(path)
        return written

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if ("val" in self.stages and batch_idx == 0 and not trainer.sanity_checking
                and trainer.current_epoch % self.every_n_epochs == 0):
            self._log(trainer, pl_module, outputs, batch, "val")

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.stages and batch_idx == 0:
            self._log(trainer, pl_module, outputs, batch, "test")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                             batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "predict" in self.stages and batch_idx == 0:
            self._log(trainer, pl_module, outputs, batch, "predict")
