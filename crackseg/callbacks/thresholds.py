"""Threshold calibration on validation predictions.

Both callbacks gather scores during validation (through torchmetrics ``CatMetric``, so every DDP rank's
scores are gathered before the threshold is computed), then write the module's ``pixel_threshold`` /
``image_threshold`` buffers: the value is saved in the checkpoint and used by test and predict.
A ``threshold`` / ``image_threshold`` given to the model on the command line overrides it.

Under DDP every rank holds the same collectors from the start of the epoch and calls the gathering
collective in the same order, even a rank whose shard had no normal image or no mask, so the ranks never
wait on one another and all compute the same threshold from the same scores. Pixel scores are subsampled
with a generator seeded per image (from its path), so the kept pixels do not depend on how the images are
spread over ranks or batches. Lightning's ``DistributedSampler`` pads the validation split with repeated
images up to a multiple of the world size; keep its size a multiple of it for exactly the single-process
threshold.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any, Literal

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor
from torchmetrics.aggregation import CatMetric

from crackseg.metrics import f1_optimal_threshold, mean_std_threshold

Level = Literal["pixel", "image", "both"]


class ThresholdCalibration(Callback):
    """Collects pixel and image scores of validation batches (pixel scores subsampled per image)."""

    def __init__(self, level: Level, max_pixels_per_image: int, seed: int = 0) -> None:
        if level not in ("pixel", "image", "both"):
            raise ValueError(f"level must be 'pixel', 'image' or 'both', got {level!r}")
        if max_pixels_per_image < 1:
            raise ValueError(f"max_pixels_per_image must be >= 1, got {max_pixels_per_image}")
        self.level = level
        self.max_pixels_per_image = max_pixels_per_image
        self.seed = seed
        self._collectors: dict[str, CatMetric] = {}

    #: names of the score collectors a subclass fills, per level ("image" / "pixel").
    collector_names: dict[str, tuple[str, ...]] = {}

    def _collector(self, name: str, device: torch.device) -> CatMetric:
        if name not in self._collectors:
            self._collectors[name] = CatMetric(nan_strategy="disable")
        return self._collectors[name].to(device)

    def _subsample(self, values: Tensor, generator: torch.Generator) -> Tensor:
        """Indices of at most ``max_pixels_per_image`` pixels of a flattened map (seeded)."""
        n = values.numel()
        if n <= self.max_pixels_per_image:
            return torch.arange(n)
        return torch.randperm(n, generator=generator)[: self.max_pixels_per_image]

    def _image_generator(self, batch: dict[str, Any], index: int, batch_idx: int) -> torch.Generator:
        """Generator of one image's pixel subsample, seeded from its path (independent of ranks and batches)."""
        paths = batch.get("path")
        key = str(paths[index]) if paths is not None else f"{batch_idx}:{index}"
        return torch.Generator().manual_seed(self.seed + zlib.crc32(key.encode()))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # every collector exists on every rank before any batch, so all ranks gather the same ones
        for level in ("image", "pixel"):
            if self.level in (level, "both"):
                for name in self.collector_names[level]:
                    self._collector(name, pl_module.device)
        for collector in self._collectors.values():
            collector.reset()

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or not isinstance(outputs, dict):
            return
        self.collect(pl_module.device, outputs, batch, batch_idx)

    def collect(self, device: torch.device, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int) -> None:
        """Add the scores of one validation batch."""
        raise NotImplementedError

    def calibrate(self, level: str) -> tuple[float, dict[str, float]] | str:
        """The ``level`` ("image" / "pixel") threshold and values to log, or why it cannot be computed."""
        raise NotImplementedError

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for level, buffer in (("image", "image_threshold"), ("pixel", "pixel_threshold")):
            if self.level not in (level, "both"):
                continue
            result = self.calibrate(level)
            if isinstance(result, str):
                warnings.warn(f"{type(self).__name__}: {result}; the {level} threshold is left at "
                              f"{float(getattr(pl_module, buffer)):.4g}", stacklevel=1)
                continue
            threshold, logs = result
            getattr(pl_module, buffer).fill_(threshold)
            for name, value in logs.items():
                pl_module.log(name, value, sync_dist=True)  # equal on every rank (gathered scores)

    def _add(self, name: str, values: Tensor, device: torch.device) -> None:
        if values.numel():
            self._collector(name, device).update(values.detach().float().flatten())

    def _gathered(self, name: str) -> Tensor | None:
        """Scores of ``name`` from every rank (a collective under DDP: each rank calls it, in the same order)."""
        collector = self._collectors.get(name)
        if collector is None or not collector.update_count and not _is_distributed():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = collector.compute()
        if not isinstance(values, Tensor) or values.numel() == 0:
            return None
        return values.flatten()


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class MeanStdThreshold(ThresholdCalibration):
    """Threshold = mean + k·std of the anomaly scores of normal validation images.

    The VAE + Grad-CAM paper (García-de-la-Puente et al. 2023, §3.3) sets the image threshold this way
    with k = 1 on held-out defect-free images. Image level uses the image scores of validation images
    labelled normal; pixel level uses every pixel score of those images (subsampled per image).

    Args:
        level: ``"image"``, ``"pixel"`` or ``"both"``.
        k: number of standard deviations above the mean.
        max_pixels_per_image: pixel scores kept per image (seeded random subset) to bound memory.
    """

    def __init__(self, level: Level = "image", k: float = 1.0, max_pixels_per_image: int = 65536) -> None:
        super().__init__(level, max_pixels_per_image)
        self.k = k

    collector_names = {"image": ("image",), "pixel": ("pixel",)}

    def collect(self, device: torch.device, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int) -> None:
        normal = batch["label"] == 0
        if not normal.any():
            return
        if self.level in ("image", "both"):
            self._add("image", outputs["score"][normal], device)
        if self.level in ("pixel", "both"):
            for index in torch.nonzero(normal).flatten().tolist():
                flat = outputs["map"][index].flatten()
                keep = self._subsample(flat, self._image_generator(batch, index, batch_idx))
                self._add("pixel", flat[keep.to(flat.device)], device)

    def calibrate(self, level: str) -> tuple[float, dict[str, float]] | str:
        scores = self._gathered(level)
        if scores is None or scores.numel() < 2:
            return f"fewer than 2 normal validation {level} scores"
        return mean_std_threshold(scores, self.k), {}


