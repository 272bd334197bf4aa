"""OED, the "Optimized Deep Encoder-Decoder" of König et al. (Digital Signal Processing 108, 2021).

König et al.'s weakly supervised paper (§IV-E item 4) describes it as "a pretrained EfficientNet as an
encoder and ... a custom decoder section that has been designed for crack segmentation. This method loosely
follows the U-Net shape". Our reading follows the authors' Keras code
(jacobkoenig/OptimizedDeepEncoderDecoderCrackSegmentation, ``model.py``):

- encoder: an ImageNet EfficientNet (B5 there); the decoder starts from the top activation (stride 32, the
  1×1 head conv + BN + activation) and takes four skips: the *expansion* activations of the first block
  of the stages that halve the resolution (TensorFlow ``block2a`` / ``block3a`` / ``block4a`` /
  ``block6a_expand_activation``: strides 2, 4, 8, 16; timm ``blocks.{1,2,3,5}.0.bn1``), as in
  segmentation_models' U-Net, plus a fifth skip at full resolution: two [conv 3×3 → BN → ReLU] with 16
  channels on the input image;
- decoder block i (widths 256, 128, 64, 32, 16): nearest ×2 upsampling, concatenation with the skip, a
  conv 3×3 → BN → ReLU, then two residual blocks [x + ReLU(conv 3×3(ReLU(conv 3×3 x)))] (no batch norm in
  the residual convs, as the code); the last block (full resolution) has two conv → BN → ReLU instead;
- output: conv 3×3 to one channel; deep supervision: a 1×1 conv to one channel on each of the first four
  blocks' outputs, upsampled bilinearly to the input size (the code's ``dsv`` heads);
- training in the OED code: SGD lr 1e-3, momentum 0.9, L2 1e-5 on the kernels, BCE + Dice on the main and
  the four side outputs, He-normal init. König et al.'s weakly supervised comparison trains every network
  with BCE (the Lightning wrapper's default).

The paper's EfficientNet-B5 with ImageNet weights is ``backbone: tf_efficientnet_b5`` (``weights: hub`` or a
file, ``normalization: imagenet``). Where the hub cannot be reached, the default here is EfficientNet-Lite0
with the offline ImageNet weights (:mod:`crackseg.models.backbones`; same block structure, smaller, ReLU6
instead of swish, no squeeze-and-excitation; ``normalization: symmetric``). For backbones that are not timm
EfficientNets (no expansion layers) the skips are the timm ``features_only`` levels (strides 2 … 16) and the
decoder starts from the last level (stride 32).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.backbones import create_backbone

__all__ = ["OEDModel", "efficientnet_skip_layers"]

OED_DECODER_CHANNELS = (256, 128, 64, 32, 16)


def efficientnet_skip_layers(name: str) -> list[str] | None:
    """The OED encoder taps of a timm EfficientNet, deepest last; None for other networks.

    The expansion activation (``blocks.<s>.0.bn1``) of the first block of every stage whose first block
    has a stride-2 depthwise conv (the TensorFlow ``block<s+1>a_expand_activation``), then the head
    activation ``bn2``. The model is built on the ``meta`` device (no memory, no weights).
    """
    with torch.device("meta"):
        try:
            model = timm.create_model(name, pretrained=False)
        except RuntimeError as error:
            if "Unknown model" in str(error):
                raise ValueError(f"unknown timm backbone {name!r} (model.init_args.backbone)") from error
            raise
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "bn2") or not hasattr(model, "conv_head"):
        return None
    layers = []
    for index, stage in enumerate(blocks):
        first = stage[0]
        conv_dw = getattr(first, "conv_dw", None)
        if index == 0 or not hasattr(first, "conv_pw") or not hasattr(first, "bn1") or conv_dw is None:
            continue
        if tuple(conv_dw.stride) == (2, 2):
            layers.append(f"blocks.{index}.0.bn1")
    return [*layers, "bn2"] if len(layers) >= 1 else None


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv 3×3 (no bias) → batch norm → ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """x + ReLU(conv 3×3(ReLU(conv 3×3(x)))) at a constant width (the OED code's residual block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class DecoderBlock(nn.Module):
    """Upsample ×2 (nearest) to the skip's size → concatenate the skip → conv-BN-ReLU → 2 residual blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, residual: bool = True) -> None:
        super().__init__()
        if residual:
            self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                       ResidualBlock(out_channels), ResidualBlock(out_channels))
        else:
            self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                       conv_bn_relu(out_channels, out_channels))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.convs(torch.cat([x, skip], dim=1))


class OEDModel(nn.Module):
    """OED: pretrained EfficientNet encoder, residual U-Net-like decoder, four deep-supervision heads.

    Args:
        backbone: timm encoder (paper: EfficientNet-B5 = ``tf_efficientnet_b5``; default
            ``efficientnet_lite0``, whose ImageNet weights ship offline).
        weights: encoder weights: ``"hub"``, ``"offline"`` (EfficientNet-Lite0 only), ``"auto"``, a weights
            file or None (random); see :func:`~crackseg.models.backbones.create_backbone`.
        decoder_channels: widths of the decoder blocks, deepest first; one per encoder skip plus the
            full-resolution block (5 for EfficientNets / ResNets: 256, 128, 64, 32, 16).
        input_channels: width of the full-resolution input convs (16).
        deep_supervision: return the side outputs of the decoder blocks above full resolution.
        skip_layers: module names of the encoder taps, shallowest first, the deepest being the decoder's
            start; None picks the OED taps of a timm EfficientNet (:func:`efficientnet_skip_layers`), else
            the timm ``features_only`` levels.

    Attributes:
        stride: the multiple input sides must be (the encoder's largest reduction, 32).
        encoder: the timm feature network (``weights_source`` says where its weights came from).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str | None = "offline",
                 decoder_channels: Sequence[int] = OED_DECODER_CHANNELS, input_channels: int = 16,
                 deep_supervision: bool = True, skip_layers: Sequence[str] | None = None) -> None:
        super().__init__()
        if input_channels < 1 or any(int(c) < 1 for c in decoder_channels):
            raise ValueError("model.init_args.decoder_channels and input_channels must be >= 1, got "
                             f"{list(decoder_channels)}, {input_channels}")
        layers = list(skip_layers) if skip_layers is not None else efficientnet_skip_layers(backbone)
        if layers is not None:
            self.encoder = create_backbone(backbone, weights=weights, layers=layers)
        else:
            self.encoder = create_backbone(backbone, weights=weights)
        channels = list(self.encoder.feature_info.channels())
        reductions = list(self.encoder.feature_info.reduction())
        if len(decoder_channels) != len(channels):
            raise ValueError(
                f"model.init_args.decoder_channels needs {len(channels)} widths for {backbone} ({len(channels) - 1} "
                f"encoder skips at strides {reductions[:-1]} + the full-resolution block), got "
                f"{list(decoder_channels)}")
        if sorted(reductions) != reductions or reductions[0] < 2:
            raise ValueError(f"the encoder taps of {backbone} must have growing strides >= 2, got {reductions}")
        self.weights_source: str = self.encoder.weights_source
        self.stride = int(reductions[-1])
        self.deep_supervision = deep_supervision
        self.input_convs = nn.Sequential(conv_bn_relu(3, input_channels), conv_bn_relu(input_channels, input_channels))
        skip_channels = [*reversed(channels[:-1]), input_channels]
        widths = [int(c) for c in decoder_channels]
        self.decoders = nn.ModuleList()
        in_channels = channels[-1]
        for i, (skip, out) in enumerate(zip(skip_channels, widths, strict=True)):
            self.decoders.append(DecoderBlock(in_channels, skip, out, residual=i < len(widths) - 1))
            in_channels = out
        self.head = nn.Conv2d(widths[-1], 1, 3, padding=1)
        self.side_heads = nn.ModuleList([nn.Conv2d(w, 1, 1) for w in widths[:-1]]) if deep_supervision else None
        for module in [self.input_convs, self.decoders, self.head, *([self.side_heads] if self.side_heads else [])]:
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # the code's he_normal
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """``{"logits": (B, 1, H, W)}`` plus ``"side_logits"`` (4 × (B, 1, H, W), deepest first) for H, W
        divisible by ``stride``."""
        size = x.shape[-2:]
        features = self.encoder(x)
        skips = [*reversed(features[:-1]), self.input_convs(x)]
        y = features[-1]
        sides = []
        for i, (decoder, skip) in enumerate(zip(self.decoders, skips, strict=True)):
            y = decoder(y, skip)
            if self.side_heads is not None and i < len(self.side_heads):
                side = self.side_heads[i](y)
                sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
        outputs: dict[str, Tensor | list[Tensor]] = {"logits": self.head(y)}
        if self.side_heads is not None:
            outputs["side_logits"] = sides
        return outputs
