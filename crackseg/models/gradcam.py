"""Batched GradCAM++ (Chattopadhay et al., WACV 2018) at a network's last convolutional feature map.

Written in torch rather than taken from ``pytorch-grad-cam`` (PyPI ``grad-cam``): that package is not a
dependency of crackseg (it would bring matplotlib, scikit-learn and ttach), and it min-max normalises and
resizes every map itself, whereas König et al. divide the map by its maximum; the formula is a few lines.

For the class score ``S`` (the logit) and the feature map ``A`` (``B x K x h x w``) of ``net.target_layer``,
with ``g = dS/dA``, the closed form of GradCAM++ for an exponential score (the paper's eq. 19) is::

    alpha = g^2 / (2 g^2 + sum_ij(A) g^3)        (0 where the denominator is 0)
    w_k   = sum_ij alpha * relu(g)
    cam   = relu(sum_k w_k A_k)

Every image's map is divided by its maximum (an all-zero map stays zero). The images of a batch are
independent (the network is in eval mode), so the gradient of the summed scores gives each image its own.

The reference code (TensorFlow) differentiates the softmax output three times with nested gradient tapes and
normalises ``alpha`` by its spatial sum; those are departures from the GradCAM++ paper, which is followed here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["gradcam_plus_plus", "gradcam_plus_plus_from_features"]


def gradcam_plus_plus(net: nn.Module, inputs: Tensor, class_index: int | None = None,
                      target_layer: nn.Module | None = None) -> Tensor:
    """GradCAM++ maps of a batch, each divided by its maximum.

    Only the part of the network after ``target_layer`` is differentiated: the parameters are frozen for the
    call and the target layer's output is cut from the graph, so the backbone builds no graph.

    Args:
        net: a classifier whose ``forward(x)`` returns ``{"logits": (B, n_classes)}`` (or the logits tensor).
        inputs: the network's input batch (already normalised), ``(B, C, H, W)``.
        class_index: class whose score is explained; None takes each image's arg-max class.
        target_layer: the module whose output is the feature map; default ``net.target_layer``.

    Returns:
        ``(B, h, w)`` float32 maps in [0, 1] at the feature map's resolution.
    """
    layer = target_layer if target_layer is not None else net.target_layer
    store: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        leaf = output.detach().requires_grad_(True)
        store["features"] = leaf
        return leaf.clone()  # a later in-place op must not touch the leaf

    parameters = list(net.parameters())
    flags = [p.requires_grad for p in parameters]
    handle = layer.register_forward_hook(hook)
    try:
        for p in parameters:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            outputs = net(inputs.clone())
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs
            if "features" not in store:
                raise RuntimeError("the target layer was not called by the network's forward pass")
            if class_index is None:
                chosen = logits.detach().argmax(dim=1)
            else:
                chosen = torch.full((logits.shape[0],), int(class_index), dtype=torch.long, device=logits.device)
            score = logits.gather(1, chosen[:, None]).sum()
            (grads,) = torch.autograd.grad(score, store["features"])
    finally:
        handle.remove()
        for p, flag in zip(parameters, flags, strict=True):
            p.requires_grad_(flag)
    return _gradcam_maps(store["features"].detach(), grads)


def gradcam_plus_plus_from_features(classify: Callable[[Tensor], Tensor], features: Tensor,
                                    class_index: int | None = None) -> Tensor:
    """GradCAM++ maps from a feature map computed beforehand (e.g. tile by tile: :mod:`crackseg.pseudolabels`).

    Args:
        classify: the network's part after the feature map, ``(B, K, h, w) -> (B, n_classes)`` logits
            (``CrackClassifierNet.classify``).
        features: the feature map ``(B, K, h, w)`` of ``net.target_layer``.
        class_index: class whose score is explained; None takes each image's arg-max class.

    Returns:
        ``(B, h, w)`` float32 maps in [0, 1], as :func:`gradcam_plus_plus` gives for the same feature map.
    """
    leaf = features.detach().requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        logits = classify(leaf.clone())
        if class_index is None:
            chosen = logits.detach().argmax(dim=1)
        else:
            chosen = torch.full((logits.shape[0],), int(class_index), dtype=torch.long, device=logits.device)
        (grads,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), leaf)
    return _gradcam_maps(leaf.detach(), grads)


def _gradcam_maps(features: Tensor, grads: Tensor) -> Tensor:
    """The closed form of the module docstring: ``(B, h, w)`` maps, each divided by its maximum."""
    features = features.float()
    grads = grads.float()
    g2 = grads * grads
    denominator = 2.0 * g2 + features.sum(dim=(2, 3), keepdim=True) * g2 * grads
    alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(dim=1))
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(cam))
