"""MSFlow with task-specific extractor pre-training (Marc et al., EUSIPCO 2024).

Two LightningModules (networks in :mod:`crackseg.models.msflow`):

- :class:`ExtractorPretraining` (§II-B, Fig. 2): the MSFlow extractor's first stages as the encoder of a
  three-stage U-Net, trained with BCE to segment synthetic anomalies (CutPaste or Poisson-blended real
  defects, made by the datamodule's ``synthetic_anomalies``) on normal training images;
- :class:`MSFlow` (Zhou et al. 2024, §II-A): normalising flows over the frozen extractor's features,
  trained on defect-free images by maximum likelihood; ``extractor_checkpoint`` hands it the encoder of
  an :class:`ExtractorPretraining` run (every extractor tensor is checked present).

Two commands (Table I's "with pre-training" columns)::

    crackseg fit --config configs/msflow/<dataset>.yaml --config configs/msflow/pretrain_cutpaste.yaml
    crackseg fit --config configs/msflow/<dataset>.yaml --config configs/msflow/cutpaste.yaml \\
        --model.init_args.extractor_checkpoint runs/msflow_<dataset>_pretrain_cutpaste/checkpoints/last.ckpt

Paper settings (§III-B1): Adam, lr 1e-4 (MVTec) / 1e-6 (Crack500, and every run with a pre-trained
extractor), ×1/3 at 70 % and 90 % of training, 100 epochs, batch 8, 512² inputs; pre-training 400 epochs
with the same implementation. From the reference code: gradient-norm clipping at 2, top-k image score. Not
reproduced: the reference code's linear learning-rate warm-up (from 0.3× over its first 3 of 25 meta-epochs),
which the paper does not mention; ``lr_schedule`` offers the paper's two decays only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn import functional as F

from crackseg.callbacks import MeanStdThreshold
from crackseg.lightning_modules.base import CrackSegModule
from crackseg.models.backbones import load_backbone_weights, read_state_dict, warn_offline_normalization
from crackseg.models.msflow import MSFlowModel, PretrainUNet

__all__ = ["MSFlow", "ExtractorPretraining", "check_extractor_checkpoint"]

#: MSFlow's image scores (the reference code's first)
IMAGE_SCORES = ("topk", "mean_nll", "scale_zmax")


def check_extractor_checkpoint(path: str | Path, backbone: str, stages: Sequence[int], normalization: str,
                               padding_mode: str = "zeros") -> None:
    """Raise a ValueError if an :class:`ExtractorPretraining` checkpoint was made for another extractor.

    Plain state-dict files (no ``hyper_parameters``) are accepted; their tensors are checked on loading.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"model.extractor_checkpoint not found: {path} (run the pre-training config first, "
                         "e.g. crackseg fit --config configs/msflow/<dataset>.yaml --config "
                         "configs/msflow/pretrain_cutpaste.yaml, then give its "
                         "runs/msflow_<dataset>_pretrain_cutpaste/checkpoints/last.ckpt)")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch.save file (safetensors): nothing to compare
        return
    hparams = stored.get("hyper_parameters", {}) if isinstance(stored, dict) else {}
    for name, ours in (("backbone", backbone), ("stages", list(stages)), ("normalization", normalization),
                       ("padding_mode", padding_mode)):
        theirs = hparams.get(name)
        if theirs is not None and (list(theirs) if name == "stages" else theirs) != ours:
            raise ValueError(f"model.extractor_checkpoint {path} was pre-trained with {name}={theirs!r}, but this "
                             f"MSFlow uses {name}={ours!r}: set model.init_args.{name} to match")


