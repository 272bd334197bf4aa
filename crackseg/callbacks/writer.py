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
from crackseg.inference.quantify import crack_fields, quantify_cracks

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
    predicted label, crack pixels, crack fraction, thresholds used, and the number of cracks when
    quantifying). With ``quantify``, ``cracks.csv`` has one row per crack of each mask (name, source,
    then :func:`crackseg.inference.quantify.quantify_cracks`' columns: crack id, area, bounding box,
    skeleton length, maximum and mean width in pixels, and in mm with ``mm_per_pixel``). Names come from
    the input file stems, sanitised (tiles of a grid-cut image: ``<stem>_r<row>c<col>``); repeated stems
    get a numeric suffix. Files are written atomically (the CSVs when the stage ends).

    Args:
        output_dir: folder for the outputs.
        stages: ``"predict"`` and / or ``"test"``.
        save_map: write the map PNGs.
        save_overlay: write the overlay PNGs.
        quantify: measure every crack of every mask into ``cracks.csv``.
        mm_per_pixel: size of an image pixel in millimetres (ground sampling distance); adds the mm
            columns to ``cracks.csv``. None: pixels only.
        min_crack_area: cracks of fewer pixels are left out of ``cracks.csv`` (specks).
    """

    def __init__(self, output_dir: str | os.PathLike = "predictions", stages: tuple[str, ...] = ("predict",),
                 save_map: bool = True, save_overlay: bool = True, quantify: bool = True,
                 mm_per_pixel: float | None = None, min_crack_area: int = 0) -> None:
        unknown = set(stages) - {"predict", "test"}
        if unknown:
            raise ValueError(f"PredictionWriter stages must be 'predict' or 'test', got {sorted(unknown)}")
        if mm_per_pixel is not None and not mm_per_pixel > 0:
            raise ValueError(f"PredictionWriter mm_per_pixel must be > 0 or null, got {mm_per_pixel}")
        if min_crack_area < 0:
            raise ValueError(f"PredictionWriter min_crack_area must be >= 0, got {min_crack_area}")
        self.output_dir = Path(output_dir)
        self.stages = tuple(stages)
        self.save_map = save_map
        self.save_overlay = save_overlay
        self.quantify = quantify
        self.mm_per_pixel = mm_per_pixel
        self.min_crack_area = min_crack_area
        self._rows: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._cracks: tuple[Any, csv.DictWriter, Path] | None = None  # (file, writer, temp path), streamed

    def _start(self) -> None:
        self._rows, self._names = [], set()
        self._close_cracks()

    def _close_cracks(self) -> Path | None:
        """Close the streamed crack CSV; its temp path (None when none was open)."""
        if self._cracks is None:
            return None
        handle, _, tmp = self._cracks
        handle.close()
        self._cracks = None
        return tmp

    def _write_cracks(self, folder: Path, name: str, path: str, mask: np.ndarray) -> int:
        """Append the cracks of ``mask`` to the stage's crack CSV (opened on first use); their number."""
        if self._cracks is None:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / ".cracks.csv.tmp"
            handle = open(tmp, "w", newline="")  # closed in _close_cracks, at the end of the stage
            writer = csv.DictWriter(handle, fieldnames=["name", "source", *crack_fields(self.mm_per_pixel)])
            writer.writeheader()
            self._cracks = (handle, writer, tmp)
        rows = quantify_cracks(mask, self.mm_per_pixel, self.min_crack_area)
        self._cracks[1].writerows({"name": name, "source": path, **row} for row in rows)
        return len(rows)

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
                          m.clamp(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy())
            if self.save_overlay:
                image_path, tile = parse_sample_id(path)
                picture = np.require(crop_tile(read_image(image_path), tile), requirements=["C", "W"])
                for top in range(0, picture.shape[0], 256):  # in strips: overlay's float temporaries stay small
                    picture[top:top + 256] = overlay(picture[top:top + 256], mask[top:top + 256])
                write_png(folder / "overlays" / f"{name}.png", picture)
            row = {
                "name": name, "source": path, "score": float(outputs["score"][i]),
                "predicted_label": int(bool(outputs["pred_label"][i])), "crack_pixels": int(mask.sum()),
                "crack_fraction": float(mask.mean()), "pixel_threshold": threshold,
                "image_threshold": float(pl_module.image_threshold),
            }
            if self.quantify:
                row["cracks"] = self._write_cracks(folder, name, path, mask)
            self._rows.append(row)

    def _finish(self, trainer: Trainer, stage: str) -> None:
        cracks = self._close_cracks()
        if cracks is not None:
            os.replace(cracks, cracks.with_name("cracks.csv"))
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
