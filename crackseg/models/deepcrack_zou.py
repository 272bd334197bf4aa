"""DeepCrack (Zou et al., IEEE TIP 2018): SegNet encoder-decoder with skip-layer fusion at five scales.

König et al. (weakly supervised crack segmentation, §IV-E item 3) describe it as "an encoder-decoder
based model which fuses multi scale information from the encoder and decoder and merges them to create
the segmentation output". Our reading of Zou et al. and of their PyTorch code (qinnzou/DeepCrack,
``codes/model/deepcrack.py``):

- encoder: the 13 convolutions of VGG-16 in five stages of (2, 2, 3, 3, 3) [conv 3×3 → BN → ReLU], widths
  64 … 512, each stage followed by 2×2 max-pooling that keeps its indices (SegNet);
- decoder: five stages mirroring it, each starting with max-unpooling by the indices of the matching
  encoder pooling, then (3, 3, 3, 2, 2) convolutions whose last one narrows to the next scale's width
  (512 → 512, 512 → 256, 256 → 128, 128 → 64, 64 → 64), as in the authors' code;
- skip-layer fusion at scale s = 1 … 5: the encoder stage's last conv map (before pooling) and the decoder
  stage's last conv map, both at 1/2^(s-1) of the input, are concatenated and reduced by a 1×1 conv to one
  channel (the side output), which is upsampled bilinearly to the input size (the paper's fixed
  deconvolution);
- fusion: a 1×1 conv over the five side outputs;
- deep supervision: every side output and the fused output get the loss (the authors' code sums six
  equally weighted BCE terms).

Where the paper and the released PyTorch code differ we follow the paper as the brief states it: the code
upsamples the concatenated maps first and reduces them by a 3×3 conv to 64 channels, a 3×3 conv to one
channel and a 3×3 fusing conv, and it has no batch norm (``batch_norm=False`` drops it here). Outputs are
logits. The five poolings need sides divisible by 32 (``stride``; the Lightning module pads).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.ops import max_unpool2d
from crackseg.models.unet import initialize_convs

__all__ = ["DeepCrackZouModel"]

ENCODER_CONVS = (2, 2, 3, 3, 3)
ENCODER_WIDTHS = (64, 128, 256, 512, 512)
#: output widths of the decoder convolutions at scales 1 … 5, as indices into ENCODER_WIDTHS (the authors' code)
DECODER_CONVS = (
    (0, 0),     # scale 1: 64 → 64, 64
    (1, 0),     # scale 2: 128 → 128, 64
    (2, 2, 1),  # scale 3: 256 → 256, 256, 128
    (3, 3, 2),  # scale 4: 512 → 512, 512, 256
    (4, 4, 4),  # scale 5: 512 → 512, 512, 512
)


def _conv(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return [*layers, nn.ReLU(inplace=True)]


class DeepCrackZouModel(nn.Module):
    """DeepCrack-Zou network (see the module docstring for the reading).

    Args:
        in_channels: input channels.
        width_multiplier: scales every width (1.0 = VGG-16's 64 … 512); small values make a fast test model.
        batch_norm: batch norm after every 3×3 conv (SegNet, the paper); False = the authors' PyTorch code.
        init: ``"default"`` (PyTorch's, as the authors' code) or ``"xavier"``.
    """

    def __init__(self, in_channels: int = 3, width_multiplier: float = 1.0, batch_norm: bool = True,
                 init: str = "default") -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"model.init_args.width_multiplier must be > 0, got {width_multiplier}")
        widths = [max(1, int(round(w * width_multiplier))) for w in ENCODER_WIDTHS]
        self.stride = 2 ** len(ENCODER_CONVS)
        self.encoders = nn.ModuleList()
        for i, n in enumerate(ENCODER_CONVS):
            layers: list[nn.Module] = []
            for j in range(n):
                layers += _conv(in_channels if i == 0 and j == 0 else widths[i - 1] if j == 0 else widths[i],
                                widths[i], batch_norm)
            self.encoders.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        decoders: list[nn.Module] = []
        decoder_out: list[int] = []
        channels = widths[-1]  # the decoder starts from the last pooled encoder map
        for i in reversed(range(len(ENCODER_CONVS))):
            layers = []
            for out in DECODER_CONVS[i]:
                layers += _conv(channels, widths[out], batch_norm)
                channels = widths[out]
            decoders.insert(0, nn.Sequential(*layers))
            decoder_out.insert(0, channels)
        self.decoders = nn.ModuleList(decoders)
        self.sides = nn.ModuleList([nn.Conv2d(widths[i] + decoder_out[i], 1, 1) for i in range(len(widths))])
        self.fuse = nn.Conv2d(len(widths), 1, 1)
        initialize_convs(self, init)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """``{"logits": (B, 1, H, W), "side_logits": [5 × (B, 1, H, W)]}`` (scales 1 … 5) for H, W divisible by 32."""
        size = x.shape[-2:]
        skips, indices, shapes = [], [], []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            shapes.append(x.shape[-2:])
            x, index = self.pool(x)
            indices.append(index)
        sides: list[Tensor] = [x] * len(self.encoders)
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](max_unpool2d(x, indices[i], shapes[i][-2:]))
            side = self.sides[i](torch.cat([skips[i], x], dim=1))
            if side.shape[-2:] != size:
                side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
            sides[i] = side
        return {"logits": self.fuse(torch.cat(sides, dim=1)), "side_logits": sides}
