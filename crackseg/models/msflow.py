"""MSFlow (Zhou et al., IEEE TNNLS 2024) and the extractor pre-training U-Net of Marc et al. (EUSIPCO 2024).

MSFlow (readings from the official code, cool-xuan/msflow):

1. a frozen extractor (WideResNet50 stages 1–3), each map followed by ``AvgPool2d(3, 2, 1)``
   (512² input → 64², 32², 16²);
2. *parallel flows*: per scale a FrEIA ``SequenceINN`` of [2, 5, 8] ``AllInOneBlock`` couplings (affine
   clamping 1.9, soft-plus global affine, subnet conv3×3 → LayerNorm over channels → ReLU → conv3×3),
   each conditioned on a 64-channel 2-D sin/cos positional encoding;
3. a *fusion flow*: a fixed random channel permutation per scale, then one coupling layer whose
   scale / shift networks see every scale at once (:class:`FusionCoupling`);
4. loss = negative log-likelihood under a standard normal, ``½Σz² − log|det J|`` per image.

The parallel flows are FrEIA's; the fusion coupling is written here because FrEIA has no coupling across
inputs of different sizes. The flows are declared with FrEIA's ``(C, 1, 1)`` dims as in the reference code:
FrEIA 0.2 (the version on PyPI) uses the dims only for their rank and the channel count, so one flow works
at every input size (FrEIA's unreleased master checks sizes strictly: the dependency is pinned below 0.3).

:class:`PretrainUNet` is the structure of Marc et al. Fig. 2: the extractor's first stages as the encoder of
a three-stage U-Net whose decoder upsamples with transposed convolutions and concatenates the encoder
maps (skip connections); trained with BCE to segment synthetic anomalies, then its encoder is handed to
MSFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.backbones import create_backbone
from crackseg.models.ops import forward_in_chunks

__all__ = ["FusionCoupling", "MSFlowModel", "MultiScaleFlow", "PretrainUNet", "SubnetConvLN", "parallel_flow",
           "positional_encoding_2d"]


def positional_encoding_2d(channels: int, height: int, width: int) -> Tensor:
    """(channels, height, width) sin/cos encoding of x (first half of the channels) and y (second half).

    The 2-D extension of the Transformer encoding used by CFlow / MSFlow (written here: no library
    ships this 2-D layout).
    """
    if channels % 4:
        raise ValueError(f"the positional encoding needs a multiple of 4 channels, got {channels}")
    half = channels // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))
    pos_w = torch.arange(0.0, width).unsqueeze(1) * div  # (W, half/2)
    pos_h = torch.arange(0.0, height).unsqueeze(1) * div  # (H, half/2)
    encoding = torch.zeros(channels, height, width)
    encoding[0:half:2] = torch.sin(pos_w).T.unsqueeze(1).expand(-1, height, -1)
    encoding[1:half:2] = torch.cos(pos_w).T.unsqueeze(1).expand(-1, height, -1)
    encoding[half::2] = torch.sin(pos_h).T.unsqueeze(2).expand(-1, -1, width)
    encoding[half + 1::2] = torch.cos(pos_h).T.unsqueeze(2).expand(-1, -1, width)
    return encoding


class SubnetConvLN(nn.Module):
    """Coupling subnet of MSFlow: conv3×3 → LayerNorm over channels → ReLU → conv3×3 (hidden = input width)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.norm = nn.LayerNorm(dim_in)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(F.relu(x))


def parallel_flow(channels: int, cond_channels: int, blocks: int, clamp: float = 1.9) -> Ff.SequenceINN:
    """One scale's flow: ``blocks`` FrEIA ``AllInOneBlock`` couplings conditioned on the positional encoding."""
    flow = Ff.SequenceINN(channels, 1, 1)
    for _ in range(blocks):
        flow.append(Fm.AllInOneBlock, cond=0, cond_shape=(cond_channels, 1, 1), subnet_constructor=SubnetConvLN,
                    affine_clamping=clamp, global_affine_type="SOFTPLUS")
    return flow


