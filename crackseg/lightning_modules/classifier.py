"""Crack / no-crack classifier: step 1 of König et al.'s weakly supervised crack segmentation.

The classifier is trained on image-level labels (128×128 windows of a segmentation dataset labelled by
"any crack pixel", :class:`~crackseg.datamodules.PatchClassificationDataModule`, or folders of labelled
images, :class:`~crackseg.datamodules.OzgenelDataModule`); the pseudo-label generator then uses it on 32×32
patches and through Grad-CAM++ (:mod:`crackseg.pseudolabels`).

It is a :class:`~crackseg.lightning_modules.CrackSegModule`, so the validation / test steps and image
metrics are the shared ones: the image score is the softmax probability of the crack class, and the
image-level F1 / precision / recall / AUROC of those steps (``val/image_f1``, ``test/image_precision``,
...) are König et al.'s Table I patch metrics at the decision ``p >= image_threshold`` (0.5 = the arg-max
of the two classes unless calibrated). Batches carry ``has_mask`` False for windows, so no pixel metric
is computed for them.

Paper settings (§IV-C): ResNet50 (101 / 152 also reported) with ImageNet weights, a two-class head, SGD
lr 1e-3 divided by 10 after every epoch, momentum 0.9, batch 16, 3 epochs, the last epoch's weights used;
cross-entropy (the reference code's binary cross-entropy on the two softmax outputs, the same loss).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from crackseg.lightning_modules.base import CrackSegModule, LrSchedule
from crackseg.models.backbones import warn_offline_normalization
from crackseg.models.classifier import CrackClassifierNet
from crackseg.models.gradcam import gradcam_plus_plus

__all__ = ["CrackClassifier"]


class CrackClassifier(CrackSegModule):
    """Binary crack classifier (backbone → GAP → Dense(1000, ReLU) → Dense(2)), König et al. §III-A / §IV-C.

    Interface used by the pseudo-label generator:

    - ``self.net``: a :class:`~crackseg.models.classifier.CrackClassifierNet` with ``forward(x) ->
      {"logits": (B, 2)}`` on normalised images, ``features(x) -> (B, C, h, w)`` (the last convolutional
      feature map) and ``target_layer`` (the module producing that map, for Grad-CAM++ hooks);
    - :meth:`normalize` ([0, 1] RGB → the network's input space);
    - :meth:`crack_probability` (RGB in [0, 1] → (B,) softmax probability of the crack class, no grad);
    - :meth:`gradcam` (RGB in [0, 1] → (B, 1, H, W) Grad-CAM++ map in [0, 1] of a class, resized to the
      input; :func:`~crackseg.models.gradcam.gradcam_plus_plus` on normalised images gives the map at the
      feature resolution).

    Maps: :meth:`anomaly_map` is the crack probability broadcast over the image (a constant map: the
    classifier does not localise; the map logger and prediction writer then show the image's score), and
    with ``gradcam_maps`` the map logger also shows the Grad-CAM++ map of the crack class (first
    evaluation batch only).

    Args:
        backbone: timm name of the backbone (paper: ``resnet50``; ``resnet101``, ``resnet152``, any timm
            network, e.g. ``efficientnet_lite0`` with ``weights: offline``).
        weights: backbone weights: ``"auto"`` (hub, else the offline package for EfficientNet-Lite0),
            ``"hub"``, ``"offline"``, a weights file or null (random, for tests).
        hidden_features: width of the hidden dense layer (1000, the reference code; 0 = linear head).
        dropout: dropout before the dense layers (0 in the reference code).
        backbone_kwargs: extra arguments of the timm model's constructor, e.g. ``{channels: [16, 32, 64, 128],
            stem_width: 8}`` with ``backbone: resnet10t`` for a narrow ResNet (not in the paper: the small
            classifier that lets pseudo-labelling run at >= 10 images/s on a 2-core CPU; train it with
            ``weights: null``).
        tap: the map the head pools and Grad-CAM++ reads: ``"head"`` (the activated top: ResNet ``layer4``,
            EfficientNet's head conv activation ``bn2``, 1280 channels) or ``"last_stage"`` (timm's last
            ``features_only`` level; an EfficientNet's 320 un-activated ``blocks.6`` channels). See
            :class:`~crackseg.models.classifier.CrackClassifierNet`.
        gradcam_maps: add the Grad-CAM++ map of the crack class to the map logger's panels.
        normalization: input normalisation: ``"imagenet"`` for hub ImageNet weights; the offline
            EfficientNet-Lite0 weights expect ``"symmetric"`` (a warning says so otherwise).
        optimizer: optimiser (SGD in the paper).
        lr: initial learning rate (1e-3).
        momentum: SGD momentum (0.9).
        weight_decay: weight decay (0: not used by the paper or its code).
        lr_schedule: learning-rate schedule (``"epoch_step"``: × ``lr_gamma`` after every epoch).
        lr_gamma: decay factor (0.1).
        **kwargs: thresholds and other options of :class:`~crackseg.lightning_modules.CrackSegModule`.
    """

    weight_sources = ("weights",)
    score_reads_map_only = False  # the image score is the classifier's own probability
    checkpoint_monitor = ("val/image_f1", "max")  # patch F1 on the held-out training images
    writes_predictions = False  # its outputs are the pseudo labels, written by `crackseg pseudo-label`

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str | None = "auto",
        hidden_features: int = 1000,
        dropout: float = 0.0,
        backbone_kwargs: dict[str, Any] | None = None,
        tap: Literal["head", "last_stage"] = "head",
        gradcam_maps: bool = True,
        normalization: Literal["symmetric", "imagenet", "unit"] = "imagenet",
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: LrSchedule = "epoch_step",
        lr_gamma: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(normalization=normalization, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, lr_schedule=lr_schedule, lr_gamma=lr_gamma, **kwargs)
        warn_offline_normalization(self.net.weights_source, normalization)

    def configure_models(self) -> None:
        """The classifier network (``self.net``), built from the hyper-parameters."""
        hp = self.hparams
        self.net = CrackClassifierNet(hp.backbone, hp.weights, hp.hidden_features, 2, hp.dropout,
                                      hp.get("backbone_kwargs"), hp.get("tap", "last_stage"))

    # -- inference --------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> dict[str, Any]:
        """``{"logits": (B, 2), "image_size": (H, W)}`` for RGB images in [0, 1] of any size (no padding)."""
        outputs = dict(super().forward(images))
        outputs["image_size"] = tuple(images.shape[-2:])
        return outputs

    @torch.no_grad()
    def crack_probability(self, images: Tensor) -> Tensor:
        """(B,) softmax probability of the crack class for RGB images in [0, 1], (B, 3, H, W), any size >= 32 px.

        Applies the module's normalisation; runs without gradients and in eval mode (batch-norm running
        statistics; the module's mode is restored afterwards). The images are moved to the module's device;
        the result is float32 on that device. Smaller inputs work too (ResNets and EfficientNets pool a 1×1
        map), but the classifier was trained on its windows' size.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"crack_probability expects RGB images (B, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        try:
            x = self.normalize(images.to(self.input_mean.device, self.input_mean.dtype))
            logits = self.net(x)["logits"]
        finally:
            self.train(was_training)
        return logits.float().softmax(1)[:, 1]

    def gradcam(self, images: Tensor, class_index: int | None = 1) -> Tensor:
        """(B, 1, H, W) Grad-CAM++ map in [0, 1] of RGB images in [0, 1], bilinearly resized to the images.

        Args:
            images: (B, 3, H, W) RGB in [0, 1].
            class_index: the class explained: 1 = crack (default), 0 = no crack, None = each arg-max.
        """
        cam = gradcam_plus_plus(self.net, self.normalize(images), class_index)[:, None]
        return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)

    # -- loss, maps and scores -------------------------------------------------------------------
    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        """Cross-entropy on the images with a known label (``label`` -1 is left out)."""
        logits, labels = outputs["logits"], batch["label"]
        known = labels >= 0
        if not bool(known.any()):
            zero = logits.sum() * 0.0
            return {"loss": zero}
        loss = F.cross_entropy(logits[known].float(), labels[known].long())
        with torch.no_grad():
            accuracy = (logits[known].argmax(1) == labels[known]).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    def anomaly_map(self, outputs: dict[str, Any]) -> Tensor:
        """(B, 1, H, W): the crack probability of each image broadcast over its pixels (no localisation)."""
        probability = outputs["logits"].detach().float().softmax(1)[:, 1]
        height, width = outputs["image_size"]
        return probability.view(-1, 1, 1, 1).expand(-1, 1, height, width)

    def image_score(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        """(B,) softmax probability of the crack class."""
        return outputs["logits"].detach().float().softmax(1)[:, 1]

    def extra_maps(self, outputs: dict[str, Any], batch: dict[str, Any], batch_idx: int | None) -> dict[str, Tensor]:
        """``{"gradcam++": (B, 1, H, W)}`` of the crack class for the map logger's batch (``batch_idx`` 0)."""
        if not self.hparams.gradcam_maps or batch_idx != 0:
            return {}
        return {"gradcam++": self.gradcam(batch["image"], class_index=1)}
