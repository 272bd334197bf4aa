"""Crack / no-crack patch classifier of König et al.'s weakly supervised segmentation, with Grad-CAM++.

:class:`CrackClassifierNet` is the reference code's classifier (jacobkoenig/WeaklySupervisedCrackSeg,
TensorFlow): a pretrained backbone (ResNet50 there) → global average pooling → Dense(1000, ReLU) →
Dense(2) (softmax in the loss here, so the network returns logits). The backbone comes from the shared
factory :func:`crackseg.models.backbones.create_backbone`, so any timm network and every weights source
(hub, file, offline EfficientNet-Lite0, random) work. The classifier reads the network's *activated top*:
Keras' ``ResNet50(include_top=False)`` output in the reference code (ReLU after ``conv5``, timm ``layer4``),
and for networks with a 1×1 head conv before pooling (timm EfficientNets, MobileNetV2: ``conv_head`` →
``bn2`` with its activation, 1280 channels) that head's activation, as Keras' EfficientNet
``top_activation`` and the OED encoder. timm's last ``features_only`` level of an EfficientNet is the
320-channel ``blocks.6`` output before any activation: about half of it negative, and Grad-CAM++ of it
came out all-zero on real crack images (``tap="last_stage"`` keeps that reading).

:func:`crackseg.models.gradcam.gradcam_plus_plus` computes Grad-CAM++ (Chattopadhay et al., WACV 2018) at
the classifier's last convolutional feature map (``net.target_layer``), the class-activation half of König
et al.'s coarse localisation (§III-B).
"""

from __future__ import annotations

from typing import Any, Literal

import timm
import torch
from torch import Tensor, nn

from crackseg.models.backbones import create_backbone

__all__ = ["CrackClassifierNet", "head_activation_layer", "last_feature_level"]


def last_feature_level(name: str, model_kwargs: dict[str, Any] | None = None) -> int:
    """Index of the last timm ``features_only`` level of ``name`` (the last convolutional stage).

    The network is built on the ``meta`` device (no memory, no weights), only to count its levels.

    Raises:
        ValueError: unknown timm model.
    """
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, features_only=True, **(model_kwargs or {}))
    except RuntimeError as error:
        if "Unknown model" in str(error):
            close = timm.list_models(f"{name[:4]}*")[:8]
            raise ValueError(f"unknown timm backbone {name!r} (similar: {', '.join(close) or 'none'})") from error
        raise
    except TypeError as error:
        raise ValueError(f"timm model {name!r} does not take the arguments {sorted(model_kwargs or {})}: "
                         f"{error}") from error
    return len(probe.feature_info.channels()) - 1


def head_activation_layer(name: str, model_kwargs: dict[str, Any] | None = None) -> str | None:
    """``"bn2"`` when the timm model ``name`` ends in a 1×1 head conv + BN-activation before pooling
    (EfficientNet, MobileNetV2 families), else None (its last feature level is already activated, e.g. ResNet's
    ``layer4``). Built on the ``meta`` device."""
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **(model_kwargs or {}))
    modules = dict(model.named_children())
    order = list(modules)
    if "conv_head" not in modules or "bn2" not in modules or "global_pool" not in modules:
        return None
    # MobileNetV3 / GhostNet pool first and run their head conv on a 1x1 map: no spatial map to tap there.
    return "bn2" if order.index("conv_head") < order.index("global_pool") else None


def _module_name(model: nn.Module, name: str) -> str:
    """The module name of a timm feature-info name in ``model`` (features-only wrappers flatten ``a.b`` to ``a_b``,
    hooked layers live under ``model.``)."""
    modules = dict(model.named_modules())
    for candidate in (name, name.replace(".", "_"), f"model.{name}"):
        if candidate in modules:
            return candidate
    raise ValueError(f"cannot find the last feature stage {name!r} in {type(model).__name__}")


