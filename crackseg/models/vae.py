"""Convolutional VAE with a dense latent space and the Grad-CAM attention of García-de-la-Puente et al. 2023.

The paper ("Unsupervised Defect Detection for Infrastructure Inspection", §3.1–3.2, §4.2) only says "5
convolutional blocks" and "32 as the dimension of the latent coding space"; it builds on the code of
Silva-Rodríguez et al. (jusiro/constrained_anomaly_segmentation), whose architecture is followed here
(``/work/shared/notes/reference_implementations.md``, "VAE + Grad-CAM"):

- **encoder**, the five blocks: an input convolution 7×7 / 2 (64 channels, no BN, ReLU or max-pooling
  after it), then the four stages ``layer1`` … ``layer4`` of a randomly initialised ResNet-18, built from
  torchvision's ``BasicBlock`` exactly as ``torchvision.models.resnet18`` builds them (two blocks per
  stage, 1×1-conv + BN shortcut where the shape changes, torchvision's Kaiming initialisation). For a
  224² input: 64×112² → 64×112² → 128×56² → 256×28² → 512×14², so the network's stride is 16;
- **dense latent**: flatten → ``Linear`` → z_μ and ``Linear`` → log σ² (32 each); z = z_μ + σ·ε with
  σ = exp(½ log σ²), ε ~ N(0, I) (eq. 1) while training, z = z_μ in evaluation (deterministic scores; the
  reference code also samples at inference);
- **decoder**: ``Linear`` (32 → 256·14·14) → 4 up-stages, each a residual up-block (conv 3×3 → nearest ×2
  → BN → ReLU → conv 3×3 → BN, plus a 1×1-conv → ×2 → BN shortcut; ReLU after the sum) followed by a
  plain ResNet ``BasicBlock``, channels 256 → 128 → 64 → 32 → 16, then a 3×3 output convolution to the
  image channels. The output is logits of the [0, 1] image (reconstruction loss BCE-with-logits).

The dense layers fix the input size: ``image_size`` must be a multiple of the stride (16; any size
divisible by 32 works). :class:`~crackseg.lightning_modules.vae.VAEGradCAM` resizes other inputs to it.

:func:`gradcam_attention` is eq. 4: a = σ(Σ_k α_k A_k), α_k = spatial mean of ∂z_μ/∂A_k at an encoder
block's output A, computed differentiably (``create_graph=True``) for the size constraint.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, conv1x1

#: the encoder blocks whose output can carry the attention, input side first
ENCODER_BLOCKS = ("stem", "layer1", "layer2", "layer3", "layer4")
#: channels of the ResNet-18 stages at width 1
RESNET18_WIDTHS = (64, 128, 256, 512)

AttentionMode = Literal["gradcam", "activation_mean"]


def resnet_stage(inplanes: int, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
    """One ResNet-18 stage as torchvision builds it (``ResNet._make_layer`` with ``BasicBlock``).

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the first block (1 for ``layer1``, 2 for the others).
        blocks: number of basic blocks (2 in ResNet-18).
    """
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [BasicBlock(inplanes, planes, stride, downsample)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _torchvision_init(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal (fan-out) convolutions, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VAEEncoder(nn.Module):
    """Input conv 7×7 / 2 + ResNet-18 stages 1–4 (the paper's 5 convolutional blocks) + dense z_μ, log σ².

    Args:
        in_channels: image channels.
        image_size: (height, width) of the input, multiples of :attr:`stride`.
        latent_dim: dimension of z (32 in the paper).
        width: multiplies every block's channels (1.0 = ResNet-18's 64 … 512; small values for tests).
    """

    stride = 16

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (224, 224), latent_dim: int = 32,
                 width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in RESNET18_WIDTHS]
        self.widths = tuple(widths)
        self.feature_size = (image_size[0] // self.stride, image_size[1] // self.stride)
        self.stem = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.layer1 = resnet_stage(widths[0], widths[0], 1)
        self.layer2 = resnet_stage(widths[0], widths[1], 2)
        self.layer3 = resnet_stage(widths[1], widths[2], 2)
        self.layer4 = resnet_stage(widths[2], widths[3], 2)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            _torchvision_init(stage)
        flat = widths[3] * self.feature_size[0] * self.feature_size[1]
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def blocks(self) -> OrderedDict[str, nn.Module]:
        """The five convolutional blocks by name (:data:`ENCODER_BLOCKS`)."""
        return OrderedDict((name, getattr(self, name)) for name in ENCODER_BLOCKS)

    def forward_from(self, block: str, activation: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Run the encoder from the output of ``block`` (``"input"`` for the image itself).

        Returns:
            z_μ (B, latent), log σ² (B, latent) and the outputs of the blocks after ``block`` by name.
        """
        names = ("input", *ENCODER_BLOCKS)
        if block not in names:
            raise ValueError(f"unknown encoder block {block!r}; expected one of {names}")
        features: dict[str, Tensor] = {}
        x = activation
        for name in ENCODER_BLOCKS[names.index(block):]:
            x = getattr(self, name)(x)
            features[name] = x
        flat = x.flatten(1)
        return self.mu(flat), self.logvar(flat), features

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """z_μ, log σ² and the output of every block (``"stem"``, ``"layer1"`` … ``"layer4"``)."""
        return self.forward_from("input", x)


