"""DeepCrack (Liu et al., Neurocomputing 2019): VGG-16 encoder with deeply supervised side outputs.

Structure as in the authors' DeepSegmentor code (``deepcrack_networks.py``): five VGG blocks of
[conv 3×3 (no bias) → BN → ReLU] × (2, 2, 3, 3, 3), channels 64 → 512, 2×2 max-pooling between blocks;
each block has a 1×1 side-output conv to one channel (no bias), upsampled bilinearly (align_corners=True)
to the input size; the fused map is a 1×1 conv (no bias) over the five side maps. All outputs are logits.
Weights are initialised as DeepSegmentor's ``init_weights(init_type="xavier", init_gain=0.02)``: Xavier-normal
convolutions with gain 0.02, batch-norm weights from N(1, 0.02²), zero biases.
The paper's guided-filtering refinement is not part of the published code and is omitted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.unet import conv_block, initialize_convs

VGG16_BLOCKS = (2, 2, 3, 3, 3)
VGG16_WIDTHS = (64, 128, 256, 512, 512)


class DeepCrackLiuModel(nn.Module):
    """DeepCrack-Liu network.

    Args:
        in_channels: input channels.
        width_multiplier: scales every block's channels (1.0 = the paper's 64 … 512); smaller values
            give a fast model for CPU tests and demos.
        init: ``"xavier"`` (the authors' default) or ``"default"`` (PyTorch's).
        init_gain: gain of the Xavier initialisation (DeepSegmentor: 0.02; 1.0 = PyTorch's ``xavier_normal_``
            default). With ``init="xavier"`` batch-norm weights are drawn from N(1, ``init_gain``²), as there.
        side_bias: give the side-output and fuse 1×1 convolutions a bias (DeepSegmentor: none).
    """

    def __init__(self, in_channels: int = 3, width_multiplier: float = 1.0, init: str = "xavier",
                 init_gain: float = 0.02, side_bias: bool = False) -> None:
        super().__init__()
        widths = [max(1, int(round(w * width_multiplier))) for w in VGG16_WIDTHS]
        self.stride = 2 ** (len(VGG16_BLOCKS) - 1)
        self.blocks = nn.ModuleList(
            [conv_block(in_channels if i == 0 else widths[i - 1], widths[i], n) for i, n in enumerate(VGG16_BLOCKS)])
        self.sides = nn.ModuleList([nn.Conv2d(w, 1, 1, bias=side_bias) for w in widths])
        self.fuse = nn.Conv2d(len(widths), 1, 1, bias=side_bias)
        initialize_convs(self, init, gain=init_gain, batch_norm_std=init_gain)

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        size = x.shape[-2:]
        sides = []
        for i, (block, side) in enumerate(zip(self.blocks, self.sides, strict=True)):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            s = side(x)
            if s.shape[-2:] != size:
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=True)
            sides.append(s)
        return {"logits": self.fuse(torch.cat(sides, dim=1)), "side_logits": sides}