class _FusionNet(nn.Module):
    """Scale / shift network of the fusion coupling: all scales pooled to the smallest, mixed, split back.

    conv3×3 (ΣC → ΣC/4) → LayerNorm → ReLU → conv3×3 (→ ΣC) → ReLU, split per scale, bilinearly upsampled
    to each scale and added to its input; then a conv3×3 per scale for the log-scale and one for the shift.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int]) -> None:
        super().__init__()
        total = sum(in_channels)
        mid = max(1, total // 4)
        self.in_channels = list(in_channels)
        self.conv1 = nn.Conv2d(total, mid, 3, 1, 1)
        self.norm = nn.LayerNorm(mid)
        self.conv2 = nn.Conv2d(mid, total, 3, 1, 1)
        self.conv_s = nn.ModuleList(nn.Conv2d(c, o, 3, 1, 1) for c, o in zip(in_channels, out_channels, strict=True))
        self.conv_t = nn.ModuleList(nn.Conv2d(c, o, 3, 1, 1) for c, o in zip(in_channels, out_channels, strict=True))

    def forward(self, xs: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        smallest = xs[-1].shape[-2:]
        mixed = torch.cat([F.adaptive_avg_pool2d(x, smallest) for x in xs], dim=1)
        mixed = self.conv1(mixed)
        mixed = F.relu(self.norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        mixed = F.relu(self.conv2(mixed))
        parts = torch.split(mixed, self.in_channels, dim=1)
        hidden = [x + F.interpolate(p, size=x.shape[-2:], mode="bilinear", align_corners=True)
                  for x, p in zip(xs, parts, strict=True)]
        return ([conv(h) for conv, h in zip(self.conv_s, hidden, strict=True)],
                [conv(h) for conv, h in zip(self.conv_t, hidden, strict=True)])


class FusionCoupling(nn.Module):
    """MSFlow's fusion flow: a fixed random channel permutation per scale, then one multi-scale coupling.

    Every scale is split into halves (a, b). First a ← a·e(s₂(b)) + t₂(b), with s₂, t₂ computed from the
    b halves of *all* scales; then b ← b·e(s₁(a)) + t₁(a) likewise. e(s) = exp(α·0.636·atan(s / α)) bounds
    the log-scale by ±α (the "atan" soft clamp of the reference code, α = ``clamp``). The outputs are
    clamped to ±1e6 as in the reference. ``forward(..., rev=True)`` inverts the layer exactly.

    Args:
        channels: channels of each scale, finest first.
        clamp: soft clamp α of the log-scales.
        seed: seed of the permutations (stored as buffers, so checkpoints keep them).
    """

    def __init__(self, channels: Sequence[int], clamp: float = 1.9, seed: int = 0) -> None:
        super().__init__()
        self.channels = [int(c) for c in channels]
        self.split_a = [c // 2 for c in self.channels]
        self.split_b = [c - c // 2 for c in self.channels]
        self.clamp = float(clamp)
        generator = torch.Generator().manual_seed(seed)
        for index, c in enumerate(self.channels):
            perm = torch.randperm(c, generator=generator)
            self.register_buffer(f"perm_{index}", perm)
            self.register_buffer(f"inv_perm_{index}", torch.argsort(perm))
        self.subnet_b = _FusionNet(self.split_b, self.split_a)  # b halves → (log-scale, shift) of the a halves
        self.subnet_a = _FusionNet(self.split_a, self.split_b)  # a halves → (log-scale, shift) of the b halves

    def log_e(self, s: Tensor) -> Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp) if self.clamp > 0 else s

    def _affine(self, subnet: _FusionNet, given: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        log_scales, shifts = subnet(given)
        return [self.log_e(s) for s in log_scales], shifts

    def forward(self, xs: Sequence[Tensor], rev: bool = False) -> tuple[list[Tensor], Tensor]:
        """(outputs, log|det J|) of the layer (``rev=False``) or of its inverse (``rev=True``)."""
        if len(xs) != len(self.channels):
            raise ValueError(f"FusionCoupling expects {len(self.channels)} scales, got {len(xs)}")
        if not rev:
            xs = [x[:, getattr(self, f"perm_{i}")] for i, x in enumerate(xs)]
        a = [x[:, :n] for x, n in zip(xs, self.split_a, strict=True)]
        b = [x[:, n:] for x, n in zip(xs, self.split_a, strict=True)]
        if not rev:
            log_s2, t2 = self._affine(self.subnet_b, b)
            a = [x * torch.exp(s) + t for x, s, t in zip(a, log_s2, t2, strict=True)]
            log_s1, t1 = self._affine(self.subnet_a, a)
            b = [x * torch.exp(s) + t for x, s, t in zip(b, log_s1, t1, strict=True)]
            sign = 1.0
        else:
            log_s1, t1 = self._affine(self.subnet_a, a)
            b = [(x - t) * torch.exp(-s) for x, s, t in zip(b, log_s1, t1, strict=True)]
            log_s2, t2 = self._affine(self.subnet_b, b)
            a = [(x - t) * torch.exp(-s) for x, s, t in zip(a, log_s2, t2, strict=True)]
            sign = -1.0
        logdet = sign * sum(s1.sum(dim=(1, 2, 3)) + s2.sum(dim=(1, 2, 3))
                            for s1, s2 in zip(log_s1, log_s2, strict=True))
        ys = [torch.cat([ya, yb], dim=1) for ya, yb in zip(a, b, strict=True)]
        if rev:
            ys = [y[:, getattr(self, f"inv_perm_{i}")] for i, y in enumerate(ys)]
        else:
            ys = [y.clamp(-1e6, 1e6) for y in ys]
        return ys, logdet


class MultiScaleFlow(nn.Module):
    """MSFlow's flows without the extractor: per-scale parallel flows, then the fusion flow.

    Args:
        channels: channels of each scale, finest first.
        blocks: coupling blocks of each scale's parallel flow ([2, 5, 8]).
        cond_channels: channels of the positional encoding (64).
        clamp: affine clamping of every coupling (1.9).
    """

    def __init__(self, channels: Sequence[int], blocks: Sequence[int] = (2, 5, 8), cond_channels: int = 64,
                 clamp: float = 1.9) -> None:
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"model.blocks needs one count per stage ({len(channels)} stages), got {list(blocks)}")
        if any(b < 1 for b in blocks):
            raise ValueError(f"model.blocks must be >= 1, got {list(blocks)}")
        self.channels = [int(c) for c in channels]
        self.cond_channels = int(cond_channels)
        self.parallel_flows = nn.ModuleList(parallel_flow(c, self.cond_channels, b, clamp)
                                            for c, b in zip(self.channels, blocks, strict=True))
        self.fusion_flow = FusionCoupling(self.channels, clamp)

    def condition(self, like: Tensor) -> Tensor:
        """Positional encoding for a (B, C, h, w) map, on its device and dtype."""
        encoding = positional_encoding_2d(self.cond_channels, like.shape[-2], like.shape[-1])
        return encoding.to(device=like.device, dtype=like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1, -1)

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Latents and log|det J| (B,) for the per-scale feature maps."""
        zs, logdet = [], 0.0
        for h, flow in zip(features, self.parallel_flows, strict=True):
            z, jac = flow(h, c=[self.condition(h)])
            zs.append(z)
            logdet = logdet + jac
        zs, fusion_logdet = self.fusion_flow(zs)
        return zs, fusion_logdet + logdet

    def inverse(self, zs: Sequence[Tensor]) -> list[Tensor]:
        """The feature maps whose latents are ``zs`` (the flows run backwards)."""
        hs, _ = self.fusion_flow(list(zs), rev=True)
        return [flow(h, c=[self.condition(h)], rev=True)[0] for h, flow in zip(hs, self.parallel_flows, strict=True)]


