"""Anomaly detection by reconstructing pretrained features: DFR and the skip autoencoder of Tang et al.

Both methods (Yang et al. 2020, "DFR: Deep Feature Reconstruction for Unsupervised Anomaly Segmentation";
Tang et al. 2022, "Industrial Anomaly Detection with Skip Autoencoder and Deep Feature Extractor",
Sensors 22, 9327) share one pipeline (Tang et al. §3, Fig. 2):

1. :class:`FeatureExtractor` FE: a frozen ImageNet backbone; the maps of the chosen blocks are resized
   to a common grid and concatenated into one tensor. The grid follows DFR: each map is resized
   bilinearly to the input size and averaged over ``pool`` × ``pool`` windows with stride ``pool``
   (256² input → 64² grid);
2. an autoencoder AE over that tensor, trained on defect-free images only with the L2 "contextual
   loss" ‖AE(FE(x)) − FE(x)‖ (Tang eq. 1);
3. the anomaly map: the per-location residual between FE(x) and AE(FE(x)) (Tang eq. 2), here the
   channel mean of the squared residual as in DFR's code, upsampled to the input size.

The autoencoders:

- :class:`DFRModel`: DFR's 1×1-convolution AE, C → (C+2d)/2 → 2d → d → 2d → (C+2d)/2 → C with BatchNorm
  + ReLU between the convolutions (none after the latent and the output convolution), d chosen by
  PCA (:func:`estimate_latent_dim`: the components explaining 90 % of the variance of the first
  training batch's feature vectors);
- :class:`SkipAEModel`: the skip-connected encoder-decoder Tang et al. take from Skip-GANomaly (Akçay
  et al. 2019). The paper gives no layer list; this is Skip-GANomaly's U-Net generator (pix2pix
  ``UnetGenerator``) applied to the feature tensor instead of the image: ``depth`` stride-2 4×4
  convolutions (LeakyReLU 0.2 before, BatchNorm after, none on the outermost and the innermost),
  channels 64, 128, 256, 512, 512, ... (×2 per level up to 8 × ``base_channels``), mirrored by stride-2
  4×4 transposed convolutions (ReLU before, BatchNorm after) whose outputs are concatenated with the
  encoder maps of the same scale; N(0, 0.02) initialisation. Skip-GANomaly goes down to 1 × 1
  (``num_downs = log2(size)``): ``depth = 6`` on DFR's 64 × 64 grid. Differences: the output layer is
  linear (features are unbounded; Skip-GANomaly's tanh fits images in [−1, 1]), activations are not
  in place (pix2pix's in-place LeakyReLU also rectifies the skip tensors), and grids that are not a
  multiple of 2^depth are padded (replicate) and cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.models.backbones import create_backbone
from crackseg.models.ops import forward_in_chunks

__all__ = ["VGG19_DFR_LAYERS", "DFRModel", "FeatureAENet", "FeatureExtractor", "SkipAEModel", "estimate_latent_dim",
           "resize_pool_matrix", "residual_map"]

#: DFR's VGG19 layers relu1_1 … relu4_4 (12 maps, 3456 channels) as module names of timm's ``vgg19``.
VGG19_DFR_LAYERS = ("features.1", "features.3", "features.6", "features.8", "features.11", "features.13",
                    "features.15", "features.17", "features.20", "features.22", "features.24", "features.26")


class FeatureExtractor(nn.Module):
    """Frozen backbone → maps of the chosen blocks on one grid, concatenated: (B, ΣC_i, H / pool, W / pool).

    Every map is resized bilinearly (align_corners, as DFR) to the input size and average-pooled over
    ``pool`` × ``pool`` windows with stride ``pool`` (DFR's regional feature aggregation; 256² → 64²),
    computed exactly as two small matrix products per map (:func:`resize_pool_matrix`).
    The backbone stays in eval mode (BatchNorm statistics frozen) and gets no gradients.

    Args:
        backbone: timm model name.
        blocks: timm feature levels (``out_indices``; for ResNe(X)t 1–3 are ``layer1`` … ``layer3``).
        layers: module names to hook instead of ``blocks`` (e.g. :data:`VGG19_DFR_LAYERS`).
        weights: ``"hub"``, ``"offline"``, ``"auto"``, a weights file or None (see
            :func:`~crackseg.models.backbones.create_backbone`).
        pool: side of the averaging window and its stride (the grid is the input size / ``pool``).
        padding_mode: border fill of the backbone's convolutions (``"zeros"``, ``"reflect"``; see
            :func:`~crackseg.models.backbones.set_padding_mode`).
    """

    def __init__(self, backbone: str = "resnext101_32x8d", blocks: Sequence[int] | None = (1, 2, 3),
                 layers: Sequence[str] | None = None, weights: str | None = "auto", pool: int = 4,
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        if layers is not None and blocks is not None:
            raise ValueError("give blocks (timm feature levels) or layers (module names), not both")
        if layers is None and blocks is None:
            raise ValueError("give blocks (timm feature levels, e.g. [1, 2, 3]) or layers (module names)")
        self.backbone = create_backbone(backbone, blocks, weights, layers=layers, padding_mode=padding_mode)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.pool = int(pool)
        self.block_channels = list(self.backbone.feature_info.channels())
        self.channels = sum(self.block_channels)
        self.weights_source = str(getattr(self.backbone, "weights_source", "random"))

    @property
    def stride(self) -> int:
        """Input sides should be multiples of this (the pooling window)."""
        return self.pool

    def train(self, mode: bool = True) -> FeatureExtractor:
        super().train(mode)
        self.backbone.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        with torch.no_grad():
            pooled = []
            for feature in self.backbone(x):
                rows = resize_pool_matrix(feature.shape[-2], height, self.pool, feature)
                cols = resize_pool_matrix(feature.shape[-1], width, self.pool, feature)
                pooled.append(torch.einsum("ph,bchw,qw->bcpq", rows, feature, cols))
            return torch.cat(pooled, dim=1)


def resize_pool_matrix(source: int, target: int, pool: int, like: Tensor | None = None) -> Tensor:
    """(target // pool, source) matrix of 1-D linear resizing (align_corners) to ``target`` then mean pooling.

    Bilinear resizing and average pooling act on rows and columns separately, so DFR's "resize every map to
    the input size, then average ``pool`` × ``pool`` windows" equals ``R · F · Cᵀ`` per channel with
    ``R = resize_pool_matrix(h, H, pool)`` and ``C = resize_pool_matrix(w, W, pool)``: the same numbers
    (to float rounding) without the full-size intermediate, which costs C × H × W floats per map and
    dominated the inference time.
    """
    options = {"dtype": like.dtype, "device": like.device} if like is not None else {}
    eye = torch.eye(source, **options).unsqueeze(0)  # (1, source, source): unit vectors as channels
    if source != target:
        eye = F.interpolate(eye, size=target, mode="linear", align_corners=True)  # (1, source, target)
    if pool > 1:
        eye = F.avg_pool1d(eye, pool, pool)  # (1, source, target // pool)
    return eye[0].T.contiguous()


def residual_map(features: Tensor, reconstruction: Tensor) -> Tensor:
    """(B, 1, h, w) channel mean of the squared residual (Tang eq. 2 per location, DFR's score)."""
    return (reconstruction - features).pow(2).mean(dim=1, keepdim=True)


@torch.no_grad()
def estimate_latent_dim(features: Tensor, variance: float = 0.9) -> int:
    """DFR's latent width: the number of principal components explaining ``variance`` of the feature vectors.

    Every grid location of every image is one vector of C features (DFR: the first training batch). The
    component variances are the eigenvalues of the vectors' covariance matrix (computed in float64; the
    squared singular values of the centred data matrix, as ``torch.linalg.svd`` or scikit-learn's
    ``PCA(n_components=variance)`` would give, at the cost of one C × C eigendecomposition instead of an
    SVD of the N × C matrix). As scikit-learn, d is the smallest count whose cumulative explained
    variance ratio exceeds ``variance``.

    Args:
        features: (B, C, h, w) feature tensor or (N, C) vectors.
        variance: fraction of the variance to keep, in (0, 1).
    """
    if not 0 < variance < 1:
        raise ValueError(f"variance must be in (0, 1), got {variance}")
    vectors = features.movedim(1, -1).reshape(-1, features.shape[1]) if features.ndim == 4 else features
    if vectors.ndim != 2 or len(vectors) < 2:
        raise ValueError(f"need at least 2 feature vectors of shape (N, C), got {tuple(vectors.shape)}")
    vectors = vectors.double()
    vectors = vectors - vectors.mean(dim=0)
    return latent_dim_from_scatter(vectors.T @ vectors, variance)


@torch.no_grad()
def latent_dim_from_scatter(scatter: Tensor, variance: float = 0.9) -> int:
    """:func:`estimate_latent_dim` from the (C, C) scatter matrix Σ (x − mean)(x − mean)ᵀ of the vectors.

    The scatter matrix is a sum over the vectors, so DDP ranks can add theirs (around the global mean) and
    get the PCA of every rank's vectors without gathering them.
    """
    if not 0 < variance < 1:
        raise ValueError(f"variance must be in (0, 1), got {variance}")
    eigenvalues = torch.linalg.eigvalsh(scatter.double()).flip(0).clamp_min(0)
    total = float(eigenvalues.sum())
    if total <= 0:
        return 1
    ratio = eigenvalues.cumsum(0) / total
    return min(scatter.shape[0], int((ratio <= variance).sum()) + 1)


class DFRModel(nn.Module):
    """DFR's 1×1-convolution autoencoder: C → (C+2d)/2 → 2d → d → 2d → (C+2d)/2 → C.

    BatchNorm + ReLU follow every convolution except the latent one (2d → d) and the last one (no
    output activation: features are unbounded), as in DFR's ``FeatCAE``. The latent width is kept as
    the buffer ``latent_dim`` so a checkpoint says which network it holds.

    Args:
        in_channels: C, the feature tensor's channels.
        latent_dim: d (DFR: from PCA, :func:`estimate_latent_dim`).
        batch_norm: BatchNorm after the hidden convolutions (DFR's default).
    """

    def __init__(self, in_channels: int, latent_dim: int, batch_norm: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or latent_dim < 1:
            raise ValueError(f"in_channels and latent_dim must be >= 1, got {in_channels}, {latent_dim}")
        hidden = (in_channels + 2 * latent_dim) // 2

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            return [*layers, nn.ReLU()]

        self.encoder = nn.Sequential(*block(in_channels, hidden), *block(hidden, 2 * latent_dim),
                                     nn.Conv2d(2 * latent_dim, latent_dim, 1))
        self.decoder = nn.Sequential(*block(latent_dim, 2 * latent_dim), *block(2 * latent_dim, hidden),
                                     nn.Conv2d(hidden, in_channels, 1))
        self.register_buffer("latent_dim", torch.tensor(int(latent_dim)))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class SkipAEModel(nn.Module):
    """Skip-GANomaly's U-Net encoder-decoder over a feature tensor (Tang et al. §3.1; see the module docstring).

    Args:
        in_channels: channels of the feature tensor (also the output's).
        base_channels: channels of the first level (Skip-GANomaly's ngf = 64).
        depth: number of stride-2 levels (6: a 64 × 64 grid down to 1 × 1, as Skip-GANomaly's log2(size)).
        max_multiplier: channel cap as a multiple of ``base_channels`` (8: 512 channels).
    """

    def __init__(self, in_channels: int, base_channels: int = 64, depth: int = 6, max_multiplier: int = 8) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2 (one skip connection at least), got {depth}")
        if in_channels < 1 or base_channels < 1 or max_multiplier < 1:
            raise ValueError("in_channels, base_channels and max_multiplier must be >= 1")

        def ch(level: int) -> int:
            return base_channels * min(2**level, max_multiplier)

        self.depth = depth
        self.down = nn.ModuleList([nn.Conv2d(in_channels, ch(0), 4, 2, 1, bias=False)])
        for level in range(1, depth):
            layers: list[nn.Module] = [nn.LeakyReLU(0.2), nn.Conv2d(ch(level - 1), ch(level), 4, 2, 1, bias=False)]
            if level < depth - 1:  # the innermost convolution has no norm (pix2pix)
                layers.append(nn.BatchNorm2d(ch(level)))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for level in range(depth - 1, 0, -1):  # deepest first; its input has no skip half
            cin = ch(level) if level == depth - 1 else 2 * ch(level)
            self.up.append(nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(cin, ch(level - 1), 4, 2, 1, bias=False),
                                         nn.BatchNorm2d(ch(level - 1))))
        self.out = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * ch(0), in_channels, 4, 2, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Skip-GANomaly's initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        y = x
        for down in self.down:
            y = down(y)
            skips.append(y)
        for i, up in enumerate(self.up):
            y = torch.cat([skips[-2 - i], up(y)], dim=1)
        return self.out(y)[..., :height, :width]


class FeatureAENet(nn.Module):
    """Feature extractor + autoencoder: ``{"features": FE(x), "reconstruction": AE(FE(x))}``.

    Args:
        extractor: the :class:`FeatureExtractor`.
        autoencoder: the autoencoder over its tensor; None until it can be built (DFR before its PCA).
        inference_chunk: on a CPU in eval mode, batches larger than this go through in chunks of this many
            images (the same numbers: the extractor is frozen and the autoencoder's BatchNorm uses its running
            statistics). A large batch's activations overflow the CPU caches: at 256² a batch of 32 costs 2–4×
            more per image than chunks of 4 (``benchmarks/RESULTS.md``, ``profile_dfr``, ``profile_skipae``).
            None: one pass; training and GPUs always take the whole batch.
    """

    def __init__(self, extractor: FeatureExtractor, autoencoder: nn.Module | None = None,
                 inference_chunk: int | None = 4) -> None:
        super().__init__()
        if inference_chunk is not None and inference_chunk < 1:
            raise ValueError(f"model.inference_chunk must be >= 1 or null, got {inference_chunk}")
        self.extractor = extractor
        self.autoencoder = autoencoder
        self.inference_chunk = inference_chunk

    @property
    def stride(self) -> int:
        return self.extractor.stride

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.autoencoder is None:
            raise RuntimeError("the autoencoder is not built yet: its width comes from the training data (DFR's "
                               "PCA); train the model (crackseg fit), load a checkpoint (--ckpt_path) or set "
                               "model.init_args.latent_dim")
        chunk = self.inference_chunk if not self.training and x.device.type == "cpu" else None
        return forward_in_chunks(self._forward, x, chunk)

    def _forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.extractor(x)
        return {"features": features, "reconstruction": self.autoencoder(features)}
