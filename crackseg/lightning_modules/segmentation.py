"""Supervised crack segmentation: one module for every network trained on pixel masks.

:class:`SupervisedSegmentation` takes any network returning ``{"logits", "side_logits"?}``; the loss
is ``fused_weight · L(fused) + Σ_i w_i · L(side_i)`` (deep supervision, DeepCrack / SCNet eq. 6).
:class:`UNet`, :class:`DeepCrackLiu`, :class:`DeepCrackZou` and :class:`OED` are the networks of König
et al.'s weakly supervised comparison with their papers' defaults, so configs name them by short
``class_path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning import Callback
from torch import Tensor, nn

from crackseg.callbacks import F1Threshold
from crackseg.checkpoint import import_class
from crackseg.lightning_modules.base import CrackSegModule, LrSchedule
from crackseg.losses import combined_loss, parse_loss
from crackseg.models import DeepCrackLiuModel, DeepCrackZouModel, EncoderDecoderModel, OEDModel, UNetModel
from crackseg.models.backbones import warn_offline_normalization
from crackseg.models.oed import OED_DECODER_CHANNELS


class SupervisedSegmentation(CrackSegModule):
    """Pixel-supervised segmentation of the crack class.

    Every method builds its network in :meth:`configure_models` from its hyper-parameters; this class used
    directly builds the one ``net`` names.

    Args:
        net: the network as a config names it, ``{class_path: ..., init_args: {...}}`` of any ``nn.Module``
            returning ``{"logits": (B, 1, H, W)}``, plus ``"side_logits"`` for deep supervision (a subclass
            builds its own and takes none). Kept as a hyper-parameter, so a checkpoint rebuilds it.
        loss: loss terms joined by ``+``, from ``bce``, ``focal`` (α = 1, γ = 2), ``soft_iou``,
            ``lovasz`` (Lovász hinge); applied to the fused output.
        side_loss: loss terms for the side outputs (default: the focal / bce part of ``loss``).
        side_weights: weights w_i of the side-output losses; None = no deep supervision.
        fused_weight: weight of the fused-output loss.
        **kwargs: thresholds, normalisation and optimisation options of :class:`CrackSegModule`.
    """

    #: dataset-level F1 (crack-free validation images count)
    checkpoint_monitor = ("val/ods_dataset", "max")

    @classmethod
    def threshold_calibration(cls) -> tuple[type[Callback], dict[str, Any]]:
        """The pixel threshold that maximises F1 over the validation pixels (iterative thresholding)."""
        return F1Threshold, {}

    def __init__(self, net: dict[str, Any] | None = None, loss: str = "bce", side_loss: str | None = None,
                 side_weights: Sequence[float] | None = None, fused_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loss_terms = parse_loss(loss)
        self.side_loss_terms = parse_loss(side_loss) if side_loss else tuple(
            t for t in self.loss_terms if t != "soft_iou") or self.loss_terms
        self.side_weights = tuple(side_weights) if side_weights is not None else None
        self.fused_weight = fused_weight

    def configure_models(self) -> None:
        """The network ``net`` names (``class_path`` and ``init_args``)."""
        spec = self.hparams.get("net")
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError("model.init_args.net: give the network as {class_path: ..., init_args: {...}} "
                             f"(an nn.Module), got {spec!r}")
        self.net = import_class(spec["class_path"], nn.Module, "model.init_args.net")(**(spec.get("init_args") or {}))

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Deep-supervision loss on the images whose pixels are known (``has_mask``: a mask, or a crack-free
        image).

        Defective images without a mask (e.g. Özgenel positives without annotation) are left out of the
        pixel loss instead of being taught as all-background.
        """
        known = batch["has_mask"]
        if not bool(known.all()):
            if not bool(known.any()):
                zero = outputs["logits"].sum() * 0.0
                return {"fused_loss": zero, "loss": zero}
            outputs = {"logits": outputs["logits"][known],
                       "side_logits": [s[known] for s in outputs.get("side_logits") or []] or None}
            batch = {"mask": batch["mask"][known]}
        target = batch["mask"]
        fused = combined_loss(outputs["logits"], target, self.loss_terms)
        losses = {"fused_loss": fused}
        total = self.fused_weight * fused
        sides = outputs.get("side_logits")
        if self.side_weights is not None and sides is not None:
            if len(sides) != len(self.side_weights):
                raise ValueError(f"model.side_weights has {len(self.side_weights)} values but the network "
                                 f"returns {len(sides)} side outputs")
            side = sum(w * combined_loss(s, target, self.side_loss_terms)
                       for w, s in zip(self.side_weights, sides, strict=True))
            losses["side_loss"] = side
            total = total + side
        losses["loss"] = total
        return losses

    def extra_maps(self, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int | None) -> dict[str, Tensor]:
        sides = outputs.get("side_logits") or []
        return {f"side_{i + 1}": torch.sigmoid(s) for i, s in enumerate(sides)}