class CrackClassifierNet(nn.Module):
    """Backbone → global average pooling → Linear(C, ``hidden_features``) → ReLU → Linear(·, 2).

    Takes normalised images of any size (a ResNet50 maps 32×32 to a 1×1 feature map: fine) and returns
    ``{"logits": (B, 2)}``; class 1 is "crack". Set ``hidden_features`` to 0 for a single linear layer.

    Args:
        backbone: timm model name (``resnet50`` in the paper; ``resnet101``, ``resnet152``,
            ``efficientnet_lite0``, ... work).
        weights: backbone weights: ``"hub"``, ``"offline"`` (EfficientNet-Lite0 only), ``"auto"``, a
            weights file or None (random); see :func:`~crackseg.models.backbones.create_backbone`.
        hidden_features: width of the hidden dense layer (1000 in the reference code).
        num_classes: output classes (2: no crack / crack).
        dropout: dropout before each dense layer (0 in the reference code).
        backbone_kwargs: extra arguments of the timm constructor (e.g. ``channels`` / ``stem_width`` of a
            narrow ResNet: the small CPU classifier of ``configs/weakly/classifier_fast_deepcrack.yaml``).
        tap: which map feeds the pooling and Grad-CAM++: ``"head"`` (default: the activated head conv of
            networks that have one, see :func:`head_activation_layer`, else the last feature level) or
            ``"last_stage"`` (timm's last ``features_only`` level, un-activated for EfficientNets).

    Attributes:
        backbone: the timm feature network (last level only).
        target_layer: the module whose output is the last convolutional feature map (B, C, h, w), for
            Grad-CAM++ forward / backward hooks (a property: ``backbone``'s module ``target_layer_name``).
        channels: C, the channels of that map.
        reduction: its stride relative to the input (32 for ResNets and EfficientNets).
        stride: 1: the network takes any input size, so the Lightning module never pads.
    """

    def __init__(self, backbone: str = "resnet50", weights: str | None = "auto", hidden_features: int = 1000,
                 num_classes: int = 2, dropout: float = 0.0, backbone_kwargs: dict[str, Any] | None = None,
                 tap: Literal["head", "last_stage"] = "head") -> None:
        super().__init__()
        if hidden_features < 0:
            raise ValueError(f"model.init_args.hidden_features must be >= 0, got {hidden_features}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.init_args.dropout must be in [0, 1), got {dropout}")
        if tap not in ("head", "last_stage"):
            raise ValueError(f"model.init_args.tap must be 'head' or 'last_stage', got {tap!r}")
        level = last_feature_level(backbone, backbone_kwargs)
        head = head_activation_layer(backbone, backbone_kwargs) if tap == "head" else None
        if head is None:
            self.backbone = create_backbone(backbone, out_indices=[level], weights=weights,
                                            model_kwargs=backbone_kwargs)
        else:
            self.backbone = create_backbone(backbone, weights=weights, layers=[head], model_kwargs=backbone_kwargs)
        self.weights_source: str = self.backbone.weights_source
        self.channels = int(self.backbone.feature_info.channels()[-1])
        self.reduction = int(self.backbone.feature_info.reduction()[-1])
        # a name, not a second reference to the module: the state dict keeps one copy of its weights
        self.target_layer_name = _module_name(self.backbone, self.backbone.feature_info.module_name()[-1])
        self.stride = 1
        self.pool = nn.AdaptiveAvgPool2d(1)
        layers: list[nn.Module] = [nn.Flatten(1)]
        width = self.channels
        if hidden_features:
            layers += [nn.Dropout(dropout), nn.Linear(width, hidden_features), nn.ReLU(inplace=True)]
            width = hidden_features
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.head = nn.Sequential(*layers)

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output is the last convolutional feature map (e.g. ResNet ``layer4``)."""
        return self.backbone.get_submodule(self.target_layer_name)

    def features(self, x: Tensor) -> Tensor:
        """The last convolutional feature map (B, C, h, w) of normalised images (the output of ``target_layer``)."""
        return self.backbone(x)[-1]

    def classify(self, features: Tensor) -> Tensor:
        """(B, num_classes) logits from a last feature map."""
        return self.head(self.pool(features))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``{"logits": (B, num_classes)}`` for normalised images (B, 3, H, W) of any size."""
        return {"logits": self.classify(self.features(x))}