class ExtractorPretraining(CrackSegModule):
    """Fine-tunes the MSFlow extractor by segmenting synthetic anomalies (Marc et al. §II-B, Fig. 2).

    The datamodule makes the anomalies (``data.init_args.synthetic_anomalies``: ``CutPaste`` or
    ``PoissonBlend``); the loss is BCE between the U-Net's logits and the anomaly masks. The checkpoint
    holds the encoder under ``net.encoder.``: give it to :class:`MSFlow` as ``extractor_checkpoint``.
    Test on real anomalies reports how well the pre-training task transfers (a by-product).

    Args:
        backbone: timm name of the extractor (paper: ``wide_resnet50_2``); must equal MSFlow's.
        stages: its feature levels (1, 2, 3); must equal MSFlow's.
        weights: initial encoder weights (``"hub"``, ``"offline"``, ``"auto"``, a file, null = random).
        padding_mode: border fill of the encoder's convolutions; must equal MSFlow's.
        pos_weight: weight of the anomalous pixels in the BCE (1 = plain BCE, the paper).
        normalization: input normalisation (``"imagenet"``; ``"symmetric"`` for the offline weights).
        optimizer: optimiser (Adam, "the same implementation" as MSFlow).
        lr: learning rate (1e-4).
        weight_decay: weight decay (0).
        lr_schedule: ``"multistep"`` (×1/3 at 70 % and 90 % of training, as MSFlow).
        lr_milestones: fractions of training where the learning rate decays.
        lr_gamma: decay factor (1/3).
        **kwargs: thresholds and the other options of :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    weight_sources = ("weights",)

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        stages: Sequence[int] = (1, 2, 3),
        weights: str | None = "auto",
        padding_mode: Literal["zeros", "reflect"] = "zeros",
        pos_weight: float = 1.0,
        normalization: Literal["symmetric", "imagenet", "unit"] = "imagenet",
        optimizer: Literal["sgd", "adam", "adamw"] = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "multistep", "epoch_step", "cosine", "poly"] = "multistep",
        lr_milestones: tuple[float, ...] = (0.7, 0.9),
        lr_gamma: float = 1 / 3,
        **kwargs: Any,
    ) -> None:
        if pos_weight <= 0:
            raise ValueError(f"model.pos_weight must be > 0, got {pos_weight}")
        super().__init__(normalization=normalization, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         lr_schedule=lr_schedule, lr_milestones=lr_milestones, lr_gamma=lr_gamma, **kwargs)
        warn_offline_normalization(self.net.weights_source, normalization)

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = PretrainUNet(hp.backbone, tuple(hp.stages), hp.weights, hp.padding_mode)

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """BCE between the logits and the synthetic-anomaly masks (images without a mask are skipped)."""
        logits, has_mask = outputs["logits"], batch["has_mask"]
        if not bool(has_mask.any()):
            return {"loss": logits.sum() * 0.0}
        pos_weight = torch.tensor(float(self.hparams.pos_weight), device=logits.device)
        loss = F.binary_cross_entropy_with_logits(logits[has_mask].float(), batch["mask"][has_mask],
                                                  pos_weight=pos_weight)
        return {"loss": loss}


class MSFlow(CrackSegModule):
    """MSFlow (Zhou et al. 2024) as used by Marc et al. (2024): flows over a frozen, optionally pre-trained extractor.

    Loss: negative log-likelihood ½Σz² − log|det J| per image, averaged over the batch. Precision: under
    ``bf16-mixed`` / ``16-mixed`` only the frozen extractor runs in half precision; the flows (affine coupling
    with exp / log-determinants) run in float32 with autocast off; the likelihood and the maps are computed
    from their float32 outputs.
    Maps (reference code ``post_process``): per scale logp = −½·mean_c(z²); upsampling is bilinear
    (align_corners) to the input;

    - ``"add"`` map (pixel AUROC, :meth:`anomaly_map`): Σ_scales upsample(exp(logp − max)), the exponential
      taken at each scale's own resolution, subtracted from its maximum;
    - ``"mul"`` map (AUPRO, :meth:`pro_map`; image score): exp(Σ_scales upsample(logp) − max) subtracted from
      its maximum.

    "max" is each image's maximum (``map_normalization: image``, the reference code); ``none`` uses the
    largest possible value instead (logp ≤ 0), so maps are comparable across images. Image score
    (``image_score: topk``, the reference) = mean of the top ``top_k`` fraction of the ``"mul"`` map (the
    issue's 3 %; the reference code's default is 10 %); ``image_score: mean_nll`` is instead the image's mean
    negative log-likelihood −mean(Σ_scales upsample(logp)), the image-level score of flow detectors such as
    DifferNet: absolute, so comparable across images whatever ``map_normalization`` does to the maps.
    ``image_score: scale_zmax`` (not in the paper) standardises the image's mean negative log-likelihood at each
    scale by that scale's mean and standard deviation over the defect-free training images, and takes the
    largest over the scales: a scale whose likelihood varies little between normal images is not drowned by
    the noisier ones when the scales are summed. The statistics are gathered from the training batches of each
    epoch (no extra forward pass; over every rank), set before the validation that follows (so the image
    threshold, the validation scores and the checkpoint agree) and saved in the checkpoint
    (``scale_nll_stats``); :meth:`calibrate_scale_statistics` computes them over a loader for a checkpoint
    trained with another score.
    Maps are scores (``maps_are_probabilities = False``): exact AUROC / AUPRO at test, thresholds from
    ``MeanStdThreshold`` or ``F1Threshold``.

    Args:
        backbone: timm name of the extractor (paper: ``wide_resnet50_2``).
        stages: its feature levels (1, 2, 3 = ``layer1`` … ``layer3``).
        weights: ImageNet extractor weights (``"hub"``, ``"offline"``, ``"auto"``, a file, null = random);
            ignored when ``extractor_checkpoint`` is given.
        extractor_checkpoint: checkpoint of an :class:`ExtractorPretraining` run (or any state dict of the
            extractor): its encoder replaces the extractor's weights; every tensor must be there. Needed to
            fit only: MSFlow's own checkpoints hold the extractor, so ``test`` / ``predict`` / ``export`` from
            them do not read this file (it is saved as None, see ``weight_sources``).
        blocks: coupling blocks per scale ([2, 5, 8]).
        cond_channels: positional-encoding channels (64).
        clamp: affine clamping (1.9).
        pool: pooling after each stage: ``"avg"`` (AvgPool(3, 2, 1)), ``"max"`` or ``"none"``.
        padding_mode: border fill of the extractor's convolutions: ``"zeros"`` (torchvision's and timm's
            ResNets; the paper does not say) or ``"reflect"`` (MSFlow's code pads its stem and 3×3
            convolutions by reflection). The same pretrained weights either way.
        map_normalization: ``"image"`` (per-image maximum, reference) or ``"none"``.
        top_k: fraction of pixels averaged into the image score (0.03).
        image_score: ``"topk"`` (the reference: top-``top_k`` mean of the ``"mul"`` map), ``"mean_nll"``
            (the image's mean negative log-likelihood over all pixels and scales) or ``"scale_zmax"`` (the
            largest over the scales of the per-scale mean NLL standardised by its training-image statistics).
        inference_chunk: on a CPU, evaluation batches larger than this run in chunks of this many images (the
            same outputs, less time per image; ``benchmarks/RESULTS.md``, ``anomaly_timing``); null: one pass.
            Training and GPUs always take the whole batch.
        grad_clip_norm: gradient-norm clipping (2, reference code); 0 disables it. A trainer
            ``gradient_clip_val`` takes precedence.
        normalization: input normalisation (``"imagenet"``; ``"symmetric"`` for the offline weights).
        optimizer: optimiser (Adam).
        lr: learning rate (1e-4 MVTec; 1e-6 Crack500 and with a pre-trained extractor).
        weight_decay: weight decay (0).
        lr_schedule: ``"multistep"``: ×``lr_gamma`` at ``lr_milestones`` (70 %, 90 %) of training.
        lr_milestones: fractions of training where the learning rate decays.
        lr_gamma: decay factor (1/3).
        **kwargs: thresholds and the other options of :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    maps_are_probabilities = False
    weight_sources = ("weights", "extractor_checkpoint")
    score_reads_map_only = False  # the score (top-k of the multiplicative map, or the mean NLL) reads the outputs

    @classmethod
    def threshold_calibration(cls) -> tuple[type[Callback], dict[str, Any]]:
        """Pixel and image thresholds at mean + 1 std of the defect-free validation images' scores."""
        return MeanStdThreshold, {"level": "both"}

    def normalizes_maps_per_image(self) -> bool:
        """True with ``map_normalization: image`` (each map relative to its image's maximum)."""
        return self.hparams.map_normalization == "image"

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        stages: Sequence[int] = (1, 2, 3),
        weights: str | None = "auto",
        extractor_checkpoint: str | None = None,
        blocks: Sequence[int] = (2, 5, 8),
        cond_channels: int = 64,
        clamp: float = 1.9,
        pool: Literal["avg", "max", "none"] = "avg",
        padding_mode: Literal["zeros", "reflect"] = "zeros",
        map_normalization: Literal["image", "none"] = "image",
        top_k: float = 0.03,
        image_score: Literal["topk", "mean_nll", "scale_zmax"] = "topk",
        inference_chunk: int | None = 4,
        grad_clip_norm: float = 2.0,
        normalization: Literal["symmetric", "imagenet", "unit"] = "imagenet",
        optimizer: Literal["sgd", "adam", "adamw"] = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "multistep", "epoch_step", "cosine", "poly"] = "multistep",
        lr_milestones: tuple[float, ...] = (0.7, 0.9),
        lr_gamma: float = 1 / 3,
        **kwargs: Any,
    ) -> None:
        if not 0 < top_k <= 1:
            raise ValueError(f"model.top_k must be in (0, 1], got {top_k}")
        if image_score not in IMAGE_SCORES:
            raise ValueError(f"model.image_score must be one of {IMAGE_SCORES}, got {image_score!r}")
        if map_normalization not in ("image", "none"):
            raise ValueError(f"model.map_normalization must be 'image' or 'none', got {map_normalization!r}")
        if cond_channels < 4 or cond_channels % 4:
            raise ValueError(f"model.cond_channels must be a positive multiple of 4, got {cond_channels}")
        if grad_clip_norm < 0:
            raise ValueError(f"model.grad_clip_norm must be >= 0, got {grad_clip_norm}")
        if extractor_checkpoint is not None:
            check_extractor_checkpoint(extractor_checkpoint, backbone, stages, normalization, padding_mode)
        super().__init__(normalization=normalization, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         lr_schedule=lr_schedule, lr_milestones=lr_milestones, lr_gamma=lr_gamma, **kwargs)
        if extractor_checkpoint is None:
            warn_offline_normalization(self.net.weights_source, normalization)
        # (mean, std) per scale of the training images' per-scale mean NLL (``scale_zmax``); std 0 until gathered
        # (not NaN: no checkpoint with a non-finite tensor is written)
        self.register_buffer("scale_nll_stats", torch.zeros(2, len(stages)))
        self._scale_sums: Tensor | None = None  # (count, Σ, Σ²) per scale over this epoch's training images

    # -- networks -------------------------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        checkpoint = hp.extractor_checkpoint
        self.net = MSFlowModel(hp.backbone, tuple(hp.stages), None if checkpoint else hp.weights, tuple(hp.blocks),
                               hp.cond_channels, hp.clamp, hp.pool, hp.padding_mode, hp.inference_chunk)
        if checkpoint:
            path = Path(checkpoint).expanduser()
            state = read_state_dict(path)
            load_backbone_weights(self.net.extractor, state, f"model.extractor_checkpoint {path}")
            self.net.weights_source = "pretrained"
            rank_zero_info(f"MSFlow: extractor weights from {path} ({len(self.net.extractor.state_dict())} tensors)")

    def forward(self, images: Tensor) -> dict[str, Any]:
        """``{"z", "logdet", "image_size"}`` for RGB images in [0, 1]."""
        outputs = super().forward(images)
        outputs["image_size"] = tuple(images.shape[-2:])
        return outputs

    # -- per-scale statistics of the training images (image_score: scale_zmax) --------------------
    def training_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The network outputs; with ``scale_zmax`` their per-scale mean NLL is added to the epoch's sums."""
        outputs = super().training_outputs(batch)
        if self.hparams.image_score == "scale_zmax":
            self.add_scale_statistics(outputs)
        return outputs

    def scale_mean_nll(self, outputs: dict[str, Any]) -> Tensor:
        """(B, scales) each image's mean negative log-likelihood at each scale's own resolution."""
        return torch.stack([-lp.flatten(1).mean(1) for lp in self._native_logp(outputs)], dim=1)

    def add_scale_statistics(self, outputs: dict[str, Any]) -> None:
        """Add a batch's per-scale mean NLL to the running (count, Σ, Σ²) of the training images."""
        values = self.scale_mean_nll(outputs).detach().double()
        sums = torch.stack([torch.full_like(values[0], len(values)), values.sum(0), values.pow(2).sum(0)])
        self._scale_sums = sums if self._scale_sums is None else self._scale_sums + sums

    def apply_scale_statistics(self) -> bool:
        """Set ``scale_nll_stats`` from the running sums (summed over the ranks) and reset them; False if none."""
        sums = self._scale_sums
        if self._trainer is not None and self.trainer.world_size > 1:
            if sums is None:  # every rank joins the reduction, with or without batches of its own
                sums = torch.zeros(3, self.scale_nll_stats.shape[1], dtype=torch.float64, device=self.device)
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        self._scale_sums = None
        if sums is None or float(sums[0, 0]) < 2:
            return False
        count, total, squares = sums
        mean = total / count
        std = ((squares - count * mean.pow(2)) / (count - 1)).clamp_min(0).sqrt().clamp_min(1e-12)
        self.scale_nll_stats.copy_(torch.stack([mean, std]).to(self.scale_nll_stats))
        return True

    def has_scale_statistics(self) -> bool:
        """Whether ``scale_nll_stats`` holds gathered statistics (every scale's std > 0)."""
        return bool((self.scale_nll_stats[1] > 0).all())

    @torch.no_grad()
    def calibrate_scale_statistics(self, dataloader: Any) -> None:
        """Compute ``scale_nll_stats`` over a loader of defect-free images (a checkpoint fitted with another score);
        the module runs in eval mode meanwhile."""
        training, self._scale_sums = self.training, None
        self.eval()
        for batch in dataloader:
            self.add_scale_statistics(self(batch["image"].to(self.device)))
        self.train(training)
        if not self.apply_scale_statistics():
            raise ValueError("calibrate_scale_statistics: the loader gave fewer than 2 images")

    def on_train_epoch_start(self) -> None:
        self._scale_sums = None

    def on_validation_epoch_start(self) -> None:
        if self.hparams.image_score == "scale_zmax" and not self.trainer.sanity_checking:
            self.apply_scale_statistics()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """As the base class; a checkpoint saved before ``scale_nll_stats`` existed loads with it unset (zeros)."""
        super().on_load_checkpoint(checkpoint)
        checkpoint.get("state_dict", {}).setdefault("scale_nll_stats", torch.zeros_like(self.scale_nll_stats))

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradient norm at ``grad_clip_norm`` unless the trainer sets its own clipping."""
        if gradient_clip_val is None and self.hparams.grad_clip_norm > 0:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # -- loss and maps --------------------------------------------------------------------------
    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Negative log-likelihood ½Σz² − log|det J| per image, batch mean; also per feature dimension."""
        zs, logdet = outputs["z"], outputs["logdet"]
        half_sq = sum(0.5 * z.float().pow(2).sum(dim=(1, 2, 3)) for z in zs)
        nll = (half_sq - logdet).mean()
        dims = sum(z[0].numel() for z in zs)
        return {"loss": nll, "nll_per_dim": nll / dims}

    def _native_logp(self, outputs: dict[str, Any]) -> list[Tensor]:
        """Per scale logp = −½·mean_c(z²) at the scale's own resolution."""
        return [-0.5 * z.float().pow(2).mean(dim=1, keepdim=True) for z in outputs["z"]]

    def _to_input(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """A scale's map bilinearly upsampled (align_corners, as the reference) to the (unpadded) input size."""
        height, width = outputs["image_size"]
        stride = self.stride
        padded = (height + (-height) % stride, width + (-width) % stride)
        return F.interpolate(maps, size=padded, mode="bilinear", align_corners=True)[..., :height, :width]

    def _reference(self, maps: Tensor) -> Tensor:
        """Per-image maximum (reference code) or 0, the largest possible log-likelihood (``none``)."""
        if self.hparams.map_normalization == "image":
            return maps.amax(dim=(-2, -1), keepdim=True)
        return torch.zeros_like(maps[..., :1, :1])

    def anomaly_map(self, outputs: dict[str, Any]) -> Tensor:
        """The additive map (pixel AUROC): max − Σ_scales upsample(exp(logp_s − max_s)).

        As the reference ``post_process``, each scale's likelihood exp(logp − max) is taken at the scale's
        own resolution and then upsampled (exp of an upsampled logp would differ: exp is not linear).
        """
        probs = sum(self._to_input(torch.exp(lp - self._reference(lp)), outputs) for lp in self._native_logp(outputs))
        if self.hparams.map_normalization == "image":
            return probs.amax(dim=(-2, -1), keepdim=True) - probs
        return len(outputs["z"]) - probs

    def pro_map(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """The multiplicative map (AUPRO, image score): max − exp(Σ_scales logp_s − max)."""
        if "mul_map" not in outputs:  # computed once per batch (image score and AUPRO both use it)
            total = self._total_logp(outputs)
            # max − exp(total − max) of the reference is 1 − exp(total − max): exp(0) = 1 at the maximum
            outputs["mul_map"] = 1.0 - torch.exp(total - self._reference(total))
        return outputs["mul_map"]

    def _total_logp(self, outputs: dict[str, Any]) -> Tensor:
        """Σ_scales upsample(logp) at the input size, kept in ``outputs`` (the mul map and ``mean_nll`` read it)."""
        if "total_logp" not in outputs:
            outputs["total_logp"] = sum(self._to_input(lp, outputs) for lp in self._native_logp(outputs))
        return outputs["total_logp"]

    def image_score(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """Mean of the top ``top_k`` fraction of the multiplicative map, (``mean_nll``) the mean −Σ logp, or
        (``scale_zmax``) the largest standardised per-scale mean NLL."""
        if self.hparams.image_score == "mean_nll":
            return -self._total_logp(outputs).flatten(1).mean(1)
        if self.hparams.image_score == "scale_zmax":
            return self._scale_zmax(outputs)
        flat = self.pro_map(maps, outputs).flatten(1)
        k = max(1, math.ceil(self.hparams.top_k * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(1)

    def _scale_zmax(self, outputs: dict[str, Any]) -> Tensor:
        values = self.scale_mean_nll(outputs)
        mean, std = self.scale_nll_stats.to(values)
        if not self.has_scale_statistics():
            if self._trainer is not None and self.trainer.sanity_checking:  # before any training batch
                return values.amax(1)
            raise ValueError("model.image_score 'scale_zmax' needs the per-scale statistics of the training images, "
                             "which this model does not hold (a checkpoint fitted with another image_score, or no "
                             "training epoch yet): fit with image_score scale_zmax, or call "
                             "calibrate_scale_statistics(loader of defect-free images)")
        return ((values - mean) / std).amax(1)