class MSFlowModel(nn.Module):
    """Frozen extractor → pooling per stage → :class:`MultiScaleFlow`.

    ``forward`` returns ``{"z": [per-scale latents], "logdet": (B,) log|det J| of the whole flow}``. The
    extractor stays in eval mode and gets no gradients (MSFlow trains only the flows).

    Args:
        backbone: timm name of the extractor (paper: ``wide_resnet50_2``).
        stages: its feature levels (timm ``out_indices``; ResNets: 1–3 = ``layer1`` … ``layer3``).
        weights: extractor weights (see :func:`~crackseg.models.backbones.create_backbone`).
        blocks: coupling blocks of each scale's parallel flow ([2, 5, 8]).
        cond_channels: channels of the positional encoding (64).
        clamp: affine clamping of every coupling (1.9).
        pool: ``"avg"`` (AvgPool2d(3, 2, 1), the paper), ``"max"`` or ``"none"``.
        padding_mode: border fill of the extractor's convolutions (``"zeros"``; MSFlow's code: ``"reflect"``).
        inference_chunk: on a CPU in eval mode, batches larger than this run in chunks of this many images (the
            same outputs; a large batch costs more per image there, see :func:`~crackseg.models.ops.forward_in_chunks`).
            None: one pass; training and GPUs always take the whole batch.
    """

    def __init__(self, backbone: str = "wide_resnet50_2", stages: Sequence[int] = (1, 2, 3),
                 weights: str | None = "auto", blocks: Sequence[int] = (2, 5, 8), cond_channels: int = 64,
                 clamp: float = 1.9, pool: str = "avg", padding_mode: str = "zeros",
                 inference_chunk: int | None = 4) -> None:
        super().__init__()
        if inference_chunk is not None and inference_chunk < 1:
            raise ValueError(f"model.inference_chunk must be >= 1 or null, got {inference_chunk}")
        self.inference_chunk = inference_chunk
        if pool not in ("avg", "max", "none"):
            raise ValueError(f"model.pool must be 'avg', 'max' or 'none', got {pool!r}")
        if len(blocks) != len(stages):
            raise ValueError(f"model.blocks needs one count per stage: stages {list(stages)}, blocks {list(blocks)}")
        self.extractor = create_backbone(backbone, stages, weights, padding_mode=padding_mode)
        self.extractor.requires_grad_(False)
        self.extractor.eval()
        self.weights_source = str(getattr(self.extractor, "weights_source", "random"))
        reductions = list(self.extractor.feature_info.reduction())
        self.pool = {"avg": nn.AvgPool2d(3, 2, 1), "max": nn.MaxPool2d(3, 2, 1), "none": nn.Identity()}[pool]
        self._stride = max(reductions) * (1 if pool == "none" else 2)
        self.flows = MultiScaleFlow(self.extractor.feature_info.channels(), blocks, cond_channels, clamp)

    @property
    def stride(self) -> int:
        """Input sides should be multiples of this (deepest stage reduction × pooling)."""
        return self._stride

    def train(self, mode: bool = True) -> MSFlowModel:
        super().train(mode)
        self.extractor.eval()  # frozen, BatchNorm keeps its statistics
        return self

    def features(self, x: Tensor) -> list[Tensor]:
        """Pooled extractor maps (no gradient)."""
        with torch.no_grad():
            return [self.pool(h) for h in self.extractor(x)]

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        chunk = self.inference_chunk if not self.training and x.device.type == "cpu" else None
        return forward_in_chunks(self._forward, x, chunk)

    def _forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        features = self.features(x)
        with torch.autocast(device_type=x.device.type, enabled=False):  # flows in float32 under mixed precision
            zs, logdet = self.flows([h.float() for h in features])
        return {"z": zs, "logdet": logdet}


