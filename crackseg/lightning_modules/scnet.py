"""SCNet (Sharma et al., ICVGIP 2021) as a LightningModule: the network, its edge prior, loss and maps.

The network is :class:`~crackseg.models.scnet.SCNetModel` (architecture and the readings of the paper
in its module docstring). This module adds what belongs to training and inference:

- the 4th input channel (§III-E), computed inside the model from the [0, 1] RGB batch so it is the same
  in fit, test and predict and needs nothing but the checkpoint: HED (frozen, from ``hed_weights``) or,
  without a weight file, :class:`~crackseg.models.scnet.CannyEdges` with median-based thresholds;
- the loss of eqs. 6–11 through :class:`SupervisedSegmentation`'s deep supervision: focal (α = 1,
  γ = 2) on the fused logits + Σ w_i·focal on the side logits, w = (0.5, 0.75, 1.0, 0.75, 0.5), plus
  soft-IoU on P^fused, both parts with weight 1.0;
- maps for the map logger: the per-scale probability maps P^i (Fig. 7), the encoder attention maps
  (Fig. 8) and, on request, a Grad-CAM of the fused output (Fig. 9);
- the ablations of Tables VII, VIII and X as constructor arguments (``configs/scnet/ablations/``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from crackseg.lightning_modules.segmentation import SupervisedSegmentation
from crackseg.losses import parse_loss
from crackseg.models.scnet import HED, CannyEdges, SCNetModel

#: side-output weights of eq. 6 (§V-A), finest scale first
PAPER_SIDE_WEIGHTS = (0.5, 0.75, 1.0, 0.75, 0.5)
#: loss terms that approximate IoU; the paper applies them to the fused map only (eq. 10)
IOU_TERMS = ("soft_iou", "lovasz")


class SCNet(SupervisedSegmentation):
    """SCNet: scale-space attention encoder-decoder with an edge prior and focal + soft-IoU loss.

    Defaults are the paper's full model (§V-A): 5 levels, attention in encoder and decoder, instance
    norm + max-pooling, 4-channel input (RGB in [−1, 1] + binary edges), focal + soft-IoU loss, side
    weights (0.5, 0.75, 1.0, 0.75, 0.5), Xavier initialisation, SGD lr 1e-4, momentum 0.9, weight decay 2e-4.

    Args:
        width_multiplier: scales every block's channels (1.0 = the paper's 64 … 512).
        levels: number of scales (5; 4 is Table VII's "−1 level").
        attention: ``"both"`` (encoder and decoder, the paper), ``"encoder"`` (§III-B's first design),
            ``"scalar"`` (one trainable scalar instead of the attention filter, Table VII) or ``"none"``
            (the HCNN baseline).
        downsampling: ``"maxpool"`` (with indices for the decoder's unpooling) or ``"dilated"`` (no
            pooling, dilated convolutions; Table VIII).
        vgg_config: ``"D"`` (all 3×3 convolutions; matches the paper's parameter count) or ``"C"``.
        edges: add the binary edge map as a 4th input channel (§III-E); False gives a 3-channel network.
        hed_weights: weight file of sniklaus/pytorch-hed (``network-bsds500.pytorch``); with ``edges``
            the edge map is then HED's (as in the paper) and the frozen HED weights are stored in the
            checkpoint. None: Canny edges with automatic thresholds (see :class:`CannyEdges`).
        hed_threshold: binarisation threshold of the HED probability.
        canny_sigma: Canny thresholds are (1 ∓ canny_sigma) × the median of the blurred luma.
        attention_kernel_size: kernel of the attention convolutions (1).
        init: ``"xavier"`` (§V-A) or ``"default"``.
        fuse_init: initial weights of the fusion of the side logits (eq. 4): ``"xavier"`` (§V-A, random
            signs) or ``"mean"`` (1 / ``levels`` each, HED's fusion layer; a training choice, not the paper's).
        loss: loss terms of the fused output joined by ``+``, from ``focal``, ``bce``, ``soft_iou``,
            ``lovasz`` (Table X: ``focal+soft_iou``, ``bce``, ``bce+soft_iou``, ``focal+lovasz``).
        side_loss: loss terms of the side outputs; default: ``loss`` without its IoU terms (eqs. 6–9).
        side_weights: w_i of eq. 6, finest scale first; default: the paper's, the deepest scale's
            weight dropped with 4 levels.
        fused_weight: weight of the fused-output loss.
        gradcam_maps: add a Grad-CAM of the fused output (Fig. 9) to the maps of the first batch of every
            validation / test / predict epoch (the batch the map logger draws); costs one more forward
            and backward pass on that batch.
        gradcam_layer: submodule of ``net`` whose activations Grad-CAM weights (default ``"decoder.0"``,
            the last decoder block).
        **kwargs: thresholds, normalisation and optimisation options of
            :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        levels: int = 5,
        attention: Literal["both", "encoder", "scalar", "none"] = "both",
        downsampling: Literal["maxpool", "dilated"] = "maxpool",
        vgg_config: Literal["D", "C"] = "D",
        edges: bool = True,
        hed_weights: str | None = None,
        hed_threshold: float = 0.5,
        canny_sigma: float = 0.33,
        attention_kernel_size: int = 1,
        init: Literal["xavier", "default"] = "xavier",
        fuse_init: Literal["xavier", "mean"] = "xavier",
        loss: str = "focal+soft_iou",
        side_loss: str | None = None,
        side_weights: Sequence[float] | None = None,
        fused_weight: float = 1.0,
        gradcam_maps: bool = False,
        gradcam_layer: str | None = None,
        **kwargs: Any,
    ) -> None:
        if attention not in self.ATTENTION_MODES:
            raise ValueError(f"model.attention must be one of {sorted(self.ATTENTION_MODES)}, got {attention!r}")
        if side_loss is None:
            side_loss = "+".join(t for t in parse_loss(loss) if t not in IOU_TERMS) or loss
        if side_weights is None:
            side_weights = PAPER_SIDE_WEIGHTS[:levels]
        if len(side_weights) != levels:
            raise ValueError(f"model.side_weights needs one weight per level ({levels}), got {list(side_weights)}")
        super().__init__(loss=loss, side_loss=side_loss, side_weights=side_weights,
                         fused_weight=fused_weight, **kwargs)
        self.edge_detector: nn.Module | None = None
        if hed_weights is not None and not edges:
            warnings.warn("model.hed_weights is ignored: model.edges is false (3-channel input)", stacklevel=2)
        if edges:
            self.edge_detector = HED(hed_weights, hed_threshold) if hed_weights is not None else CannyEdges(canny_sigma)
        self.gradcam_maps = gradcam_maps
        self.gradcam_layer = gradcam_layer or SCNetModel.default_gradcam_layer
        try:
            self.net.get_submodule(self.gradcam_layer)
        except AttributeError as error:
            raise ValueError(f"model.gradcam_layer {self.gradcam_layer!r} is not a submodule of the network "
                             f"(e.g. 'decoder.0', 'encoder.4')") from error

    #: encoder and decoder attention of each ``attention`` setting
    ATTENTION_MODES = {"both": ("conv", "conv"), "encoder": ("conv", "none"), "scalar": ("scalar", "scalar"),
                       "none": ("none", "none")}

    def configure_models(self) -> None:
        hp = self.hparams
        encoder_mode, decoder_mode = self.ATTENTION_MODES[hp.attention]
        self.net = SCNetModel(4 if hp.edges else 3, hp.width_multiplier, hp.levels, encoder_mode, decoder_mode,
                              hp.downsampling, hp.vgg_config, hp.attention_kernel_size, hp.init, hp.fuse_init)

    # -- input ----------------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """[0, 1] RGB → normalised RGB, plus the binary edge channel when ``edges``."""
        x = super().normalize(images)
        if self.edge_detector is None:
            return x
        return torch.cat([x, self.edge_detector(images).to(x.dtype)], dim=1)

    # -- maps -----------------------------------------------------------------------------------
    def extra_maps(self, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int | None) -> dict[str, Tensor]:
        """P^1 … P^L (Fig. 7), the encoder attention maps at the input size (Fig. 8) and, for the batch the
        map logger draws (``batch_idx == 0``) when ``gradcam_maps``, the Grad-CAM of the fused output (Fig. 9)."""
        size = outputs["logits"].shape[-2:]
        maps = {f"P{i + 1}": torch.sigmoid(s) for i, s in enumerate(outputs.get("side_logits") or [])}
        for i, attention in enumerate(outputs.get("encoder_attention") or []):
            maps[f"attention_{i + 1}"] = self.to_input_size(attention, size)
        if self.gradcam_maps and batch_idx == 0:
            maps["gradcam"] = self.gradcam(batch["image"])
        return maps

    def gradcam(self, images: Tensor, layer: str | None = None) -> Tensor:
        """Grad-CAM (Selvaraju et al.) of the fused output, (B, 1, H, W) in [0, 1] per image.

        The target is the sum of the fused logits over the pixels predicted as crack (all pixels of an
        image without any); the map is ReLU(Σ_k α_k A_k), α_k the spatial mean of the target's gradient
        with respect to channel k of the activations A of ``layer``, upsampled to the input size.
        Works inside Lightning's validation / test / predict steps (gradients are enabled locally, and
        inference-mode tensors are cloned).

        Args:
            images: (B, 3, H, W) RGB in [0, 1].
            layer: submodule of ``net`` (default ``gradcam_layer``).
        """
        module = self.net.get_submodule(layer or self.gradcam_layer)
        captured: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

        handle = module.register_forward_hook(hook)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                logits = self(images.detach().clone())["logits"]
                activation = captured[-1]
                selected = torch.sigmoid(logits) >= float(self.pixel_threshold)
                empty = ~selected.flatten(1).any(1)
                selected = selected | empty.view(-1, 1, 1, 1)
                (grad,) = torch.autograd.grad((logits * selected).sum(), activation)
                cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True)).detach()
        finally:
            handle.remove()
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return self.to_input_size(cam, images.shape[-2:]).clamp(0, 1)
