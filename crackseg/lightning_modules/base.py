"""Base LightningModule: the one home of the train / validation / test / predict steps.

A method subclasses :class:`CrackSegModule` and provides

- :meth:`~CrackSegModule.configure_models`: build ``self.net`` (a plain ``nn.Module``);
- :meth:`~CrackSegModule.compute_loss`: the training loss from the network outputs and the batch;
- optionally :meth:`~CrackSegModule.anomaly_map`, :meth:`~CrackSegModule.image_score` and
  :meth:`~CrackSegModule.extra_maps` (attention, Grad-CAM, side outputs for the map logger);
- its run defaults as declarations: :attr:`~CrackSegModule.checkpoint_monitor`,
  :meth:`~CrackSegModule.threshold_calibration`, :attr:`~CrackSegModule.writes_predictions`
  (the ``crackseg`` command adds :meth:`~CrackSegModule.default_callbacks` to a run whose config names none).

Input normalisation and padding to the network's stride happen here, so they travel with the model
(checkpoint, export). Thresholds are buffers (``pixel_threshold``, ``image_threshold``): saved in the
checkpoint, set by the calibration callbacks, used by test and predict, overridden by ``threshold``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from lightning import Callback, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.callbacks import MapLogger, PredictionWriter
from crackseg.inference.progress import inner_progress
from crackseg.inference.tiling import TileSettings, predict_tiled, tile_count
from crackseg.metrics import ImageMetrics, SegmentationMetrics

NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # RGB scaled to [-1, 1]
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
STAGES = ("val", "test")
#: the learning-rate schedules of :meth:`CrackSegModule.configure_optimizers`
LrSchedule = Literal["constant", "multistep", "epoch_step", "step", "cosine", "poly", "plateau"]


class CrackSegModule(LightningModule):
    """Shared logic of every crackseg method.

    Args:
        threshold: pixel threshold on the probability / anomaly map; overrides the calibrated value
            stored in a checkpoint (None keeps it; 0.5 before any calibration).
        image_threshold: image-level threshold on the image score; overrides the stored value likewise.
        normalization: input normalisation applied inside the model: ``"symmetric"`` (RGB to [-1, 1]),
            ``"imagenet"`` (ImageNet mean / std, for pretrained backbones) or ``"unit"`` ([0, 1]).
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        lr_schedule: ``"constant"``; ``"multistep"`` (× ``lr_gamma`` at the fractions ``lr_milestones``
            of training); ``"epoch_step"`` (× ``lr_gamma`` after every epoch); ``"step"`` (× ``lr_gamma``
            after every ``lr_step_epochs`` epochs, e.g. König et al.'s lr 1e-3 divided by 10 every 10
            epochs); ``"cosine"``; ``"poly"`` (power 0.9); ``"plateau"`` (× ``lr_gamma`` once the method's
            checkpoint metric, :attr:`checkpoint_monitor`, has not improved for ``lr_plateau_patience``
            validations: ``ReduceLROnPlateau``, which also fits runs cut short by ``trainer.max_time``, where
            the epoch-count schedules never reach their decays).
        lr_milestones: fractions of the total training steps where ``"multistep"`` decays.
        lr_gamma: decay factor.
        lr_step_epochs: epochs between two decays of ``"step"`` (>= 1).
        lr_plateau_patience: validations without a better checkpoint metric before ``"plateau"`` decays (>= 1).
        lr_warmup_fraction: fraction of the training steps over which the learning rate rises linearly from
            1 % of ``lr`` before the schedule takes over (schedules stepped per step: ``"constant"``,
            ``"multistep"``, ``"cosine"``, ``"poly"``; 0 = no warm-up).
        aupro: compute AUPRO (FPR ≤ 0.3) at test time (stores all test pixels).
        predict_tile_size: ``crackseg predict`` on full-resolution images of any size: side of the square
            tiles (network-input pixels) the image is cut into, run a batch at a time and blended without
            seams (:mod:`crackseg.inference.tiling`); the datamodule then neither resizes the images
            (``data.image_size`` is ignored) nor batches them (one image at a time). None (default)
            predicts whole images as loaded, as test does. Not saved in the checkpoint.
        predict_tile_overlap: least overlap of neighbouring tiles (network-input pixels, at most half the
            tile side). The outer quarter of each shared band gets no weight from the tile it borders, so
            an overlap of 4 × the network's receptive-field radius gives exactly the whole-image map;
            less still blends without seams.
        predict_tile_batch_size: tiles run through the network at once (GPU memory vs speed).
        predict_scale: network-input pixels per image pixel when tiling: 1 (default) runs the model on
            native pixels; set it to the training scale when the model learnt on resized images (e.g.
            0.25 for a model trained at ``data.image_size`` 512² on 2048-px photos). Maps, masks and crack
            measurements stay at the image's own size.
    """

    #: whether :meth:`anomaly_map` returns probabilities in [0, 1] (threshold-sweep metrics need it).
    maps_are_probabilities: bool = True

    #: hyper-parameters naming where initial weights come from (hub, a file, a pre-training checkpoint), which
    #: a checkpoint's own state dict supersedes: saved as None, so rebuilding the model from its checkpoint
    #: (``test``, ``predict``, ``export``, resumed ``fit``) needs neither the hub nor those files; the values
    #: used are kept in the checkpoint under ``"crackseg_weight_sources"``.
    weight_sources: tuple[str, ...] = ()

    #: whether :meth:`image_score` reads the map only (not the network outputs): tiled prediction then scores
    #: the stitched map; otherwise an image scores the largest of its tiles' own scores.
    score_reads_map_only: bool = True

    #: ``(metric, mode)`` by which the default checkpoint callback keeps ``best.ckpt`` (``last.ckpt`` beside it).
    checkpoint_monitor: tuple[str, str] = ("val/loss", "min")

    #: whether ``test`` and ``predict`` write maps, masks and overlays by default (:class:`PredictionWriter`).
    writes_predictions: bool = True

    @classmethod
    def threshold_calibration(cls) -> tuple[type[Callback], dict[str, Any]] | None:
        """The callback (class, arguments) that calibrates this method's thresholds on validation; None: none."""
        return None

    @classmethod
    def default_callbacks(cls) -> list[tuple[type[Callback], dict[str, Any]]]:
        """The callbacks (class, arguments) of a run of this method, as a config would name them.

        The ``crackseg`` command adds each one whose kind (checkpointing, threshold calibration, map logging,
        prediction writing) the config's ``trainer.callbacks`` does not name, so a config lists only what
        differs and a fragment can add a callback without repeating these: ``best.ckpt`` by
        :attr:`checkpoint_monitor` and ``last.ckpt`` (under ``<default_root_dir>/checkpoints``), the
        :meth:`threshold_calibration`, :class:`~crackseg.callbacks.MapLogger` panels and, where
        :attr:`writes_predictions`, a :class:`~crackseg.callbacks.PredictionWriter` at test and predict.
        """
        metric, mode = cls.checkpoint_monitor
        callbacks: list[tuple[type[Callback], dict[str, Any]]] = [(ModelCheckpoint, {
            "filename": "best", "monitor": metric, "mode": mode, "save_last": True, "enable_version_counter": False})]
        threshold = cls.threshold_calibration()
        callbacks += [threshold] if threshold is not None else []
        callbacks.append((MapLogger, {}))
        if cls.writes_predictions:
            callbacks.append((PredictionWriter, {"stages": ("test", "predict")}))
        return callbacks

    def normalizes_maps_per_image(self) -> bool:
        """Whether :meth:`anomaly_map` normalises each map by its own image (then tiles are not comparable)."""
        return False

    def export_blocker(self) -> str | None:
        """Why this model's inference cannot be a forward-only ONNX graph (None: it can be exported)."""
        return None

    def __init__(
        self,
        threshold: float | None = None,
        image_threshold: float | None = None,
        normalization: Literal["symmetric", "imagenet", "unit"] = "symmetric",
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 2e-4,
        lr_schedule: LrSchedule = "constant",
        lr_milestones: tuple[float, ...] = (0.7, 0.9),
        lr_gamma: float = 0.1,
        lr_step_epochs: int = 10,
        lr_plateau_patience: int = 3,
        lr_warmup_fraction: float = 0.0,
        aupro: bool = False,
        predict_tile_size: int | None = None,
        predict_tile_overlap: int = 64,
        predict_tile_batch_size: int = 4,
        predict_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if weight_decay < 0 or momentum < 0:
            raise ValueError(f"model.weight_decay and model.momentum must be >= 0, got {weight_decay}, {momentum}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"model.normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        if isinstance(lr_step_epochs, bool) or not isinstance(lr_step_epochs, int) or lr_step_epochs < 1:
            raise ValueError(f"model.init_args.lr_step_epochs must be an integer >= 1, got {lr_step_epochs!r}")
        if isinstance(lr_plateau_patience, bool) or not isinstance(lr_plateau_patience, int) or lr_plateau_patience < 1:
            raise ValueError(f"model.init_args.lr_plateau_patience must be an integer >= 1, "
                             f"got {lr_plateau_patience!r}")
        if not 0.0 <= lr_warmup_fraction < 1.0:
            raise ValueError(f"model.init_args.lr_warmup_fraction must be in [0, 1), got {lr_warmup_fraction}")
        if lr_warmup_fraction > 0 and lr_schedule in ("step", "epoch_step", "plateau"):
            raise ValueError(f"model.init_args.lr_warmup_fraction needs a schedule stepped per step (constant, "
                             f"multistep, cosine, poly), not lr_schedule {lr_schedule!r}")
        if any(not 0 < m < 1 for m in lr_milestones):
            raise ValueError(f"model.lr_milestones must be fractions in (0, 1), got {lr_milestones}")
        # The overrides are not hyper-parameters: LightningCLI re-applies a checkpoint's hyper-parameters
        # over the command line, which would undo a threshold given there.
        # Nor are the prediction tiling options: they belong to each predict run.
        self.save_hyperparameters(ignore=["threshold", "image_threshold", "predict_tile_size",
                                          "predict_tile_overlap", "predict_tile_batch_size", "predict_scale"])
        self.threshold_overrides = {"pixel_threshold": threshold, "image_threshold": image_threshold}
        self.tile_settings = None if predict_tile_size is None else TileSettings(
            predict_tile_size, predict_tile_overlap, predict_tile_batch_size, predict_scale)
        mean, std = NORMALIZATIONS[normalization]
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_threshold", torch.tensor(0.5 if threshold is None else float(threshold)))
        self.register_buffer("image_threshold",
                             torch.tensor(0.5 if image_threshold is None else float(image_threshold)))
        self.configure_models()
        self.configure_metrics()

    # -- to implement -------------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build the networks (``self.net``)."""
        raise NotImplementedError

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms; key ``"loss"`` is optimised, the others are logged."""
        raise NotImplementedError

    def training_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Network outputs of a training batch (``self(batch["image"])``; a method may reuse work across epochs)."""
        return self(batch["image"])

    def anomaly_map(self, outputs: dict[str, Any]) -> Tensor:
        """(B, 1, H, W) crack probability / anomaly map from the network outputs."""
        return torch.sigmoid(outputs["logits"])

    def image_score(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """(B,) image score (higher = more likely defective); default: the map's maximum."""
        return maps.flatten(1).amax(1)

    def pro_map(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor | None:
        """(B, 1, H, W) map AUPRO is computed on when it differs from :meth:`anomaly_map` (None: the same map).

        MSFlow's reference code scores pixel AUROC on an additive and PRO on a multiplicative map.
        """
        return None

    def extra_maps(self, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int | None) -> dict[str, Tensor]:
        """Further (B, 1, h, w) maps to show beside the main one (attention, Grad-CAM, side outputs).

        ``batch_idx`` is 0 for the batch the map logger draws (None outside a Lightning loop), so costly
        maps (Grad-CAM) can be computed for that batch only.
        """
        return {}

    def to_input_size(self, maps: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        """A (B, C, h, w) map over the padded input (any scale) → (B, C, H, W) over the unpadded input."""
        height, width = int(size[0]), int(size[1])
        if tuple(maps.shape[-2:]) == (height, width):
            return maps
        stride = self.stride
        padded = (height + (-height) % stride, width + (-width) % stride)
        maps = F.interpolate(maps.float(), size=padded, mode="bilinear", align_corners=False)
        return maps[..., :height, :width]

    # -- model ---------------------------------------------------------------------------------
    def configure_metrics(self) -> None:
        """Metrics per evaluation stage (validation skips the memory-hungry AUPRO).

        Methods whose maps are anomaly scores (``maps_are_probabilities = False``) get exact rank-based
        pixel AUROC / AUPRC and AUPRO at test time instead of the [0, 1] threshold sweep.
        """
        unbounded = not self.maps_are_probabilities
        self.pixel_metrics = nn.ModuleDict({
            "val": SegmentationMetrics(aupro=False, unbounded=unbounded),
            "test": SegmentationMetrics(aupro=self.hparams.aupro or unbounded, unbounded=unbounded),
        })
        self.image_metrics = nn.ModuleDict({stage: ImageMetrics() for stage in STAGES})
        self._metrics_updated = {(kind, stage): False for kind in ("pixel", "image") for stage in STAGES}
        #: metrics of each evaluation source (a datamodule with several validation / test loaders, e.g.
        #: :class:`~crackseg.datamodules.JoinedDataModule`), by (stage, loader index); made on first use
        self._source_metrics: dict[tuple[str, int], tuple[SegmentationMetrics, ImageMetrics, list[bool]]] = {}

    @property
    def stride(self) -> int:
        """The multiple the network needs image sides to be (inputs are padded to it)."""
        return int(getattr(getattr(self, "net", None), "stride", 1))

    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] RGB → the network's input space."""
        return (images - self.input_mean) / self.input_std

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Network outputs for RGB images in [0, 1] of any size (reflect-padded to the stride, cropped back)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        stride = self.stride
        pad_h, pad_w = (-height) % stride, (-width) % stride
        x = self.normalize(images)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        outputs = self.net(x)
        if pad_h or pad_w:
            outputs = _crop(outputs, x.shape[-2:], height, width)
        return outputs

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.compute_loss(self.training_outputs(batch), batch)
        self._check_finite(losses["loss"], batch_idx)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False, batch_size=len(batch["image"]))
        self.log("train_loss", losses["loss"], prog_bar=True, logger=False, batch_size=len(batch["image"]))
        return losses["loss"]

    def _check_finite(self, loss: Tensor, batch_idx: int) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, global step "
                f"{self.global_step}, batch {batch_idx}; the last good checkpoint is kept")

    def evaluate_batch(self, batch: dict[str, Any], batch_idx: int | None = None) -> dict[str, Any]:
        """Maps, scores and thresholded predictions of a batch (no metric update)."""
        outputs = self(batch["image"])
        maps = self.anomaly_map(outputs)
        scores = self.image_score(maps, outputs)
        return {
            "outputs": outputs,
            "map": maps,
            "pro_map": self.pro_map(maps, outputs),
            "score": scores,
            "pred_mask": maps >= self.pixel_threshold,
            "pred_label": scores >= self.image_threshold,
            "extra_maps": self.extra_maps(outputs, batch, batch_idx),
        }

    def _eval_step(self, batch: dict[str, Any], batch_idx: int, stage: str, dataloader_idx: int = 0) -> dict[str, Any]:
        result = self.evaluate_batch(batch, batch_idx)
        batch_size = len(batch["image"])
        losses = self.compute_loss(result["outputs"], batch)
        self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=batch_size, sync_dist=True)
        targets = [(self.pixel_metrics[stage], self.image_metrics[stage], None)]
        if self._source_names() is not None:
            targets.append(self._metrics_of_source(stage, dataloader_idx))
        has_mask = batch["has_mask"]
        known = batch["label"] >= 0
        pro_map = result["pro_map"]
        for pixel_metrics, image_metrics, updated in targets:
            if has_mask.any():
                pixel_metrics.update(result["map"][has_mask], batch["mask"][has_mask], float(self.pixel_threshold),
                                     pro_probs=None if pro_map is None else pro_map[has_mask])
            if known.any():
                image_metrics.update(result["score"][known], batch["label"][known], float(self.image_threshold))
            if updated is not None:
                updated[0] |= bool(has_mask.any())
                updated[1] |= bool(known.any())
        self._metrics_updated["pixel", stage] |= bool(has_mask.any())
        self._metrics_updated["image", stage] |= bool(known.any())
        return result

    def _source_names(self) -> list[str] | None:
        """Names of the evaluation loaders when the datamodule declares several (``eval_source_names``)."""
        trainer = self._trainer
        names = getattr(getattr(trainer, "datamodule", None), "eval_source_names", None) if trainer else None
        return list(names) if names and len(names) > 1 else None

    def _metrics_of_source(self, stage: str, index: int) -> tuple[SegmentationMetrics, ImageMetrics, list[bool]]:
        key = (stage, index)
        if key not in self._source_metrics:
            reference = self.pixel_metrics[stage]
            pixel = SegmentationMetrics(aupro=reference.aupro is not None, unbounded=not self.maps_are_probabilities)
            self._source_metrics[key] = (pixel.to(self.device), ImageMetrics().to(self.device), [False, False])
        return self._source_metrics[key]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch, batch_idx, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return self._eval_step(batch, batch_idx, "test", dataloader_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if self.tile_settings is not None:
            return self.predict_tiled(batch)
        result = self.evaluate_batch(batch, batch_idx)
        result.pop("outputs")
        result.pop("pro_map")
        return result

    # -- full-resolution (tiled) prediction --------------------------------------------------------
    @property
    def predict_full_resolution(self) -> bool:
        """Whether predict tiles full images: :class:`~crackseg.datamodules.CrackDataModule` then loads them
        unresized, one at a time, and leaves them on the CPU (tiles go to the device a batch at a time)."""
        return self.tile_settings is not None

    def predict_tiled(self, batch: dict[str, Any]) -> dict[str, Any]:
        """:meth:`predict_step` by tiles (``predict_tile_size``): the keys of :meth:`evaluate_batch` but
        ``outputs``, ``pro_map`` and ``extra_maps`` (empty), with maps as float32 on the CPU.

        Each tile goes through :meth:`forward` and :meth:`anomaly_map`; the tile maps are blended into one
        map at the image's size (:func:`~crackseg.inference.tiling.predict_tiled`). The image score is
        :meth:`image_score` of that stitched map when the method declares that its score reads only the map
        (:attr:`score_reads_map_only`: the default maximum, DFR / SkipAE's max / mean / top-k); otherwise
        (classifier probability, VAE reconstruction error, MSFlow's multiplicative map) it is the largest of the
        tiles' own scores: an image is as defective as its worst tile. Maps normalised per image
        (:meth:`normalizes_maps_per_image`: MSFlow ``map_normalization: image``, the VAE's ``min_max``) are
        normalised per tile instead, with a warning.
        """
        settings = self.tile_settings
        assert settings is not None
        if self.normalizes_maps_per_image() and not getattr(self, "_warned_tile_normalization", False):
            rank_zero_warn(f"{type(self).__name__} normalises maps per image (map_normalization); "
                           "with predict_tile_size each tile is normalised on its own, so tiles are not comparable")
            self._warned_tile_normalization = True
        maps, scores = [], []
        for image, path in zip(batch["image"], batch["path"], strict=True):
            tile_scores: list[Tensor] = []

            def run(tiles: Tensor, tile_scores: list[Tensor] = tile_scores) -> Tensor:
                outputs = self(tiles)
                tile_maps = self.anomaly_map(outputs)
                tile_scores.append(self.image_score(tile_maps, outputs).detach().float().amax().cpu())
                return tile_maps

            height, width = image.shape[-2:]
            total = tile_count(height, width, settings)
            with inner_progress(self._trainer, total, f"tiles of {Path(str(path)).name}") as advance:
                map_ = predict_tiled(image, run, settings, device=self.device, progress=advance)
            if self.score_reads_map_only:
                score = self.image_score(map_[None], {}).detach().float().cpu()[0]
            else:
                score = torch.stack(tile_scores).amax()
            maps.append(map_)
            scores.append(score)
        # one image per batch from the datamodule: a view, not a second full-resolution copy
        map_batch = maps[0][None] if len(maps) == 1 else torch.stack(maps)
        score_batch = torch.stack(scores)
        return {
            "map": map_batch,
            "score": score_batch,
            "pred_mask": map_batch >= float(self.pixel_threshold),
            "pred_label": score_batch >= float(self.image_threshold),
            "extra_maps": {},
        }

    def _any_rank(self, flag: bool) -> bool:
        """``flag`` OR-reduced over the DDP ranks: torchmetrics' ``compute`` is a collective, so every rank
        must call it when any rank has data (a rank whose shard held no mask would otherwise hang the others)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        return trainer.strategy.reduce_boolean_decision(flag, all=False)

    def _epoch_values(self, pixel_metrics: SegmentationMetrics, image_metrics: ImageMetrics,
                      pixel_updated: bool, image_updated: bool) -> dict[str, Tensor]:
        values: dict[str, Tensor] = {}
        if self._any_rank(pixel_updated):
            values.update(pixel_metrics.compute())
        if self._any_rank(image_updated):
            image = image_metrics.compute()
            matrix = image.pop("confusion_matrix")
            values.update(image)
            values.update({"image_tn": matrix[0, 0], "image_fp": matrix[0, 1],
                           "image_fn": matrix[1, 0], "image_tp": matrix[1, 1]})
        pixel_metrics.reset()
        image_metrics.reset()
        return values

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self._epoch_values(self.pixel_metrics[stage], self.image_metrics[stage],
                                    self._metrics_updated["pixel", stage], self._metrics_updated["image", stage])
        values["pixel_threshold"] = self.pixel_threshold
        values["image_threshold"] = self.image_threshold
        names = self._source_names() or []
        for (source_stage, index), (pixel, image, updated) in sorted(self._source_metrics.items()):
            if source_stage == stage:
                name = names[index] if index < len(names) else f"source_{index}"
                values.update({f"{name}/{k}": v for k, v in self._epoch_values(pixel, image, *updated).items()})
                updated[:] = [False, False]
        # already reduced over the ranks (torchmetrics syncs in compute); sync_dist averages equal values,
        # so every rank holds the same numbers (checkpoint monitors) and Lightning does not warn
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()}, sync_dist=True)
        self._metrics_updated["pixel", stage] = self._metrics_updated["image", stage] = False

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # -- checkpoint ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the module's class, so loading the checkpoint into another method fails with a clear message;
        drop the :attr:`weight_sources` from the saved hyper-parameters (the weights are in the state dict)."""
        checkpoint["crackseg_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        used = {name: hparams[name] for name in self.weight_sources if hparams.get(name) is not None}
        if used:
            checkpoint["crackseg_weight_sources"] = used
            checkpoint["hyper_parameters"] = {**hparams, **dict.fromkeys(used)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint holds this class; apply ``threshold`` / ``image_threshold`` given on the command
        line over the stored ones."""
        from crackseg.checkpoint import check_model_class

        check_model_class(checkpoint, type(self), getattr(self._trainer, "ckpt_path", None))
        state = checkpoint.get("state_dict", {})
        for name, override in self.threshold_overrides.items():
            if override is not None:
                state[name] = torch.tensor(float(override))

    # -- optimisation --------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (default: one group of the trainable parameters). A method with a
        pretrained part overrides it to give that part its own learning rate: ``"lr_scale"`` in a group multiplies
        ``model.lr`` there (``{"params": ..., "lr_scale": 0.1}``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [{**{k: v for k, v in group.items() if k != "lr_scale"}, "lr": hp.lr * group.get("lr_scale", 1.0)}
                  for group in self.parameter_groups()]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            raise ValueError(f"model.optimizer must be 'sgd', 'adam' or 'adamw', got {hp.optimizer!r}")
        warmup_fraction = float(hp.get("lr_warmup_fraction", 0.0))
        if hp.lr_schedule == "constant" and not warmup_fraction:
            return optimizer
        if hp.lr_schedule in ("epoch_step", "step"):
            step_size = 1 if hp.lr_schedule == "epoch_step" else int(hp.get("lr_step_epochs", 10))
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=hp.lr_gamma)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if hp.lr_schedule == "plateau":
            return {"optimizer": optimizer, "lr_scheduler": self._plateau_scheduler(optimizer)}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total - 1, int(round(warmup_fraction * total)))
        rest = total - warmup
        if hp.lr_schedule == "constant":
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        elif hp.lr_schedule == "multistep":
            milestones = sorted({max(1, int(f * total) - warmup) for f in hp.lr_milestones})
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=hp.lr_gamma)
        elif hp.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest)
        elif hp.lr_schedule == "poly":
            scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=rest, power=0.9)
        else:
            raise ValueError(f"unknown model.lr_schedule {hp.lr_schedule!r}")
        if warmup > 0:
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
            scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, scheduler], milestones=[warmup])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _plateau_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``ReduceLROnPlateau`` on :attr:`checkpoint_monitor`, stepped after each validation (not strict: a
        training epoch without validation, ``check_val_every_n_epoch`` > 1, leaves it alone)."""
        metric, mode = self.checkpoint_monitor
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=self.hparams.lr_gamma, patience=self.hparams.lr_plateau_patience - 1)
        return {"scheduler": scheduler, "interval": "epoch", "monitor": metric, "strict": False}


def _crop(value: Any, padded: torch.Size, height: int, width: int) -> Any:
    """Crop every tensor of the padded spatial size back to (height, width), recursing into containers."""
    if isinstance(value, Tensor):
        if value.ndim >= 3 and tuple(value.shape[-2:]) == tuple(padded):
            return value[..., :height, :width]
        return value
    if isinstance(value, dict):
        return {k: _crop(v, padded, height, width) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_crop(v, padded, height, width) for v in value)
    return value
