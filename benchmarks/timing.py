"""Measurements shared by the benchmark runner and the anomalib peer script: training throughput, peak memory.

This module imports only the standard library, torch and lightning, so the anomalib environment
(``benchmarks/anomalib_peer.py``, run with another Python) measures its models exactly as ours.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _batch_size(batch: Any) -> int:
    """Images in a batch: a dict with ``"image"`` (crackseg), an object with ``.image`` (anomalib) or a tensor."""
    image = batch.get("image") if isinstance(batch, dict) else getattr(batch, "image", batch)
    if isinstance(image, (list, tuple)):
        image = image[0]
    return int(image.shape[0]) if isinstance(image, torch.Tensor) else 1


class TrainThroughput(Callback):
    """Training-loop images/s: data loading + forward + backward + optimiser step, validation excluded.

    Each training batch is timed from the end of the previous one (or the start of its epoch), so
    validation and checkpointing between epochs are left out. The first ``warmup`` batches of the fit
    are not counted. At the end of the fit the totals go to ``output`` as JSON.

    Args:
        output: JSON file written at the end of the fit (``images``, ``seconds``, ``batches``, ``images_per_second``).
        warmup: training batches ignored at the start of the fit (allocator and kernel warm-up).
    """

    def __init__(self, output: str, warmup: int = 1) -> None:
        self.output = Path(output)
        self.warmup = warmup
        self.images = 0
        self.seconds = 0.0
        self.batches = 0
        self._seen = 0
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self._seen += 1
        if self._seen > self.warmup and self._last is not None:
            self.images += _batch_size(batch)
            self.seconds += now - self._last
            self.batches += 1
        self._last = now

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.write_text(json.dumps({
            "images": self.images, "seconds": self.seconds, "batches": self.batches,
            "images_per_second": self.images / self.seconds if self.seconds > 0 else float("nan")}))


def read_throughput(path: Path) -> float:
    """Images/s a :class:`TrainThroughput` wrote (nan when nothing was counted or the file is missing)."""
    try:
        return float(json.loads(Path(path).read_text())["images_per_second"])
    except (OSError, KeyError, ValueError):
        return float("nan")


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new peak-memory window: the process's peak RSS (Linux ``clear_refs``) or CUDA's peak statistics."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass  # not Linux or not allowed: the window then starts at the process start


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory in MiB since :func:`reset_peak_memory`: RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def median_ms_per_image(step: Callable[[], Any], batch_size: int, runs: int, warmup: int, device: str = "cpu") -> float:
    """Median milliseconds per image of ``step()`` (one batch of ``batch_size``) over ``runs`` calls after ``warmup``.

    ``step`` should end by reading a value back (e.g. ``float(score.sum())``) so that device work is waited for.
    """
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch_size