class PretrainUNet(nn.Module):
    """Three-stage U-Net over the extractor's first stages (Marc et al. Fig. 2), for synthetic-anomaly BCE.

    Encoder: the same timm features-only network MSFlow uses (same name, same stages, so its state dict
    is the one MSFlow loads), trainable. Decoder: per stage from the deepest, a 2×2 stride-2 transposed
    convolution to the next stage's width, concatenation with that stage's map, and conv3×3 → BN →
    ReLU; then transposed convolutions (×2 each) back to the input resolution and a 1×1 logit layer.
    The paper shows the structure only (no widths): widths follow the encoder's stages.

    Args:
        backbone: timm name of the extractor (``wide_resnet50_2``).
        stages: its feature levels (1, 2, 3).
        weights: initial encoder weights (ImageNet: ``"hub"`` / ``"offline"`` / ``"auto"`` / a file).
        padding_mode: border fill of the encoder's convolutions (as MSFlow's extractor, which loads it).
    """

    def __init__(self, backbone: str = "wide_resnet50_2", stages: Sequence[int] = (1, 2, 3),
                 weights: str | None = "auto", padding_mode: str = "zeros") -> None:
        super().__init__()
        self.encoder = create_backbone(backbone, stages, weights, padding_mode=padding_mode)
        self.weights_source = str(getattr(self.encoder, "weights_source", "random"))
        channels = list(self.encoder.feature_info.channels())
        reductions = list(self.encoder.feature_info.reduction())
        if any(r2 != 2 * r1 for r1, r2 in zip(reductions, reductions[1:], strict=False)):
            raise ValueError(f"{backbone} stages {list(stages)} have reductions {reductions}: the U-Net needs each "
                             "stage to halve the previous one (consecutive stages)")
        self.ups = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for deep, shallow in zip(channels[:0:-1], channels[-2::-1], strict=True):
            self.ups.append(nn.ConvTranspose2d(deep, shallow, 2, stride=2))
            self.fuse.append(nn.Sequential(nn.Conv2d(2 * shallow, shallow, 3, padding=1, bias=False),
                                           nn.BatchNorm2d(shallow), nn.ReLU(inplace=True)))
        head: list[nn.Module] = []
        width = channels[0]
        for _ in range(int(round(math.log2(reductions[0])))):
            out = max(8, width // 2)
            head += [nn.ConvTranspose2d(width, out, 2, stride=2), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            width = out
        head.append(nn.Conv2d(width, 1, 1))
        self.head = nn.Sequential(*head)
        self._stride = max(reductions)

    @property
    def stride(self) -> int:
        return self._stride

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.encoder(x)
        y = maps[-1]
        for up, fuse, skip in zip(self.ups, self.fuse, maps[-2::-1], strict=True):
            y = fuse(torch.cat([up(y), skip], dim=1))
        return {"logits": self.head(y)}
