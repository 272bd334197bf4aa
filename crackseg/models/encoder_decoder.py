"""Pretrained encoder-decoders of segmentation-models-pytorch (smp) with timm encoders.

The network is smp's (U-Net, U-Net++, FPN, DeepLabV3+, ...; :data:`ARCHITECTURES`) built on its
``tu-<timm name>`` universal encoder, which wraps ``timm.create_model(..., features_only=True)``. smp
itself is never asked for weights (its own download would reach the hub): the encoder is filled by the
project's backbone factory (:func:`~crackseg.models.backbones.create_backbone`), so ``weights`` takes the
same sources as every other crackseg backbone: ``"offline"`` (EfficientNet-Lite0's shipped ImageNet
weights), a local file, ``"hub"``, ``"auto"`` or None (random).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import segmentation_models_pytorch as smp
import timm
from torch import Tensor, nn

from crackseg.models.backbones import create_backbone, load_backbone_weights

#: smp architectures by their class names (the ``arch`` option is matched case-insensitively).
ARCHITECTURES = ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "DeepLabV3", "MAnet", "Linknet", "PSPNet",
                 "PAN", "UPerNet", "Segformer")


def _arch_class(arch: str) -> type[nn.Module]:
    by_name = {name.lower(): name for name in ARCHITECTURES}
    name = by_name.get(str(arch).lower())
    if name is None:
        raise ValueError(f"unknown model.init_args.arch {arch!r}: segmentation-models-pytorch offers "
                         f"{', '.join(ARCHITECTURES)}")
    return getattr(smp, name)


class EncoderDecoderModel(nn.Module):
    """An smp encoder-decoder with one output channel, returning ``{"logits": (B, 1, H, W)}``.

    Args:
        arch: smp architecture, one of :data:`ARCHITECTURES`.
        encoder: timm model name (``efficientnet_lite0``, ``resnet34``, ``convnext_tiny``, ...).
        weights: encoder weights: ``"offline"``, ``"hub"``, ``"auto"``, a weights file or None (random).
        encoder_depth: number of encoder stages used (smp's ``encoder_depth``; the input sides are padded
            to a multiple of 2 ** depth).
        decoder_channels: widths of the decoder blocks (Unet / UnetPlusPlus / MAnet), None = smp's default.
        arch_kwargs: further arguments of the smp architecture (e.g. ``decoder_attention_type: scse``).

    Raises:
        ValueError: unknown architecture or encoder, an encoder smp cannot use (e.g. a ViT without a
            feature pyramid), weights that do not fit.
        RuntimeError: weights that cannot be had (hub unreachable, offline weights for another model).
    """

    def __init__(self, arch: str = "Unet", encoder: str = "efficientnet_lite0", weights: str | None = "offline",
                 encoder_depth: int = 5, decoder_channels: Sequence[int] | None = None,
                 arch_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        cls = _arch_class(arch)
        kwargs: dict[str, Any] = dict(arch_kwargs or {})
        if decoder_channels is not None:
            kwargs["decoder_channels"] = tuple(int(c) for c in decoder_channels)
        if "encoder_depth" in inspect.signature(cls).parameters:
            kwargs["encoder_depth"] = encoder_depth
        if not timm.is_model(encoder):
            create_backbone(encoder, weights=None)  # raises the factory's error naming similar models
        # weights first: unreachable weights fail before the network is built
        source = None if weights is None else create_backbone(encoder, weights=weights)
        try:
            self.net = cls(encoder_name=f"tu-{encoder}", encoder_weights=None, in_channels=3, classes=1, **kwargs)
        except (ValueError, RuntimeError, AssertionError, TypeError) as error:
            raise ValueError(f"segmentation-models-pytorch cannot build {cls.__name__} on the timm encoder "
                             f"{encoder!r} (model.init_args.encoder / arch_kwargs): {str(error).rstrip('.')}. "
                             "Use an encoder with a feature pyramid (ResNet, EfficientNet, ConvNeXt, ...)") from error
        self.weights_source = "random" if source is None else source.weights_source
        if source is not None:
            load_backbone_weights(self.net.encoder.model, source.state_dict(), f"{weights!r} for {encoder}")
        self.arch, self.encoder_name = cls.__name__, encoder
        self.stride = 2 ** encoder_depth

    @property
    def encoder(self) -> nn.Module:
        """The pretrained part (frozen / given its own learning rate by the Lightning module)."""
        return self.net.encoder

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.net(x)}
