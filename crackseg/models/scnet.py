"""SCNet (Sharma, Pradhan, Purushothaman, ICVGIP 2021): scale-space attention for crack segmentation.

The network of §III-F, Fig. 4 and eqs. 1–5, as four sub-networks:

- **attention-based encoder**: 5 VGG blocks of [conv 3×3 → instance norm → ReLU] × (2, 2, 3, 3, 3),
  64 → 512 channels; each block's output ``F`` goes through the scale-space attention module (eq. 1)
  ``F_a = σ(Conv_{C→1}(F)) ⊙ F``, ``F_r = Conv_{C→C'}(F_a)`` with C' = 1 (§V-A); ``F_a`` continues down
  the encoder and is max-pooled 2×2 with its indices kept for the decoder;
- **enhancement encoder** (from HCNN): iterative fusion of the 1-channel maps ``F_r`` of successive
  encoder blocks, ``f_e^1 = F_r^1``, ``f_e^i = concat(maxpool(f_e^{i-1}), F_r^i)`` (i channels at scale i);
- **attention-based decoder**: the mirrored VGG decoder of SegNet / Zou's DeepCrack (13 convs), each
  block preceded by max-unpooling with the encoder's stored indices ("non-linear upsampling") and
  followed by an attention module whose ``F_a`` continues up and whose ``F_r`` is the 1-channel ``f_d``;
- **fused network** (eqs. 2–5): per scale ``concat(f_e^i, f_d^i)`` (i + 1 channels: 2, 3, 4, 5, 6 as in
  eq. 2) → 1×1 conv → bilinear upsampling to the input size = side logit (``P^i`` after the sigmoid);
  ``concat`` of the 5 side logits → 1×1 conv = fused logit (``P^fused``).

Readings of the paper where it is ambiguous (the figures are not available):

- **C' = 1 and where F_r goes.** With C' = 1 the refined map ``F_r`` cannot feed the next encoder block,
  and eq. 2 concatenates a 1-channel ``f_d`` with an i-channel ``f_e^i`` (Conv38…Conv42 take 2…6 input
  channels). So ``F_a`` (C channels, "focused feature maps") stays on the main path and ``F_r`` is the
  scale's 1-channel side feature; the enhancement encoder stacks the ``F_r`` of scales 1…i.
- **Encoder and decoder widths: VGG-16 ("D"), not VGG-C.** VGG-C has 1×1 third convolutions in blocks
  3–5. With all-3×3 blocks and a SegNet-mirrored decoder the network has 29,461,683 parameters with 5
  levels and 15,303,847 with 4 levels: Table VII's 29.46 M / 15.30 M to the last reported digit. VGG-C's
  1×1 layers would give 20.02 M / 10.06 M (−32 %). ``vgg_config="C"`` builds that variant.
- **Five poolings.** As in SegNet and Zou's DeepCrack the encoder pools after every block (the deepest
  features are at 1/32 and the network's stride is 32 with 5 levels, 16 with 4); the 5 scales of the
  fused network are 1, 1/2, …, 1/16.
- **Convolutions before instance norm have no bias** (instance norm removes it); the attention and
  fused 1×1 convolutions have one. Instance norm has no affine parameters (PyTorch's default), which
  also matches the reported size. The attention convolutions are 1×1 (``attention_kernel_size``).
- **"Deconv" of eq. 2** is bilinear upsampling to the input size (§III-F: "up-sampled to the input
  image size"), as in Zou's DeepCrack fuse blocks; the decoder's own upsampling is max-unpooling.
- **Enhancement downsampling** is 2×2 max-pooling (thin structures survive it; no parameters, so the
  size still matches).
- **Dilated variant (Table VIII)**: no pooling at all (DeepLab practice): every block keeps the input
  resolution and block i (and its mirrored decoder block) uses dilation 2^(i−1), preserving the
  receptive field; all scales are then at full resolution (stride 1, much more memory).
- **Scalar-weight ablation (Table VII)**: the attention filter is replaced by one trainable scalar per
  module, ``F_a = σ(s)·F``; ``attention="none"`` (the HCNN baseline) uses ``F_a = F`` and keeps the 1×1
  side convolution ``F_r = Conv_{C→1}(F)``.

Edge prior (§III-E): the network takes a 4th input channel, a binary edge map. :class:`HED` runs the
HED network of the paper's public implementation (sniklaus/pytorch-hed) from a user-given weight file;
:class:`CannyEdges` is the classical fallback computed on the fly.

``python -m crackseg.models.scnet`` prints the parameter counts next to the paper's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.ops import max_unpool2d
from crackseg.models.unet import initialize_convs

VGG_BLOCKS = (2, 2, 3, 3, 3)
VGG_WIDTHS = (64, 128, 256, 512, 512)
#: parameters reported in Table VII (millions), by number of levels
PAPER_PARAMETERS = {5: 29.46, 4: 15.30}

AttentionMode = Literal["conv", "scalar", "none"]


def _kernel_sizes(n_convs: int, block: int, vgg_config: str) -> list[int]:
    """Kernel sizes of encoder block ``block`` (0-based): VGG-D is all 3×3, VGG-C ends blocks 3–5 with a 1×1."""
    if vgg_config == "C" and block >= 2:
        return [3] * (n_convs - 1) + [1]
    return [3] * n_convs


def conv_in_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> list[nn.Module]:
    """Conv (no bias: instance norm removes it) → instance norm → ReLU."""
    padding = dilation * (kernel_size // 2)
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.InstanceNorm2d(out_channels), nn.ReLU(inplace=True)]


class ScaleSpaceAttention(nn.Module):
    """SCNet's scale-space attention module (eq. 1, Fig. 3), with no pooling inside.

    ``F_a = σ(Conv¹_{C→1}(F)) ⊙ F`` and ``F_r = Conv²_{C→C'}(F_a)``. The ablation modes replace the
    attention filter: ``"scalar"`` uses ``F_a = σ(s)·F`` with one trainable scalar ``s``; ``"none"``
    uses ``F_a = F`` (``F_r`` is then a plain side convolution, as in HCNN).

    Args:
        channels: C, channels of the input feature map.
        out_channels: C', channels of the refined map (1 in the paper, §V-A).
        mode: ``"conv"`` (eq. 1), ``"scalar"`` or ``"none"``.
        kernel_size: kernel of both convolutions (odd; the paper does not say, 1 keeps its model size).
    """

    def __init__(self, channels: int, out_channels: int = 1, mode: AttentionMode = "conv",
                 kernel_size: int = 1) -> None:
        super().__init__()
        if mode not in ("conv", "scalar", "none"):
            raise ValueError(f"attention mode must be 'conv', 'scalar' or 'none', got {mode!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"attention kernel_size must be odd and >= 1, got {kernel_size}")
        self.mode = mode
        padding = kernel_size // 2
        self.gate = nn.Conv2d(channels, 1, kernel_size, padding=padding) if mode == "conv" else None
        self.scalar = nn.Parameter(torch.zeros(())) if mode == "scalar" else None
        self.refine = nn.Conv2d(channels, out_channels, kernel_size, padding=padding)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(F_r, F_a, attention map σ(Conv¹(F)) of shape (B, 1, H, W), or None without one)``."""
        attention = None
        if self.gate is not None:
            attention = torch.sigmoid(self.gate(features))
            attended = attention * features
        elif self.scalar is not None:
            attended = torch.sigmoid(self.scalar) * features
        else:
            attended = features
        return self.refine(attended), attended, attention


class SCNetModel(nn.Module):
    """The SCNet network (see the module docstring for the architecture and the readings of the paper).

    Args:
        in_channels: input channels: 4 = normalised RGB + binary edge map (the paper), 3 = RGB only.
        width_multiplier: scales every block's channels (1.0 = 64 … 512); small values for CPU tests.
        levels: number of scales / encoder blocks (5 in the paper, 4 in Table VII's "−1 level").
        encoder_attention: attention mode of the encoder modules: ``"conv"`` (eq. 1), ``"scalar"``, ``"none"``.
        decoder_attention: attention mode of the decoder modules.
        downsampling: ``"maxpool"`` (2×2 max-pooling with indices + max-unpooling) or ``"dilated"``
            (no pooling, dilation 2^(i−1) in block i; Table VIII).
        vgg_config: ``"D"`` (all 3×3, the reading that matches the paper's parameter count) or ``"C"``
            (1×1 last convolution in blocks 3–5, VGG-C as literally named in §III-F).
        attention_kernel_size: kernel of the attention convolutions.
        init: ``"xavier"`` (normal; §V-A, biases zero) or ``"default"`` (PyTorch's).
        fuse_init: initial weights of the final 1×1 convolution over the side logits (eq. 4): ``"xavier"``
            (as every other layer, §V-A: random signs) or ``"mean"`` (every weight 1 / ``levels``, bias 0:
            HED's fusion layer, the ancestor of this one). The fusion weights move little under the paper's
            SGD, so a side that its deep supervision teaches to rank cracks high can enter the fused map with
            the negative sign it drew at initialisation (``benchmarks.scnet_sides``).
    """

    def __init__(self, in_channels: int = 4, width_multiplier: float = 1.0, levels: int = 5,
                 encoder_attention: AttentionMode = "conv", decoder_attention: AttentionMode = "conv",
                 downsampling: Literal["maxpool", "dilated"] = "maxpool", vgg_config: Literal["D", "C"] = "D",
                 attention_kernel_size: int = 1, init: Literal["xavier", "default"] = "xavier",
                 fuse_init: Literal["xavier", "mean"] = "xavier") -> None:
        super().__init__()
        if fuse_init not in ("xavier", "mean"):
            raise ValueError(f"fuse_init must be 'xavier' or 'mean', got {fuse_init!r}")
        if not 1 <= levels <= len(VGG_BLOCKS):
            raise ValueError(f"levels must be in 1..{len(VGG_BLOCKS)} (4 or 5 in the paper), got {levels}")
        if downsampling not in ("maxpool", "dilated"):
            raise ValueError(f"downsampling must be 'maxpool' or 'dilated', got {downsampling!r}")
        if vgg_config not in ("C", "D"):
            raise ValueError(f"vgg_config must be 'C' or 'D', got {vgg_config!r}")
        if width_multiplier <= 0 or in_channels < 1:
            raise ValueError(f"need width_multiplier > 0 and in_channels >= 1, got {width_multiplier}, {in_channels}")
        widths = [max(1, int(round(w * width_multiplier))) for w in VGG_WIDTHS[:levels]]
        self.in_channels = in_channels
        self.levels = levels
        self.widths = tuple(widths)
        self.downsampling = downsampling
        self.stride = 2**levels if downsampling == "maxpool" else 1

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()  # decoder[i] works at scale i (run deepest first)
        for i in range(levels):
            dilation = 2**i if downsampling == "dilated" else 1
            kernels = _kernel_sizes(VGG_BLOCKS[i], i, vgg_config)
            layers: list[nn.Module] = []
            for j, k in enumerate(kernels):
                layers += conv_in_relu(in_channels if i == 0 and j == 0 else (widths[i - 1] if j == 0 else widths[i]),
                                       widths[i], k, dilation)
            self.encoder.append(nn.Sequential(*layers))
            # mirrored: same width, the last conv narrows to the next-shallower width (64 stays 64)
            out_width = widths[i - 1] if i > 0 else widths[0]
            layers = []
            for j, k in enumerate(reversed(kernels)):
                layers += conv_in_relu(widths[i], out_width if j == len(kernels) - 1 else widths[i], k, dilation)
            self.decoder.append(nn.Sequential(*layers))
        dec_widths = [widths[i - 1] if i > 0 else widths[0] for i in range(levels)]
        self.encoder_attention = nn.ModuleList(
            [ScaleSpaceAttention(w, 1, encoder_attention, attention_kernel_size) for w in widths])
        self.decoder_attention = nn.ModuleList(
            [ScaleSpaceAttention(w, 1, decoder_attention, attention_kernel_size) for w in dec_widths])
        # eq. 2: scale i (1-based) fuses i enhancement channels with 1 decoder channel
        self.fuse = nn.ModuleList([nn.Conv2d(i + 2, 1, 1) for i in range(levels)])
        self.final = nn.Conv2d(levels, 1, 1)  # eq. 4
        initialize_convs(self, init)
        if fuse_init == "mean":  # HED's fusion layer: the mean of the side logits
            nn.init.constant_(self.final.weight, 1.0 / levels)
            nn.init.zeros_(self.final.bias)

    #: submodule whose output Grad-CAM weights by default: the last decoder block (full resolution)
    default_gradcam_layer = "decoder.0"

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Normalised input (B, in_channels, H, W), H and W multiples of :attr:`stride`.

        Returns:
            ``logits`` (B, 1, H, W): the fused logit f^fused (eq. 4); ``side_logits``: the ``levels`` logits
            f_ed^i at the input size, finest scale first (P^i = sigmoid); ``encoder_attention`` and
            ``decoder_attention``: the attention maps σ(Conv¹(F)) per scale at their own resolution,
            finest first (empty lists when the modules have no attention map).
        """
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SCNetModel expects {self.in_channels} input channels, got {x.shape[1]}")
        size = x.shape[-2:]
        pooling = self.downsampling == "maxpool"
        enhancement: list[Tensor] = []
        encoder_maps: list[Tensor] = []
        unpool: list[tuple[Tensor, torch.Size]] = []
        for i, (block, attention) in enumerate(zip(self.encoder, self.encoder_attention, strict=True)):
            refined, x, amap = attention(block(x))
            if amap is not None:
                encoder_maps.append(amap)
            if i == 0:
                enhancement.append(refined)
            else:
                previous = F.max_pool2d(enhancement[-1], 2) if pooling else enhancement[-1]
                enhancement.append(torch.cat([previous, refined], dim=1))
            if pooling:
                shape = x.shape
                x, indices = F.max_pool2d(x, 2, return_indices=True)
                unpool.append((indices, shape))
        decoded: list[Tensor] = [x] * self.levels
        decoder_maps: list[Tensor | None] = [None] * self.levels
        for i in reversed(range(self.levels)):
            if pooling:
                indices, shape = unpool[i]
                x = max_unpool2d(x, indices, shape[-2:])
            decoded[i], x, decoder_maps[i] = self.decoder_attention[i](self.decoder[i](x))
        sides = []
        for i in range(self.levels):
            side = self.fuse[i](torch.cat([enhancement[i], decoded[i]], dim=1))
            if side.shape[-2:] != size:
                side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
            sides.append(side)
        return {
            "logits": self.final(torch.cat(sides, dim=1)),
            "side_logits": sides,
            "encoder_attention": encoder_maps,
            "decoder_attention": [m for m in decoder_maps if m is not None],
        }


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# -- edge priors (§III-E) -----------------------------------------------------------------------
def rgb_to_gray255(images: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) luma in [0, 255] (ITU-R 601 weights, as OpenCV)."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True) * 255.0


class CannyEdges(nn.Module):
    """Binary Canny edge map computed on the fly, on the device, from RGB in [0, 1]; no parameters.

    The classical stand-in for HED (whose weights cannot be downloaded everywhere): Canny gives thin,
    connected, binary edges like a thresholded HED map, needs no training, and with thresholds taken
    from the image median it needs no per-dataset tuning. Being part of the model, it travels with the
    checkpoint and runs the same way in fit, test and predict.

    Steps: luma → 3×3 Gaussian blur (OpenCV's σ = 0.8) → 3×3 Sobel (OpenCV's scale) → L2 gradient
    magnitude → non-maximum suppression along 4 directions → hysteresis with per-image thresholds
    ``lower = max(0, (1 − sigma)·median)``, ``upper = min(255, (1 + sigma)·median)`` of the blurred luma
    (the usual automatic-Canny rule). Matches ``cv2.Canny(blurred, lower, upper, L2gradient=True)`` up to
    rounding.

    Args:
        sigma: spread of the thresholds around the median.
    """

    def __init__(self, sigma: float = 0.33) -> None:
        super().__init__()
        if not 0 <= sigma <= 1:
            raise ValueError(f"canny sigma must be in [0, 1], got {sigma}")
        self.sigma = sigma
        blur = torch.tensor([1.0, 2.0, 1.0]) / 4
        sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("blur_kernel", (blur[:, None] * blur[None, :]).view(1, 1, 3, 3), persistent=False)
        self.register_buffer("sobel_kernels", torch.stack([sobel_x, sobel_x.t()])[:, None], persistent=False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) edge map in {0, 1} (same dtype as the input)."""
        gray = rgb_to_gray255(images.float())
        gray = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="reflect" if min(gray.shape[-2:]) > 1 else "replicate"),
                        self.blur_kernel)
        median = gray.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
        lower = ((1 - self.sigma) * median).clamp(min=0)
        upper = ((1 + self.sigma) * median).clamp(max=255)
        grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), self.sobel_kernels)
        gx, gy = grad[:, :1], grad[:, 1:]
        magnitude = torch.sqrt(gx**2 + gy**2)
        thin = magnitude * _non_maximum(magnitude, gx, gy)
        strong = thin > upper
        weak = thin > lower
        edges = _hysteresis(strong, weak)
        return edges.to(images.dtype)


