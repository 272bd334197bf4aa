"""VAE + Grad-CAM size constraint (García-de-la-Puente et al. 2023) as a LightningModule.

Unsupervised: trained on defect-free images only. The network is :class:`~crackseg.models.vae.ConvVAE`
(architecture and its readings in that module). This module adds the loss, the attention and inference:

- **loss** (eqs. 3, 5, 6): L = L_R + β·L_KL + λ·mean_n ψ_t(c − mean(a_n)), per image (the paper's Σ_n
  divided by the batch size, as the reference code normalises every term), where a_n is the attention
  map of eq. 4 and ψ_t the extended log-barrier of eq. 5 (:func:`extended_log_barrier`), computed in
  fp32 with autocast off. L_R is BCE-with-logits of the [0, 1] image summed over pixels; L_KL the KL
  divergence to N(0, I) summed over the latent dimensions;
- **attention** (eq. 4): a = σ(Σ_k α_k A_k), α_k the spatial mean of ∂z_μ/∂A_k at an encoder block
  output A (``attention_layer``), upsampled bilinearly to the image; during training it is computed
  with ``create_graph=True`` so the constraint trains the encoder through α. In validation, test and
  predict, Lightning runs the steps under ``torch.no_grad`` / ``torch.inference_mode``: :meth:`forward`
  re-enables gradients locally (``torch.inference_mode(False)`` + ``torch.enable_grad()`` on a clone of
  the batch) and returns detached outputs;
- **inference** (§3.3): image score = reconstruction error (L2, the mean squared error of the [0, 1]
  image); the ``MeanStdThreshold`` callback (image level, k = 1) sets the image threshold from the
  scores of held-out defect-free validation images. The segmentation map is the attention map in
  [0, 1], thresholded at ``pixel_threshold`` (0.5 unless given or calibrated).

Readings of the paper (values where it is silent come from the reference code,
jusiro/constrained_anomaly_segmentation, see ``/work/shared/notes/reference_implementations.md``):

- eq. 2 is printed without its minus sign; the KL divergence used is −½Σ(1 + log σ² − μ² − σ²) ≥ 0;
- β (eq. 3): "a weighting factor to optimize", no value → 1 (reference code);
- λ (eq. 6): no value → 1e4 (reference code's default; the notes give the range 1e3–1e4);
- t (eq. 5): 20 (§4.2; the reference code uses 10);
- target coverage: eq. 6 constrains 1 − mean(a) ≤ 0, i.e. full coverage, c = 1 (the reference code
  uses 1 − 0.01 = 0.99). With c = 1 the constraint cannot be met by a sigmoid map, so ψ_t works on its
  linear branch (a constant push of λ·t on the mean attention); ``target_coverage=0.99`` gives the
  reference code's barrier;
- warm-up without the constraint: not in the paper → 50 epochs (reference code);
- attention layer: "the encoder block output" → ``layer1`` (the second block, 64×112², reference code);
- "∂z_μ": z_μ is a vector; its sum is differentiated (reference code);
- "binary cross-entropy … for segmentation and L2 in classification" (§4.2): read as BCE for the
  reconstruction loss (reference code) and the L2 reconstruction error as the image score;
- inference map: eq. 4's sigmoid map is what the constraint drives towards 1 on normal images, so it
  saturates; ``map_normalization="min_max"`` (default) returns the pre-sigmoid map Σ_k α_k A_k
  min-max normalised per image, as the reference code does at inference; ``"sigmoid"`` returns eq. 4's
  map itself. Both are in [0, 1];
- input size: METU images are 227×227, the dense latent needs a fixed size divisible by the stride
  (16): every input is resized (bilinear, antialiased) to ``image_size`` (224×224, as in the reference
  code) inside the model, and maps are resized back to the input's size.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning import Callback
from torch import Tensor
from torch.nn import functional as F

from crackseg.callbacks import MeanStdThreshold
from crackseg.lightning_modules.base import CrackSegModule
from crackseg.models.vae import ENCODER_BLOCKS, AttentionMode, ConvVAE, gradcam_attention

#: t of the extended log-barrier (§4.2)
PAPER_T = 20.0


def extended_log_barrier(z: Tensor, t: float = PAPER_T) -> Tensor:
    """The extended log-barrier ψ_t of eq. 5 (Kervadec et al.), element-wise, in fp32 (or fp64).

    ψ_t(z) = −(1/t)·log(−z)                  if z ≤ −1/t²,
             t·z − (1/t)·log(1/t²) + 1/t      otherwise.

    Both branches and their first derivatives (t) meet at z = −1/t². The logarithm only sees
    min(z, −1/t²), so neither branch produces NaN / Inf (nor NaN gradients) for any finite z.

    Args:
        z: constraint values f_c (feasible when ≤ 0).
        t: barrier parameter (20 in the paper).
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    if z.dtype != torch.float64:
        z = z.float()
    switch = -1.0 / t**2
    on_barrier = z <= switch
    safe = torch.where(on_barrier, z, torch.full_like(z, switch))  # the log never sees z > -1/t²
    barrier = -torch.log(-safe) / t
    linear = t * z - math.log(1.0 / t**2) / t + 1.0 / t
    return torch.where(on_barrier, barrier, linear)