class F1Threshold(ThresholdCalibration):
    """Iterative F1 thresholding: the threshold that maximises F1 on the validation set.

    Every distinct validation score is tried (an exact sweep), and the F1-maximising one is kept. At
    pixel level this is one threshold for the whole dataset (ODS style) computed from all validation
    pixels of images with known masks, crack-free images included (``has_mask``; subsampled per image to
    bound memory); at image level, from the
    image scores and labels.

    Args:
        level: ``"pixel"``, ``"image"`` or ``"both"``.
        max_pixels_per_image: pixel scores kept per image (seeded random subset).
    """

    def __init__(self, level: Level = "pixel", max_pixels_per_image: int = 262144) -> None:
        super().__init__(level, max_pixels_per_image)

    collector_names = {"image": ("image_score", "image_target"), "pixel": ("pixel_score", "pixel_target")}

    def collect(self, device: torch.device, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int) -> None:
        if self.level in ("image", "both"):
            known = batch["label"] >= 0
            self._add("image_score", outputs["score"][known], device)
            self._add("image_target", batch["label"][known], device)
        if self.level in ("pixel", "both"):
            for index, (single, mask, has_mask) in enumerate(
                    zip(outputs["map"], batch["mask"], batch["has_mask"], strict=True)):
                if not has_mask:
                    continue
                flat, target = single.flatten(), mask.flatten()
                keep = self._subsample(flat, self._image_generator(batch, index, batch_idx)).to(flat.device)
                self._add("pixel_score", flat[keep], device)
                self._add("pixel_target", target[keep], device)

    def calibrate(self, level: str) -> tuple[float, dict[str, float]] | str:
        scores, targets = self._gathered(f"{level}_score"), self._gathered(f"{level}_target")
        if scores is None or targets is None or not (targets > 0).any():
            return f"no positive validation {level}s"
        threshold, best_f1 = f1_optimal_threshold(scores, targets.long())
        return threshold, {f"val/{level}_best_f1": float(best_f1)}