class UNet(SupervisedSegmentation):
    """U-Net baseline (Ronneberger et al. 2015), BCE loss, as trained in König et al.'s comparison.

    Args:
        base_channels: channels of the first level (64 in the paper).
        depth: number of downsamplings (4 in the paper).
        loss: loss terms (see :class:`SupervisedSegmentation`).
        **kwargs: options of :class:`CrackSegModule`.
    """

    def __init__(self, base_channels: int = 64, depth: int = 4, loss: str = "bce", **kwargs: Any) -> None:
        super().__init__(loss=loss, **kwargs)

    def configure_models(self) -> None:
        self.net = UNetModel(3, self.hparams.base_channels, self.hparams.depth)


class DeepCrackLiu(SupervisedSegmentation):
    """DeepCrack (Liu et al., Neurocomputing 2019) with the authors' training set-up.

    Defaults follow the DeepSegmentor code: focal loss (α = 1, γ = 2) on the fused and the five side
    outputs with side weights (0.5, 0.75, 1.0, 0.75, 0.5), SGD lr 1e-4, momentum 0.9, weight decay
    2e-4, lr × 0.1 every 40 epochs (``lr_policy step``, ``lr_decay_iters 40``), Xavier initialisation with
    gain 0.02, side and fuse convolutions without bias, RGB scaled to [-1, 1]. Its training script feeds
    whole images resized to 544×384 with random flips and no crop or rotation
    (``configs/deepcrack_liu/*.yaml``).

    Args:
        width_multiplier: scales all channel widths (1.0 = VGG-16's 64 … 512).
        loss: loss terms of the fused output.
        side_weights: side-output loss weights.
        init_gain: gain of the Xavier initialisation (see :class:`~crackseg.models.DeepCrackLiuModel`).
        side_bias: bias on the side-output and fuse 1×1 convolutions (DeepSegmentor: none).
        lr_schedule: learning-rate schedule (see :class:`CrackSegModule`).
        lr_step_epochs: epochs between two decays of ``"step"``.
        **kwargs: options of :class:`CrackSegModule`.
    """

    def __init__(self, width_multiplier: float = 1.0, loss: str = "focal",
                 side_weights: Sequence[float] | None = (0.5, 0.75, 1.0, 0.75, 0.5), init_gain: float = 0.02,
                 side_bias: bool = False,
                 lr_schedule: LrSchedule = "step",
                 lr_step_epochs: int = 40, **kwargs: Any) -> None:
        super().__init__(loss=loss, side_weights=side_weights, lr_schedule=lr_schedule, lr_step_epochs=lr_step_epochs,
                         **kwargs)

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = DeepCrackLiuModel(3, hp.width_multiplier, init_gain=hp.init_gain, side_bias=hp.side_bias)


