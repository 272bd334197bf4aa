"""Writes predictions of ``crackseg predict`` (and optionally ``crackseg test``) to disk."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from torch.nn import functional as F

from crackseg.callbacks.report import ReportImage, write_report
from crackseg.callbacks.visualization import overlay
from crackseg.data.dataset import crop_tile, parse_sample_id, sample_id
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

    Each finished image also leaves a record (``.records/<name>.json``: its ``scores.csv`` row and its cracks),
    written after its PNGs; ``scores.csv`` and ``cracks.csv`` are rebuilt from the records when the stage ends.
    With ``resume`` (predict only), re-running into the same folder skips the images whose record exists, so an
    interrupted run over thousands of photos continues where it stopped, and the CSVs come out complete.
    Images the datamodule skipped as unreadable (``data.init_args.on_unreadable: skip``) are listed in
    ``skipped.csv`` (path, reason).

    Args:
        output_dir: folder for the outputs; None (default): ``<trainer.default_root_dir>/predictions``, the
            run's folder.
        stages: ``"predict"`` and / or ``"test"``.
        save_map: write the map PNGs.
        save_overlay: write the overlay PNGs.
        quantify: measure every crack of every mask into ``cracks.csv``.
        mm_per_pixel: size of an image pixel in millimetres (ground sampling distance); adds the mm
            columns to ``cracks.csv``. None: pixels only.
        min_crack_area: cracks of fewer pixels are left out of ``cracks.csv`` (specks).
        resume: on predict, skip images already finished in ``output_dir`` (false: predict them all again,
            e.g. after changing the model or a threshold).
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, stages: tuple[str, ...] = ("predict",),
                 save_map: bool = True, save_overlay: bool = True, quantify: bool = True,
                 mm_per_pixel: float | None = None, min_crack_area: int = 0, resume: bool = True) -> None:
        unknown = set(stages) - {"predict", "test"}
        if unknown:
            raise ValueError(f"PredictionWriter stages must be 'predict' or 'test', got {sorted(unknown)}")
        if mm_per_pixel is not None and not mm_per_pixel > 0:
            raise ValueError(f"PredictionWriter mm_per_pixel must be > 0 or null, got {mm_per_pixel}")
        if min_crack_area < 0:
            raise ValueError(f"PredictionWriter min_crack_area must be >= 0, got {min_crack_area}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.stages = tuple(stages)
        self.save_map = save_map
        self.save_overlay = save_overlay
        self.quantify = quantify
        self.mm_per_pixel = mm_per_pixel
        self.min_crack_area = min_crack_area
        self.resume = resume
        self._order: list[str] = []  # names of this stage's images, in order (records rebuilt in it)
        self._names: set[str] = set()
        self._planned: dict[str, str] = {}  # sample id -> name, fixed before predict (resume needs stable names)
        self.resumed = 0  #: images of the last predict run skipped as already finished

    def _start(self) -> None:
        self._order, self._names = [], set()

    def _unique(self, path: str) -> str:
        base = name = safe_name(path)
        i = 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def _name(self, path: str) -> str:
        if path in self._planned:
            return self._planned.pop(path)
        name = self._unique(path)
        self._order.append(name)
        return name

    @staticmethod
    def _record_path(folder: Path, name: str) -> Path:
        return folder / ".records" / f"{name}.json"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Before predict: fix every image's output name (in input order), leave finished images out of the
        datamodule's predict set (``resume``) and write ``skipped.csv``."""
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "predictions"
        if stage != "predict" or "predict" not in self.stages:
            return
        self._start()
        folder = self.output_dir / "predict"
        datamodule = getattr(trainer, "datamodule", None)
        _write_skipped(folder, getattr(datamodule, "skipped", []))
        dataset = getattr(datamodule, "datasets", {}).get("predict") if datamodule is not None else None
        samples = getattr(dataset, "samples", None)
        if samples is None:  # not a crackseg dataset: names as the images come
            return
        ids = [sample_id(sample) for sample in samples]
        names = [self._unique(i) for i in ids]
        self._order = list(names)
        done = {i for i, name in zip(ids, names, strict=True)
                if self.resume and self._record_path(folder, name).is_file()}
        self._planned = {i: name for i, name in zip(ids, names, strict=True) if i not in done}
        self.resumed = len(done)
        if done:
            dataset.samples = [sample for sample, i in zip(samples, ids, strict=True) if i not in done]
            if trainer.is_global_zero:
                print(f"PredictionWriter: {len(done)} of {len(ids)} images already finished in {folder} "
                      "(resume); predicting the other " f"{len(dataset.samples)} (resume: false redoes all)")

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
            name = self._name(path)
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
                _write_thumbnail(folder / "thumbs" / f"{name}.jpg", picture)
            else:
                _write_thumbnail(folder / "thumbs" / f"{name}.jpg", mask.astype(np.uint8) * 255)
            f1 = None
            if stage == "test" and bool(batch["has_mask"][i]):
                truth = batch["mask"][i].detach().float()
                if tuple(truth.shape[-2:]) != (height, width):
                    truth = F.interpolate(truth[None], size=(height, width), mode="nearest")[0]
                truth_mask = (truth[0] > 0.5).cpu().numpy()
                f1 = _f1(torch.from_numpy(mask), torch.from_numpy(truth_mask))  # the written mask, at image size
                truth_png = truth_mask.astype(np.uint8) * 255
                _write_thumbnail(folder / "ground_truth" / f"{name}.jpg", truth_png)
            row = {
                "name": name, "source": path, "score": float(outputs["score"][i]),
                "predicted_label": int(bool(outputs["pred_label"][i])), "crack_pixels": int(mask.sum()),
                "crack_fraction": float(mask.mean()), "pixel_threshold": threshold,
                "image_threshold": float(pl_module.image_threshold),
            }
            if stage == "test":
                row["f1"] = f1
            cracks = []
            if self.quantify:
                cracks = [{"name": name, "source": path, **c}
                          for c in quantify_cracks(mask, self.mm_per_pixel, self.min_crack_area)]
                row["cracks"] = len(cracks)
            _write_json(self._record_path(folder, name), {"row": row, "cracks": cracks})  # last: the image is done

    def _finish(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Rebuild ``scores.csv`` (and ``cracks.csv``) from the records of this stage's images, in input order."""
        folder = self.output_dir / stage
        names = [name for name in self._order if self._record_path(folder, name).is_file()]
        if not names:
            return
        scores_tmp, cracks_tmp = folder / ".scores.csv.tmp", folder / ".cracks.csv.tmp"
        report: list[ReportImage] = []
        with open(scores_tmp, "w", newline="") as scores_file, \
                open(cracks_tmp, "w", newline="") if self.quantify else _nowhere() as cracks_file:
            scores = cracks = None
            for name in names:  # one record at a time: memory stays flat over thousands of images
                record = json.loads(self._record_path(folder, name).read_text())
                if scores is None:
                    scores = csv.DictWriter(scores_file, fieldnames=list(record["row"]))
                    scores.writeheader()
                scores.writerow(record["row"])
                if cracks_file is not None:
                    if cracks is None:
                        cracks = csv.DictWriter(cracks_file, fieldnames=["name", "source",
                                                                         *crack_fields(self.mm_per_pixel)])
                        cracks.writeheader()
                    cracks.writerows(record["cracks"])
                report.append(ReportImage.from_record(record, self._links(folder, name)))
        os.replace(scores_tmp, folder / "scores.csv")
        if self.quantify:
            os.replace(cracks_tmp, folder / "cracks.csv")
        self._write_report(trainer, pl_module, folder, report, stage)
        if trainer.is_global_zero:
            print(f"PredictionWriter: wrote {len(names)} predictions and report.html to {folder}")

    def _links(self, folder: Path, name: str) -> dict[str, str]:
        """Relative links of an image's files that exist (the report opens them)."""
        candidates = {"overlay": f"overlays/{name}.png", "mask": f"masks/{name}.png", "thumb": f"thumbs/{name}.jpg",
                      "truth": f"ground_truth/{name}.jpg"}
        return {key: link for key, link in candidates.items() if (folder / link).is_file()}

    def _write_report(self, trainer: Trainer, module: LightningModule, folder: Path, images: list[ReportImage],
                      stage: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        checkpoint = getattr(trainer, "ckpt_path", None)
        summary = {"model": type(module).__name__, "checkpoint": str(checkpoint or "(weights in memory)")}
        if self.mm_per_pixel is not None:
            summary["scale"] = f"{self.mm_per_pixel:g} mm per pixel"
        skipped = getattr(datamodule, "skipped", []) if stage == "predict" else []
        if skipped:
            summary["skipped (unreadable, see skipped.csv)"] = len(skipped)
        if stage == "predict" and self.resumed:
            summary["resumed (finished by an earlier run)"] = self.resumed
        write_report(folder / "report.html", images, stage, summary, float(module.pixel_threshold),
                     float(module.image_threshold))

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

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "predict" in self.stages:
            self._finish(trainer, pl_module, "predict")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "test" in self.stages:
            self._finish(trainer, pl_module, "test")


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _write_skipped(folder: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """``skipped.csv`` (path, reason) of the unreadable inputs; an old one is removed when none was skipped."""
    path = folder / "skipped.csv"
    if not skipped:
        path.unlink(missing_ok=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".skipped.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)
    os.replace(tmp, path)


@contextlib.contextmanager
def _nowhere() -> Iterator[None]:
    """A stand-in for a file that is not written."""
    yield None


def _write_thumbnail(path: Path, picture: np.ndarray, side: int = 256) -> None:
    """A JPEG at most ``side`` pixels on its long side (the report's gallery), written atomically."""
    height, width = picture.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale < 1.0:
        picture = cv2.resize(picture, (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_AREA)
    if picture.ndim == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.jpg")
    if not cv2.imwrite(str(tmp), picture, [cv2.IMWRITE_JPEG_QUALITY, 85]):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)


def _f1(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Pixel F1 of one binary prediction against its ground truth (1.0 when both are empty)."""
    pred, truth = pred.bool().flatten(), truth.bool().flatten()
    tp = int((pred & truth).sum())
    denominator = int(pred.sum()) + int(truth.sum())
    return 1.0 if denominator == 0 else 2 * tp / denominator
