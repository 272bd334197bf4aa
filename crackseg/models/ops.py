"""Small tensor operations shared by several networks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def max_unpool2d(x: Tensor, indices: Tensor, output_size: tuple[int, int] | torch.Size) -> Tensor:
    """``F.max_unpool2d`` as a scatter into a zero map of ``output_size`` (H, W).

    Written by hand because torch's ``max_unpool2d`` has no deterministic implementation: under
    ``--trainer.deterministic true`` (``torch.use_deterministic_algorithms``) it raises, even on the CPU. The
    indices of a non-overlapping max pool are distinct, so the scatter is exact and deterministic, and its
    backward is a gather.

    Args:
        x: (B, C, h, w) pooled values.
        indices: (B, C, h, w) flat indices into each (H, W) plane, from ``F.max_pool2d(return_indices=True)``.
        output_size: (H, W) of the map before pooling.
    """
    batch, channels = x.shape[:2]
    height, width = int(output_size[-2]), int(output_size[-1])
    out = x.new_zeros(batch, channels, height * width)
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(batch, channels, height, width)


def forward_in_chunks(forward: Callable[[Tensor], Any], x: Tensor, chunk: int | None) -> Any:
    """``forward(x)`` run on chunks of at most ``chunk`` images, the outputs concatenated along the batch.

    Outputs may be tensors, or lists, tuples and dicts of them (other values are taken from the first chunk).
    Written here because the CPU inference of a large batch costs more per image than that of small chunks
    (activations that overflow the caches) and no library splits a module call and merges nested outputs.
    While tracing or exporting the batch goes through whole (a graph must not depend on the batch size).
    """
    if chunk is None or torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return forward(x)  # before len(x): a comparison with a symbolic batch size would pin it
    if len(x) <= chunk:
        return forward(x)
    return _concatenate([forward(part) for part in x.split(chunk)])


def _concatenate(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _concatenate([part[key] for part in parts]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_concatenate(list(items)) for items in zip(*parts, strict=True))
    return first