class ResidualUpBlock(nn.Module):
    """Residual block that doubles the resolution (nearest): conv → ×2 → BN → ReLU → conv → BN, plus a
    1×1 conv → ×2 → BN shortcut, ReLU after the sum (the reference decoder's up-sampling block)."""

    def __init__(self, inplanes: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.skip = conv1x1(inplanes, planes)
        self.skip_bn = nn.BatchNorm2d(planes)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.up(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip_bn(self.up(self.skip(x))))


class VAEDecoder(nn.Module):
    """Dense layer → 4 × (residual up-block + basic block) → 3×3 output conv (logits).

    Args:
        latent_dim: dimension of z.
        channels: channels after the dense layer (256 at width 1: half of the encoder's last stage).
        feature_size: (h, w) after the dense layer (the encoder's output size).
        out_channels: image channels.
        stages: up-sampling stages (4: ×16 back to the input size).
    """

    def __init__(self, latent_dim: int, channels: int, feature_size: tuple[int, int], out_channels: int = 3,
                 stages: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.feature_size = feature_size
        self.dense = nn.Linear(latent_dim, channels * feature_size[0] * feature_size[1])
        widths = [max(1, channels // 2**i) for i in range(stages + 1)]
        self.blocks = nn.Sequential(*(
            nn.Sequential(ResidualUpBlock(widths[i], widths[i + 1]), BasicBlock(widths[i + 1], widths[i + 1]))
            for i in range(stages)))
        self.out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(z).view(len(z), self.channels, *self.feature_size)
        return self.out(self.blocks(x))


class ConvVAE(nn.Module):
    """The VAE of García-de-la-Puente et al. 2023 (see the module docstring for the architecture).

    Args:
        in_channels: image channels (input and reconstruction).
        image_size: (height, width) of the input; multiples of :attr:`stride` (16).
        latent_dim: dimension of z (32, §4.2).
        width: channel multiplier of every block (1.0 = the paper's; e.g. 0.125 for tests).
    """

    stride = VAEEncoder.stride

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (224, 224), latent_dim: int = 32,
                 width: float = 1.0) -> None:
        super().__init__()
        image_size = (int(image_size[0]), int(image_size[1]))
        if len(image_size) != 2 or min(image_size) < self.stride or any(s % self.stride for s in image_size):
            raise ValueError(f"image_size must be two multiples of {self.stride} (the VAE's stride), got "
                             f"{image_size}")
        if latent_dim < 1 or width <= 0:
            raise ValueError(f"latent_dim must be >= 1 and width > 0, got {latent_dim}, {width}")
        self.image_size = image_size
        self.latent_dim = latent_dim
        self.encoder = VAEEncoder(in_channels, image_size, latent_dim, width)
        self.decoder = VAEDecoder(latent_dim, max(1, self.encoder.widths[-1] // 2), self.encoder.feature_size,
                                  in_channels)

    @staticmethod
    def reparameterize(z_mu: Tensor, z_logvar: Tensor) -> Tensor:
        """z = z_μ + σ·ε, σ = exp(½ log σ²), ε ~ N(0, I) (eq. 1)."""
        return z_mu + torch.exp(0.5 * z_logvar) * torch.randn_like(z_mu)

    def forward(self, x: Tensor, sample: bool | None = None) -> dict[str, Tensor | dict[str, Tensor]]:
        """Encode, sample and decode.

        Args:
            x: (B, C, H, W) normalised images of size ``image_size``.
            sample: draw z (eq. 1); default: in training mode only (evaluation decodes z_μ).

        Returns:
            ``"logits"`` (B, C, H, W) of the reconstruction, ``"z"``, ``"z_mu"``, ``"z_logvar"`` (B, latent)
            and ``"features"``: the output of each encoder block by name (for the attention).
        """
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"the VAE takes {self.image_size[0]}x{self.image_size[1]} inputs (dense latent), "
                             f"got {x.shape[-2]}x{x.shape[-1]}")
        z_mu, z_logvar, features = self.encoder(x)
        z = self.reparameterize(z_mu, z_logvar) if (self.training if sample is None else sample) else z_mu
        return {"logits": self.decoder(z), "z": z, "z_mu": z_mu, "z_logvar": z_logvar, "features": features}


def gradcam_attention(activation: Tensor, z_mu: Tensor, mode: AttentionMode = "gradcam",
                      create_graph: bool = False, retain_graph: bool | None = None) -> tuple[Tensor, Tensor | None]:
    """The class-activation map of eq. 4 before its sigmoid: Σ_k α_k A_k, in fp32.

    α_k = (1/|Ω|) Σ_{t∈Ω} ∂(Σ_j z_μ,j)/∂A_{k,t}: the gradient of the sum of the mean latent vector (the
    paper's "∂z_μ", a vector; the reference code sums it, over the batch too) with respect to the block
    output A, averaged over the spatial domain Ω. In training mode BatchNorm's batch statistics couple the
    images of a batch, so α then also carries the (small) cross-image terms, as in the reference code.

    Args:
        activation: (B, K, h, w) output A of an encoder block, part of the graph that produced ``z_mu``.
        z_mu: (B, latent) mean latent vector.
        mode: ``"gradcam"`` (eq. 4) or ``"activation_mean"`` (the reference code's effective map: the
            channel mean of A, its gradient weighting being commented out; no gradient needed).
        create_graph: keep the graph of the gradient so a loss on the map trains α too (training).
        retain_graph: keep the forward graph for a later backward (default: ``create_graph``).

    Returns:
        The map Σ_k α_k A_k (B, 1, h, w), fp32, and α (B, K) (None for ``"activation_mean"``).
    """
    if mode == "activation_mean":
        return activation.float().mean(1, keepdim=True), None
    if mode != "gradcam":
        raise ValueError(f"attention must be 'gradcam' or 'activation_mean', got {mode!r}")
    (grad,) = torch.autograd.grad(z_mu.sum(), activation, create_graph=create_graph,
                                  retain_graph=create_graph if retain_graph is None else retain_graph)
    alpha = grad.float().mean(dim=(2, 3))
    cam = (alpha[:, :, None, None] * activation.float()).sum(1, keepdim=True)
    return cam, alpha


def count_parameters(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())