def _non_maximum(magnitude: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """Mask of pixels whose magnitude is a maximum across the edge (4 quantised gradient directions)."""
    padded = F.pad(magnitude, (1, 1, 1, 1))
    h, w = magnitude.shape[-2:]

    def shifted(dy: int, dx: int) -> Tensor:
        return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    tan22 = 0.41421356
    horizontal = ay <= tan22 * ax  # gradient along x: compare left / right
    vertical = ax <= tan22 * ay  # gradient along y: compare up / down
    same_sign = (gx * gy) > 0  # gradient towards down-right (y grows downwards)
    pairs = [
        (horizontal, shifted(0, -1), shifted(0, 1)),
        (vertical & ~horizontal, shifted(-1, 0), shifted(1, 0)),
        (~horizontal & ~vertical & same_sign, shifted(-1, -1), shifted(1, 1)),
        (~horizontal & ~vertical & ~same_sign, shifted(-1, 1), shifted(1, -1)),
    ]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for region, before, after in pairs:
        keep |= region & (magnitude > before) & (magnitude >= after)
    return keep.to(magnitude.dtype)


def _hysteresis(strong: Tensor, weak: Tensor, check_every: int = 8) -> Tensor:
    """Weak pixels 8-connected to a strong one, by repeated 3×3 dilation inside the weak mask.

    While exporting (``torch.export`` / ONNX) the same fixed point is grown by :func:`_hysteresis_while_loop`:
    this loop's data-dependent stop cannot be traced.
    """
    if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
        return _hysteresis_while_loop(strong, weak)
    edges = strong.float()
    allowed = weak.float()
    limit = edges.shape[-2] * edges.shape[-1]
    for step in range(limit):
        grown = F.max_pool2d(edges, 3, stride=1, padding=1) * allowed
        grown = torch.maximum(grown, edges)
        if (step + 1) % check_every == 0 and torch.equal(grown, edges):
            break
        edges = grown
    return edges > 0


def _hysteresis_while_loop(strong: Tensor, weak: Tensor) -> Tensor:
    """:func:`_hysteresis` as a ``while_loop`` (an ONNX ``Loop``): grown until nothing changes."""
    from torch._higher_order_ops import while_loop

    allowed = weak.float()

    def grow(edges: Tensor, changed: Tensor) -> tuple[Tensor, Tensor]:
        grown = torch.maximum(F.max_pool2d(edges, 3, stride=1, padding=1) * allowed, edges)
        return grown, (grown != edges).any()

    edges, _ = while_loop(lambda edges, changed: changed.clone(), grow, (strong.float(), torch.tensor(True)))
    return edges > 0


class HED(nn.Module):
    """Holistically-nested edge detection (Xie & Tu 2015), the network of sniklaus/pytorch-hed.

    VGG-16 convolutions (5 stages, no 5th pooling), a 1×1 score per stage upsampled bilinearly to the
    input size, a 1×1 fusion of the 5 scores and a sigmoid; input BGR × 255 minus the Caffe means. The
    binary map is the fused probability ≥ ``threshold``. Weights are frozen (an input prior, not trained).

    Args:
        weights: a weight file of sniklaus/pytorch-hed (``network-bsds500.pytorch``: keys ``moduleVggOne…``
            or ``netVggOne…``) or a state dict of this class; None leaves random weights (tests only).
        threshold: binarisation threshold of the HED probability.
    """

    BGR_MEANS = (104.00698793, 116.66876762, 122.67891434)
    _STAGES = ("One", "Two", "Thr", "Fou", "Fiv")

    def __init__(self, weights: str | os.PathLike | None = None, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        stages = []
        for i, (n, width) in enumerate(zip(VGG_BLOCKS, VGG_WIDTHS, strict=True)):
            layers: list[nn.Module] = [nn.MaxPool2d(2, 2)] if i > 0 else []
            for j in range(n):
                layers += [nn.Conv2d(VGG_WIDTHS[i - 1] if j == 0 and i > 0 else (3 if j == 0 else width), width, 3,
                                     padding=1), nn.ReLU(inplace=False)]
            stages.append(nn.Sequential(*layers))
        self.vgg = nn.ModuleList(stages)
        self.score = nn.ModuleList([nn.Conv2d(w, 1, 1) for w in VGG_WIDTHS])
        self.combine = nn.Conv2d(len(VGG_WIDTHS), 1, 1)
        self.register_buffer("bgr_means", torch.tensor(self.BGR_MEANS).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self.load_weights(weights)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a sniklaus/pytorch-hed weight file (or a state dict of this class); names the file on error."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"HED weight file not found: {path} (model.init_args.hed_weights)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        converted = {}
        pattern = re.compile(r"^(?:module|net)(Vgg|Score)(One|Two|Thr|Fou|Fiv)\.(.+)$")
        for key, value in state.items():
            match = pattern.match(key)
            if match:
                kind, stage, rest = match.groups()
                prefix = "vgg" if kind == "Vgg" else "score"
                key = f"{prefix}.{self._STAGES.index(stage)}.{rest}"
            else:
                key = re.sub(r"^(?:module|net)Combine\.0\.", "combine.", key)
            converted[key] = value
        try:
            self.load_state_dict(converted, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path} is not a HED weight file of sniklaus/pytorch-hed: {error}") from error

    def probability(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) HED edge probability."""
        x = images.flip(1) * 255.0 - self.bgr_means
        size = x.shape[-2:]
        scores = []
        for stage, score in zip(self.vgg, self.score, strict=True):
            x = stage(x)
            scores.append(F.interpolate(score(x), size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.combine(torch.cat(scores, dim=1)))

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] → (B, 1, H, W) binary edge map in {0, 1}."""
        return (self.probability(images) >= self.threshold).to(images.dtype)


def _report(levels: Sequence[int] = (5, 4)) -> str:
    lines = []
    for config in ("D", "C"):
        for n in levels:
            with torch.device("meta"):
                model = SCNetModel(4, 1.0, n, vgg_config=config)  # type: ignore[arg-type]
            count = count_parameters(model) / 1e6
            paper = PAPER_PARAMETERS[n]
            lines.append(f"SCNet vgg_config={config} levels={n}: {count:.2f} M parameters "
                         f"(paper {paper:.2f} M, {100 * (count - paper) / paper:+.1f} %)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_report())