class DeepCrackZou(SupervisedSegmentation):
    """DeepCrack (Zou et al., IEEE TIP 2018): SegNet encoder-decoder, skip-layer fusion at five scales.

    Network and its reading: :class:`~crackseg.models.DeepCrackZouModel`. Defaults follow the authors'
    PyTorch code (qinnzou/DeepCrack): BCE on the fused output and on the five side outputs, all weighted 1,
    Adam lr 1e-3, no weight decay. König et al. (§IV-E) train it with SGD lr 1e-3 (÷10 every 10 epochs),
    momentum 0.9 and BCE: ``configs/weakly/deepcrack_zou_*.yaml``.

    Args:
        width_multiplier: scales every width (1.0 = VGG-16's 64 … 512).
        batch_norm: batch norm after every 3×3 conv (SegNet / the paper); false = the authors' code.
        loss: loss terms of the fused output (see :class:`SupervisedSegmentation`).
        side_weights: weights of the five side-output losses (scales 1 … 5); null = no deep supervision.
        optimizer: optimiser.
        lr: learning rate.
        weight_decay: weight decay.
        **kwargs: options of :class:`SupervisedSegmentation` and :class:`CrackSegModule`.
    """

    def __init__(self, width_multiplier: float = 1.0, batch_norm: bool = True, loss: str = "bce",
                 side_weights: Sequence[float] | None = (1.0, 1.0, 1.0, 1.0, 1.0),
                 optimizer: Literal["sgd", "adam", "adamw"] = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(loss=loss, side_weights=side_weights, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         **kwargs)

    def configure_models(self) -> None:
        self.net = DeepCrackZouModel(3, self.hparams.width_multiplier, self.hparams.batch_norm)


class OED(SupervisedSegmentation):
    """OED, König et al.'s "Optimized Deep Encoder-Decoder" (Digital Signal Processing 2021).

    Network and its reading: :class:`~crackseg.models.OEDModel` (pretrained EfficientNet encoder, residual
    U-Net-like decoder, four deep-supervision heads). The paper's encoder is EfficientNet-B5 with ImageNet
    weights (``backbone: tf_efficientnet_b5``, ``weights: hub``, ``normalization: imagenet``); the default
    is EfficientNet-Lite0 with the offline ImageNet weights (``normalization: symmetric``), which need no
    network access. Defaults follow the OED code: SGD lr 1e-3, momentum 0.9, weight decay 2e-5 (its L2
    1e-5 on the kernels), deep supervision with weight 1 on each side output; the loss is BCE, as König et
    al.'s weakly supervised comparison (§IV-E; the OED code adds a Dice term, not available here).

    Args:
        backbone: timm encoder name.
        weights: encoder weights: ``"offline"``, ``"hub"``, ``"auto"``, a weights file or null (random).
        decoder_channels: widths of the decoder blocks, deepest first (256, 128, 64, 32, 16).
        input_channels: width of the full-resolution input convs (16).
        skip_layers: module names of the encoder taps (shallowest first, the deepest starts the decoder);
            null = the OED taps of a timm EfficientNet, else the timm feature levels.
        loss: loss terms of the main output (see :class:`SupervisedSegmentation`).
        side_weights: weights of the four side-output losses (deepest first); null = no deep supervision.
        normalization: input normalisation (``"symmetric"`` for the offline weights, ``"imagenet"`` for
            hub weights).
        optimizer: optimiser.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        **kwargs: options of :class:`SupervisedSegmentation` and :class:`CrackSegModule`.
    """

    weight_sources = ("weights",)

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = "offline",
                 decoder_channels: Sequence[int] = OED_DECODER_CHANNELS, input_channels: int = 16,
                 skip_layers: Sequence[str] | None = None, loss: str = "bce",
                 side_weights: Sequence[float] | None = (1.0, 1.0, 1.0, 1.0),
                 normalization: Literal["symmetric", "imagenet", "unit"] = "symmetric",
                 optimizer: Literal["sgd", "adam", "adamw"] = "sgd", lr: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 2e-5, **kwargs: Any) -> None:
        super().__init__(loss=loss, side_weights=side_weights, normalization=normalization,
                         optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, **kwargs)

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = OEDModel(hp.backbone, hp.weights, hp.decoder_channels, hp.input_channels,
                            deep_supervision=hp.side_weights is not None, skip_layers=hp.skip_layers)
        heads = len(self.net.side_heads or [])
        if hp.side_weights is not None and len(hp.side_weights) != heads:
            raise ValueError(f"model.init_args.side_weights needs {heads} weights (one per decoder block above "
                             f"full resolution), got {list(hp.side_weights)}")
        warn_offline_normalization(self.net.weights_source, hp.normalization)


