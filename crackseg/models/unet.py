"""U-Net (Ronneberger et al., MICCAI 2015) with batch norm, for binary segmentation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int, n_convs: int = 2, bias: bool = False) -> nn.Sequential:
    """``n_convs`` × (conv 3×3 → batch norm → ReLU)."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=bias),
                   nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def initialize_convs(module: nn.Module, init: str, gain: float = 1.0, batch_norm_std: float | None = None) -> None:
    """Xavier-normal weights (scaled by ``gain``) and zero biases for every Conv2d (``init="xavier"``), or
    PyTorch's (``"default"``); with ``batch_norm_std``, batch-norm weights drawn from N(1, std²) and zero biases
    (the pix2pix / DeepSegmentor ``init_weights``)."""
    if init == "xavier":
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d) and batch_norm_std is not None:
                nn.init.normal_(m.weight, 1.0, batch_norm_std)
                nn.init.zeros_(m.bias)
    elif init != "default":
        raise ValueError(f"init must be 'xavier' or 'default', got {init!r}")


class UNetModel(nn.Module):
    """U-Net: 4 max-pool downsamplings, transposed-conv upsampling, skip concatenation.

    The original U-Net uses unpadded convolutions and crops skips; this common variant pads the
    convolutions (output size = input size) and adds batch norm, as most crack-segmentation
    comparisons (e.g. König et al.) do.

    Args:
        in_channels: input channels (3 for RGB, 4 with an edge channel).
        base_channels: channels of the first level (64 in the paper), doubled at each level.
        depth: number of downsamplings (4 in the paper).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, depth: int = 4) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"UNetModel needs depth >= 1 and base_channels >= 1, got {depth}, {base_channels}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.stride = 2**depth
        self.encoders = nn.ModuleList(
            [conv_block(in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth + 1)])
        self.pool = nn.MaxPool2d(2)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)])
        self.decoders = nn.ModuleList([conv_block(2 * widths[i], widths[i]) for i in range(depth)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for i in reversed(range(len(self.decoders))):
            x = self.decoders[i](torch.cat([skips[i], self.ups[i](x)], dim=1))
        return {"logits": self.head(x)}
