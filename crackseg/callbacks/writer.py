"""Writes predictions of ``crackseg predict`` (and optionally ``crackseg test``) to disk."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from torch.nn import functional as F

from crackseg.callbacks.visualization import overlay
from crackseg.data.dataset import crop_tile, parse_sample_id
from crackseg.data.io import read_image, write_png

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(path: str) -> str:
    """A file-name stem from an input path (or tile id) that cannot leave the output folder.

    A tile of a grid-cut image (``<image>#r<row>c<col>of<grid>``, see
    :func:`crackseg.data.dataset.sample_id`) gets the suffix ``_r<row>c<col>``.
    """
    image, tile = parse_sample_id(path)
    stem = _UNSAFE.sub("_", Path(image).stem).strip("._")[:200] or "image"
    return stem if tile is None else f"{stem}_r{tile[0]}c{tile[1]}"


class PredictionWriter(Callback):
    """Per image: binary mask, probability / anomaly map and overlay PNGs; one CSV of image scores.

    Layout under ``output_dir/<stage>/``: ``masks/<name>.png`` (0/255, at the input's size on disk),
    ``maps/<name>.png`` (map × 255 for probabilities; min-max normalised per image for anomaly maps),
    ``overlays/<name>.png`` (mask in red over the image) and ``scores.csv`` (name, source, image score,
    predicted label, crack pixels, crack fraction, thresholds used). Names come from the input file
    stems, sanitised (tiles of a grid-cut image: ``<stem>_r<row>c<col>``); repeated stems get a numeric
    suffix. Files are written atomically.

    Args:
        output_dir: folder for the outputs.
        stages: ``"predict"`` and / or ``"test"``.
        save_map: write the map PNGs.
        save_overlay: write the overlay PNGs.
    """

    def __init__(self, output_dir: str | os.PathLike = "predictions", stages: tuple[str, ...] = ("predict",),
                 save_map: bool = True, save_overlay: bool = True) -> None:
        unknown = set(stages) - {"predict", "test"}
        if unknown:
            raise ValueError(f"PredictionWriter stages must be 'predict' or 'test', got {sorted(unknown)}")
        self.output_dir = Path(output_dir)
        self.stages = tuple(stages)
        self.save_map = save_map
        self.save_overlay = save_overlay
        self._rows: list[dict[str, Any]] = []
        self._names: set[str] = set()

    def _start(self) -> None:
        self._rows, self._names = [], set()

    def _unique(self, path: str) -> str:
        base = name = safe_name(path)
        i = 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def _write_batch(self, pl_module: LightningModule, outputs: Any, batch: dict[str, Any], stage: str) -> None:
        if not isinstance(outputs, dict) or "map" not in outputs:
            return
        folder = self.output_dir / stage
        probabilities = getattr(pl_module, "maps_are_probabilities", True)
        threshold = float(pl_module.pixel_threshold)
        for i, path in enumerate(batch["path"]):
            height, width = (int(v) for v in batch["orig_size"][i])
            map_ = outputs["map"][i].detach().float()
            if tuple(map_.shape[-2:]) != (height, width):
                map_ = F.interpolate(map_[None], size=(height, width), mode="bilinear", align_corners=False)[0]
            mask = (map_[0] >= threshold).cpu().numpy()
            name = self._unique(path)
            write_png(folder / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
            if self.save_map:
                m = map_[0]
                if not probabilities:
                    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
                write_png(folder / "maps" / f"{name}.png",
                          (m.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))
            if self.save_overlay:
                image_path, tile = parse_sample_id(path)
                write_png(folder / "overlays" / f"{name}.png", overlay(crop_tile(read_image(image_path), tile), mask))
            self._rows.append({
                "name": name, "source": path, "score": float(outputs["score"][i]),
                "predicted_label": int(bool(outputs["pred_label"][i])), "crack_pixels": int(mask.sum()),
                "crack_fraction": float(mask.mean()), "pixel_threshold": threshold,
                "image_threshold": float(pl_module.image_threshold),
            })

    def _finish(self, trainer: Trainer, stage: str) -> None:
        if not self._rows:
            return
        path = self.output_dir / stage / "scores.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(self._rows[0]))
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, path)
        if trainer.is_global_zero:
            print(f"PredictionWriter: wrote {len(self._rows)} predictions to {path.parent}")

    @torch.no_grad()
    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                             batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "predict" in self.stages:
            self._write_batch(pl_module, outputs, batch, "predict")

    @torch.no_grad()
    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "test" in self.stages:
            self._write_batch(pl_module, outputs, batch, "test")

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "predict" in self.stages:
            self._finish(trainer, "predict")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "test" in self.stages:
            self._finish(trainer, "test")
