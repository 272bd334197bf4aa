"""Training throughput per method at 256²: fp32 (``32-true``) vs ``bf16-mixed``, on the CPU (and a GPU when present).

    python -m benchmarks.precision_throughput [--methods UNet SCNet ...] [--size 256] [--batch 4]
        [--warmup 3] [--windows 5] [--window_steps 3] [--devices cpu cuda] [--threads N] [--write]

Each method is trained by Lightning's ``Trainer.fit`` (the module's real ``training_step``, loss, backward and
optimiser step under the precision plugin) on random in-memory images, so the figures are the cost of training,
not of data loading. The first ``--warmup`` steps are not timed; then ``--windows`` windows of ``--window_steps``
consecutive steps are, from the start of a window's first batch to the end of its last (CUDA synchronised), and the
median window gives images/s. Speed-up = bf16-mixed images/s ÷ 32-true images/s on the same device.

Networks are the methods' defaults with random weights (``weights: null``: the same cost as pretrained ones, no
download): U-Net (base 64, depth 4), DeepCrack-Liu, SCNet (Canny edge prior), SkipAE (ResNeXt101 blocks 1-3), DFR
(VGG19 relu1_1 … relu4_4, latent width from PCA of the first batch as in training), EncoderDecoder (smp U-Net on
EfficientNet-Lite0), MSFlow (WideResNet50 stages 1-3, flows 2/5/8), VAEGradCAM (at 256², constraint active: its
double backward is the steady-state cost after the warm-up epochs) and CrackClassifier (ResNet50) at its 128²
windows. A method that fails under a precision is reported as failed, with the error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import commit, machine, usable_cores, write_section  # noqa: E402
from crackseg.lightning_modules import (  # noqa: E402
    DFR,
    CrackClassifier,
    DeepCrackLiu,
    EncoderDecoder,
    MSFlow,
    SCNet,
    SkipAE,
    UNet,
    VAEGradCAM,
)

SECTION = "precision_throughput"
PRECISIONS = ("32-true", "bf16-mixed")


def _methods(size: int) -> dict[str, tuple[Callable[[], LightningModule], int]]:
    """Method name → (module factory, image side); every factory builds random weights."""
    return {
        "UNet": (lambda: UNet(), size),
        "DeepCrackLiu": (lambda: DeepCrackLiu(), size),
        "SCNet": (lambda: SCNet(), size),
        "EncoderDecoder": (lambda: EncoderDecoder(weights=None), size),
        "SkipAE": (lambda: SkipAE(weights=None), size),
        "DFR": (lambda: DFR(weights=None), size),
        "MSFlow": (lambda: MSFlow(weights=None), size),
        "VAEGradCAM": (lambda: VAEGradCAM(image_size=(size, size), warmup_epochs=0), size),
        "CrackClassifier": (lambda: CrackClassifier(weights=None), 128),
    }


class RandomImages(Dataset):
    """``length`` samples cycling through a fixed pool of random images with a thin "crack" in their masks."""

    def __init__(self, size: int, length: int, pool: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(pool, 3, size, size, generator=generator)
        self.masks = torch.zeros(pool, 1, size, size)
        self.masks[:, :, size // 2 - 1:size // 2 + 1, :] = 1.0
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = index % len(self.images)
        return {"image": self.images[i], "mask": self.masks[i], "has_mask": torch.tensor(True),
                "label": torch.tensor(i % 2)}


class StepTimer(Callback):
    """Wall-clock start and end of every training batch (CUDA synchronised)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []

    @staticmethod
    def _now(trainer: Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.starts.append(self._now(trainer))

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.ends.append(self._now(trainer))


def throughput(factory: Callable[[], LightningModule], side: int, device: str, precision: str, batch: int,
               warmup: int, windows: int, window_steps: int) -> float:
    """Median images/s over ``windows`` timed windows of ``window_steps`` training steps after ``warmup`` steps."""
    steps = warmup + windows * window_steps
    module = factory()
    loader = DataLoader(RandomImages(side, steps * batch), batch_size=batch, shuffle=False, num_workers=0)
    timer = StepTimer()
    trainer = Trainer(accelerator=device, devices=1, precision=precision, max_steps=steps, max_epochs=1,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    if len(timer.ends) < steps:
        raise RuntimeError(f"only {len(timer.ends)} of {steps} steps ran")
    rates = []
    for w in range(windows):
        first = warmup + w * window_steps
        last = first + window_steps - 1
        rates.append(window_steps * batch / (timer.ends[last] - timer.starts[first]))
    return statistics.median(rates)


def run(methods: Sequence[str], devices: Sequence[str], precisions: Sequence[str], size: int, batch: int,
        warmup: int, windows: int, window_steps: int) -> list[dict[str, Any]]:
    """One row per (method, device, precision): images/s or the error."""
    table = _methods(size)
    rows = []
    for name in methods:
        factory, side = table[name]
        for device in devices:
            for precision in precisions:
                row: dict[str, Any] = {"method": name, "device": device, "precision": precision, "side": side}
                try:
                    row["images_per_s"] = throughput(factory, side, device, precision, batch, warmup, windows,
                                                     window_steps)
                except Exception as error:  # noqa: BLE001  (reported in the table, honestly)
                    traceback.print_exc()
                    text = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
                    row["error"] = f"{type(error).__name__}: {text}"
                print(row, flush=True)
                rows.append(row)
    return rows


def markdown(rows: Sequence[dict[str, Any]], settings: str) -> str:
    """The results as a markdown section (header with provenance, then the table)."""
    lines = ["## Training throughput: fp32 vs bf16-mixed", "",
             f"{dt.date.today().isoformat()}, commit {commit()}, {machine()}, {torch.get_num_threads()} torch "
             f"threads. {settings}", "",
             "| method | image | device | precision | images/s | speed-up vs 32-true |",
             "|---|---|---|---|---:|---:|"]
    base = {(r["method"], r["device"]): r.get("images_per_s") for r in rows if r["precision"] == "32-true"}
    for r in rows:
        rate = r.get("images_per_s")
        if rate is None:
            value, speedup = f"failed ({r['error']})", "–"
        else:
            value = f"{rate:.2f}"
            reference = base.get((r["method"], r["device"]))
            speedup = f"{rate / reference:.2f}×" if reference and r["precision"] != "32-true" else "–"
        lines.append(f"| {r['method']} | {r['side']}² | {r['device']} | {r['precision']} | {value} | {speedup} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(_methods(256))
    parser.add_argument("--methods", nargs="+", default=names, choices=names)
    parser.add_argument("--size", type=int, default=256, help="image side (CrackClassifier keeps its 128² windows)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--windows", type=int, default=5, help="timed windows (the median is reported)")
    parser.add_argument("--window_steps", type=int, default=3, help="training steps per timed window")
    parser.add_argument("--devices", nargs="+", default=None,
                        help="cpu and/or cuda (default: cpu, plus cuda when available)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the usable cores)")
    parser.add_argument("--write", action="store_true", help=f"write the table to RESULTS.md (section {SECTION})")
    args = parser.parse_args(argv)
    if min(args.size, args.batch, args.windows, args.window_steps) < 1 or args.warmup < 0:
        parser.error("--size, --batch, --windows and --window_steps must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads or usable_cores())
    for name in ("lightning.pytorch", "lightning.fabric"):  # one trainer per row: keep its banners out
        logging.getLogger(name).setLevel(logging.WARNING)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = run(args.methods, devices, args.precisions, args.size, args.batch, args.warmup, args.windows,
               args.window_steps)
    settings = (f"Batch {args.batch}, {args.warmup} warm-up steps, median of {args.windows} windows of "
                f"{args.window_steps} steps; random weights and images (see benchmarks/precision_throughput.py).")
    text = markdown(rows, settings)
    print(text)
    if args.write:
        write_section(SECTION, text)
    return text


if __name__ == "__main__":
    main()