def kl_divergence(z_mu: Tensor, z_logvar: Tensor) -> Tensor:
    """(B,) KL(N(z_μ, σ²) ‖ N(0, I)) = −½ Σ_d (1 + log σ² − z_μ² − σ²), in fp32."""
    z_mu, z_logvar = z_mu.float(), z_logvar.float()
    return -0.5 * (1 + z_logvar - z_mu.pow(2) - z_logvar.exp()).sum(1)


def _detach(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


class VAEGradCAM(CrackSegModule):
    """Unsupervised defect detection and segmentation: VAE + Grad-CAM coverage constraint.

    Defaults are the paper's (§4.2) where it gives them: latent dimension 32, t = 20, Adam lr 1e-5
    (batch 32 and 300 epochs are in the configs); elsewhere the reference code's (see the module
    docstring for every reading).

    Precision: under ``bf16-mixed`` / ``16-mixed`` only the VAE's convolutions run in half precision; the
    loss (BCE, KL, the log-barrier ψ_t whose log and t·z terms overflow / lose the constraint in fp16),
    the Grad-CAM map Σ_k α_k A_k and the maps and scores are computed in fp32 with autocast off.

    Args:
        image_size: (height, width) the VAE works at (multiples of 16); inputs of another size are
            resized to it inside the model and maps resized back. 224×224 (reference code; the paper's
            METU images are 227×227).
        latent_dim: dimension of z (32, §4.2).
        width_multiplier: channel multiplier of the encoder and decoder (1.0 = ResNet-18 widths).
        beta: β of eq. 3, weight of the KL term (paper: "to optimize"; 1 from the reference code).
        constraint_weight: λ of eq. 6 (paper silent; 1e4 from the reference code).
        t: t of the extended log-barrier, eq. 5 (20, §4.2).
        target_coverage: c in the constraint c − mean(a) ≤ 0; 1.0 is eq. 6 (full coverage), 0.99 the
            reference code's.
        warmup_epochs: epochs trained without the constraint (paper silent; 50 from the reference code).
        attention: ``"gradcam"`` (eq. 4) or ``"activation_mean"`` (the reference code's effective map:
            σ of the channel mean of A).
        attention_layer: encoder block whose output A carries the attention: ``"stem"``, ``"layer1"``
            (default, reference code), ``"layer2"``, ``"layer3"`` or ``"layer4"``.
        reconstruction_loss: ``"bce"`` (BCE-with-logits summed over pixels, reference code) or ``"l2"``
            (squared error of σ(logits) summed over pixels).
        score: image score: ``"l2"`` (mean squared reconstruction error, §3.3), ``"l1"`` (mean absolute
            error) or ``"attention_std"`` (standard deviation of the map, the reference code's score).
        map_normalization: segmentation map: ``"min_max"`` (Σ_k α_k A_k min-max normalised per image,
            reference code's inference) or ``"sigmoid"`` (eq. 4's a).
        normalization: input normalisation; ``"unit"`` ([0, 1], the reference code's max-normalisation).
        optimizer: ``"adam"`` (§4.2).
        lr: learning rate (1e-5, §4.2).
        weight_decay: weight decay (none in the paper or the reference code).
        **kwargs: thresholds and the other optimisation options of
            :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    maps_are_probabilities = True
    score_reads_map_only = False  # the score is the reconstruction error

    @classmethod
    def threshold_calibration(cls) -> tuple[type[Callback], dict[str, Any]]:
        """The image threshold at mean + 1 std of the defect-free validation images' scores (§3.3)."""
        return MeanStdThreshold, {}

    def normalizes_maps_per_image(self) -> bool:
        """True with ``map_normalization: min_max`` (Σ_k α_k A_k min-max normalised per image)."""
        return self.map_normalization == "min_max"

    def export_blocker(self) -> str | None:
        """Grad-CAM attention needs a backward pass: no forward-only ONNX graph."""
        if self.attention != "gradcam":
            return None
        return (f"{type(self).__name__} with attention='gradcam' cannot be exported to ONNX: its map (eq. 4) weights "
                "the encoder activations by the gradient ∂z_μ/∂A, which needs a backward pass an ONNX inference "
                "graph does not have. A model trained with attention='activation_mean' (forward-only map) exports.")

    def __init__(
        self,
        image_size: tuple[int, int] = (224, 224),
        latent_dim: int = 32,
        width_multiplier: float = 1.0,
        beta: float = 1.0,
        constraint_weight: float = 1e4,
        t: float = PAPER_T,
        target_coverage: float = 1.0,
        warmup_epochs: int = 50,
        attention: AttentionMode = "gradcam",
        attention_layer: Literal["stem", "layer1", "layer2", "layer3", "layer4"] = "layer1",
        reconstruction_loss: Literal["bce", "l2"] = "bce",
        score: Literal["l2", "l1", "attention_std"] = "l2",
        map_normalization: Literal["min_max", "sigmoid"] = "min_max",
        normalization: Literal["symmetric", "imagenet", "unit"] = "unit",
        optimizer: Literal["sgd", "adam", "adamw"] = "adam",
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        checks = [
            (attention in ("gradcam", "activation_mean"), f"model.attention must be 'gradcam' or "
                                                          f"'activation_mean', got {attention!r}"),
            (attention_layer in ENCODER_BLOCKS, f"model.attention_layer must be one of {ENCODER_BLOCKS}, "
                                                f"got {attention_layer!r}"),
            (reconstruction_loss in ("bce", "l2"), f"model.reconstruction_loss must be 'bce' or 'l2', "
                                                   f"got {reconstruction_loss!r}"),
            (score in ("l2", "l1", "attention_std"), f"model.score must be 'l2', 'l1' or 'attention_std', "
                                                     f"got {score!r}"),
            (map_normalization in ("min_max", "sigmoid"), f"model.map_normalization must be 'min_max' or "
                                                          f"'sigmoid', got {map_normalization!r}"),
            (t > 0, f"model.t must be > 0, got {t}"),
            (beta >= 0 and constraint_weight >= 0, f"model.beta and model.constraint_weight must be >= 0, "
                                                   f"got {beta}, {constraint_weight}"),
            (0 < target_coverage <= 1, f"model.target_coverage must be in (0, 1], got {target_coverage}"),
            (warmup_epochs >= 0, f"model.warmup_epochs must be >= 0, got {warmup_epochs}"),
            (len(image_size) == 2 and all(int(s) >= 16 and int(s) % 16 == 0 for s in image_size),
             f"model.image_size must be [height, width], multiples of 16 (the VAE's stride), got {image_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        super().__init__(normalization=normalization, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         **kwargs)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.beta = beta
        self.constraint_weight = constraint_weight
        self.t = t
        self.target_coverage = target_coverage
        self.warmup_epochs = warmup_epochs
        self.attention = attention
        self.attention_layer = attention_layer
        self.reconstruction_loss = reconstruction_loss
        self.score = score
        self.map_normalization = map_normalization

    def configure_models(self) -> None:
        """The VAE (:class:`~crackseg.models.vae.ConvVAE`), built from the hyper-parameters."""
        hp = self.hparams
        self.net = ConvVAE(3, tuple(hp.image_size), hp.latent_dim, hp.width_multiplier)

    # -- forward --------------------------------------------------------------------------------
    def constraint_active(self) -> bool:
        """Whether the training loss includes the constraint now (after the warm-up epochs)."""
        return self.constraint_weight > 0 and self.current_epoch >= self.warmup_epochs

    def forward(self, images: Tensor) -> dict[str, Any]:
        """Reconstruction, latent statistics, attention and maps of RGB images in [0, 1] of any size.

        Outside training, gradients are switched on locally (the attention needs ∂z_μ/∂A even under
        ``torch.inference_mode``) and every output is detached.

        Returns:
            ``"logits"`` (B, 3, h, w) reconstruction logits and ``"target"`` the input at ``image_size``
            (h, w); ``"z"``, ``"z_mu"``, ``"z_logvar"``; ``"attention"`` (B, 1, h, w) eq. 4's map;
            ``"cam"`` the pre-sigmoid map at the attention layer's size; ``"map"`` (B, 1, H, W) the
            segmentation map at the input size; ``"score"`` (B,) the image score.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            create_graph = self.attention == "gradcam" and self.constraint_active()
            return self._forward(images, create_graph=create_graph, retain_graph=True)
        with torch.inference_mode(False), torch.enable_grad():
            # a normal tensor that requires grad: the attention then works with frozen parameters too
            images = images.detach().clone().requires_grad_(True)
            outputs = self._forward(images, create_graph=False, retain_graph=False)
        return _detach(outputs)

    def _forward(self, images: Tensor, create_graph: bool, retain_graph: bool) -> dict[str, Any]:
        size = tuple(images.shape[-2:])
        target = images
        if size != self.image_size:
            target = F.interpolate(images.float(), size=self.image_size, mode="bilinear", align_corners=False,
                                   antialias=True).clamp(0, 1)
        outputs: dict[str, Any] = dict(self.net(self.normalize(target)))
        features = outputs.pop("features")
        cam, _ = gradcam_attention(features[self.attention_layer], outputs["z_mu"], self.attention,
                                   create_graph=create_graph, retain_graph=retain_graph)
        if not create_graph and not (self.training and self.attention == "activation_mean"):
            cam = cam.detach()
        device_type = images.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            attention = F.interpolate(torch.sigmoid(cam), size=self.image_size, mode="bilinear",
                                      align_corners=False)
            if self.map_normalization == "sigmoid":
                seg = attention.detach()
                if size != self.image_size:
                    seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
            else:  # upsampled to the input size, then min-max normalised per image
                raw = F.interpolate(cam.detach(), size=size, mode="bilinear", align_corners=False)
                low = raw.flatten(1).amin(1).view(-1, 1, 1, 1)
                high = raw.flatten(1).amax(1).view(-1, 1, 1, 1)
                seg = (raw - low) / (high - low).clamp_min(1e-12)
            seg = seg.clamp(0, 1)
            reconstruction = torch.sigmoid(outputs["logits"].detach().float())
            residual = reconstruction - target.detach().float()
            if self.score == "l2":
                score = residual.pow(2).flatten(1).mean(1)
            elif self.score == "l1":
                score = residual.abs().flatten(1).mean(1)
            else:
                score = seg.flatten(1).std(1)
        outputs.update(target=target, attention=attention, cam=cam, map=seg, score=score)
        return outputs

    # -- loss -----------------------------------------------------------------------------------
    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """L_R + β·L_KL (eq. 3) + λ·mean_n ψ_t(c − mean(a_n)) (eqs. 5–6), per image, in fp32.

        In training the constraint term joins after ``warmup_epochs``; validation always includes it,
        so ``val/loss`` is comparable across epochs (checkpoint selection).
        """
        logits = outputs["logits"]
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits, target = logits.float(), outputs["target"].float()
            batch_size = len(logits)
            if self.reconstruction_loss == "bce":
                reconstruction = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch_size
            else:
                reconstruction = F.mse_loss(torch.sigmoid(logits), target, reduction="sum") / batch_size
            kl = kl_divergence(outputs["z_mu"], outputs["z_logvar"]).mean()
            coverage = outputs["attention"].float().flatten(1).mean(1)
            constraint = extended_log_barrier(self.target_coverage - coverage, self.t).mean()
            loss = reconstruction + self.beta * kl
            if not self.training or self.constraint_active():
                loss = loss + self.constraint_weight * constraint
        return {"loss": loss, "reconstruction": reconstruction.detach(), "kl": kl.detach(),
                "constraint": constraint.detach(), "coverage": coverage.detach().mean()}

    # -- maps -----------------------------------------------------------------------------------
    def anomaly_map(self, outputs: dict[str, Any]) -> Tensor:
        """(B, 1, H, W) segmentation map in [0, 1] at the input size (see ``map_normalization``)."""
        return outputs["map"]

    def image_score(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """(B,) reconstruction error (``score``), compared with the mean + std image threshold (§3.3)."""
        return outputs["score"]

    def extra_maps(self, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int | None) -> dict[str, Tensor]:
        """eq. 4's attention σ(Σ_k α_k A_k), the reconstruction (channel mean of σ(logits)) and the mean
        absolute residual |x − x̂|, each (B, 1, H, W) at the input size."""
        size = outputs["map"].shape[-2:]
        reconstruction = torch.sigmoid(outputs["logits"].detach().float())
        maps = {
            "attention": outputs["attention"].detach(),
            "reconstruction": reconstruction.mean(1, keepdim=True),
            "residual": (reconstruction - outputs["target"].detach().float()).abs().mean(1, keepdim=True),
        }
        return {k: v if tuple(v.shape[-2:]) == tuple(size) else
                F.interpolate(v, size=size, mode="bilinear", align_corners=False) for k, v in maps.items()}