class EncoderDecoder(SupervisedSegmentation):
    """A pretrained encoder-decoder of segmentation-models-pytorch, fine-tuned on crack masks.

    The network is smp's ``arch`` on a timm ``encoder`` (:class:`~crackseg.models.EncoderDecoderModel`);
    the encoder starts from ImageNet weights (default: EfficientNet-Lite0's, shipped offline, which take RGB
    in [-1, 1]: ``normalization: symmetric``; hub and timm-file weights want ``normalization: imagenet``). No
    paper sets these defaults: they are the fine-tuning recipe of ``configs/recipes/own_data.yaml`` (AdamW,
    cosine schedule after a 5 % warm-up, BCE + soft IoU for thin, rare cracks), which trains from a few dozen
    labelled images.

    Args:
        arch: smp architecture: ``Unet``, ``UnetPlusPlus``, ``FPN``, ``DeepLabV3Plus``, ``DeepLabV3``,
            ``MAnet``, ``Linknet``, ``PSPNet``, ``PAN``, ``UPerNet``, ``Segformer`` (case-insensitive).
        encoder: timm encoder name (``efficientnet_lite0``, ``resnet34``, ``convnext_tiny``, ...).
        weights: encoder weights: ``"offline"``, ``"hub"``, ``"auto"``, a weights file or null (random).
        encoder_depth: encoder stages used (smp's ``encoder_depth``).
        decoder_channels: decoder widths (U-Net family), null = smp's default (256, 128, 64, 32, 16).
        arch_kwargs: further arguments of the smp architecture.
        freeze_encoder_epochs: train only the decoder for this many first epochs (encoder weights and its
            batch-norm statistics frozen), then everything.
        encoder_lr_multiplier: the encoder's learning rate as a multiple of ``lr``.
        loss: loss terms (see :class:`SupervisedSegmentation`).
        normalization: input normalisation (see :class:`~crackseg.lightning_modules.base.CrackSegModule`).
        optimizer: optimiser.
        lr: learning rate (decoder; the encoder gets ``lr × encoder_lr_multiplier``).
        weight_decay: weight decay.
        lr_schedule: learning-rate schedule.
        lr_warmup_fraction: fraction of the steps of linear warm-up.
        **kwargs: options of :class:`SupervisedSegmentation` and :class:`CrackSegModule`.
    """

    weight_sources = ("weights",)

    def __init__(self, arch: str = "Unet", encoder: str = "efficientnet_lite0", weights: str | None = "offline",
                 encoder_depth: int = 5, decoder_channels: Sequence[int] | None = None,
                 arch_kwargs: dict[str, Any] | None = None, freeze_encoder_epochs: int = 0,
                 encoder_lr_multiplier: float = 1.0, loss: str = "bce+soft_iou",
                 normalization: Literal["symmetric", "imagenet", "unit"] = "symmetric",
                 optimizer: Literal["sgd", "adam", "adamw"] = "adamw", lr: float = 1e-3, weight_decay: float = 1e-4,
                 lr_schedule: LrSchedule = "cosine",
                 lr_warmup_fraction: float = 0.05, **kwargs: Any) -> None:
        if freeze_encoder_epochs < 0:
            raise ValueError(f"model.init_args.freeze_encoder_epochs must be >= 0, got {freeze_encoder_epochs}")
        if encoder_lr_multiplier <= 0:
            raise ValueError(f"model.init_args.encoder_lr_multiplier must be > 0, got {encoder_lr_multiplier}")
        super().__init__(loss=loss, normalization=normalization, optimizer=optimizer, lr=lr,
                         weight_decay=weight_decay, lr_schedule=lr_schedule, lr_warmup_fraction=lr_warmup_fraction,
                         **kwargs)

    def configure_models(self) -> None:
        hp = self.hparams
        self.net = EncoderDecoderModel(hp.arch, hp.encoder, hp.weights, hp.encoder_depth, hp.decoder_channels,
                                       hp.arch_kwargs)
        warn_offline_normalization(self.net.weights_source, hp.normalization)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The encoder at ``lr × encoder_lr_multiplier``, the rest at ``lr`` (the encoder is in the optimiser
        while frozen too, so unfreezing needs no new optimiser)."""
        encoder = {id(p) for p in self.net.encoder.parameters()}
        rest = [p for p in self.parameters() if id(p) not in encoder and p.requires_grad]
        return [{"params": rest},
                {"params": list(self.net.encoder.parameters()), "lr_scale": self.hparams.encoder_lr_multiplier}]

    def _encoder_frozen(self) -> bool:
        return self.current_epoch < self.hparams.freeze_encoder_epochs

    def on_train_epoch_start(self) -> None:
        frozen = self._encoder_frozen()
        for p in self.net.encoder.parameters():
            p.requires_grad_(not frozen)
        self.net.encoder.train(not frozen)

    def on_train_end(self) -> None:
        for p in self.net.encoder.parameters():
            p.requires_grad_(True)
