"""Train DeepCrack-Liu on the real DeepCrack training set for a time budget, test it, record the figures.

    python -m benchmarks.deepcrack_liu --root ../shared/data/deepcrack/DeepCrack --minutes 45

Uses the paper configuration ``configs/deepcrack_liu/deepcrack.yaml`` (SGD lr 1e-4, focal loss with
side outputs, 256² crops) on the CPU, stops after ``--minutes`` of training, tests the best
checkpoint on the 237 official test images, and writes a section of ``benchmarks/RESULTS.md`` with
the measured ODS / OIS / AP (König et al.'s per-image definition and DeepSegmentor's dataset-summed
one), throughput and the paper's figure. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from crackseg.cli import main
from crackseg.metrics import ThresholdSweepF1

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "deepcrack_liu_deepcrack"
# Liu et al. (2019) as reported in SCNet (Sharma et al. 2021), Table III: pixel-wise F1 on DeepCrack.
PAPER_F1 = 0.852


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dataset_scale_sweep(pred_dir: Path, gt_dir: Path) -> dict[str, float]:
    """ODS / OIS / AP with TP, FP, FN summed over the dataset, from the written 8-bit maps."""
    metric = ThresholdSweepF1(average="dataset")
    for map_path in sorted(pred_dir.glob("*.png")):
        pred = torch.from_numpy(np.asarray(Image.open(map_path), dtype=np.float32) / 255.0)
        gt = torch.from_numpy((np.asarray(Image.open(gt_dir / map_path.name).convert("L")) > 127).astype(np.int64))
        metric.update(pred[None, None], gt[None, None])
    return {k: float(v) for k, v in metric.compute().items()}


def write_section(text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md between its markers."""
    begin, end = f"<!-- begin {SECTION} -->", f"<!-- end {SECTION} -->"
    header = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; no figure is typed by hand.\n"
    old = RESULTS.read_text() if RESULTS.exists() else header
    block = f"{begin}\n{text.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(new)


def run(root: Path, minutes: float, workdir: Path, width: float) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, out_dir = workdir / "checkpoints", workdir / "predictions"
    config = yaml.safe_load((REPO / "configs/deepcrack_liu/deepcrack.yaml").read_text())
    for callback in config["trainer"]["callbacks"]:  # outputs of the paper config go to the work dir
        if callback["class_path"] == "ModelCheckpoint":
            callback["init_args"]["dirpath"] = str(ckpt_dir)
        if callback["class_path"] == "PredictionWriter":
            callback["init_args"]["output_dir"] = str(out_dir)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    common = ["--config", str(REPO / "configs/trainer/cpu.yaml"), "--config", str(workdir / "config.yaml"),
              "--data.init_args.root", str(root), "--model.init_args.width_multiplier", str(width),
              f"--trainer.default_root_dir={workdir}", "--trainer.logger=CSVLogger",
              f"--trainer.logger.save_dir={workdir}", "--trainer.enable_progress_bar=false"]
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    cli = main(["fit", *common, "--trainer.max_epochs=10000",
                f"--trainer.max_time=00:{int(minutes // 60):02d}:{int(minutes % 60):02d}:00"])
    train_seconds = time.perf_counter() - start
    epochs = cli.trainer.current_epoch
    n_train = len(cli.datamodule.datasets["train"])
    steps = cli.trainer.global_step
    batch = cli.datamodule.batch_size

    start = time.perf_counter()
    cli = main(["test", *common, "--ckpt_path", str(ckpt_dir / "best.ckpt")])
    test_seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    n_test = len(cli.datamodule.datasets["test"])
    dataset_scale = dataset_scale_sweep(out_dir / "test" / "maps", root / "test_lab")

    today = dt.date.today().isoformat()
    text = f"""## DeepCrack-Liu on DeepCrack (real data), CPU

Command: `python -m benchmarks.deepcrack_liu --root <DeepCrack> --minutes {minutes:g} --width {width:g}`;
date {today}; machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU;
commit {_commit()}; torch {torch.__version__}.

Training budget: **{minutes:g} minutes of CPU time** ({epochs} epochs started, {steps} SGD steps of batch {batch},
{n_train} training images, 60 held out for validation) with the paper configuration
(`configs/deepcrack_liu/deepcrack.yaml`: SGD lr 1e-4, focal loss on fused + side outputs, 256² crops).
The paper trains to convergence on a GPU; this run is far shorter, so it is a smoke-scale figure, not a
reproduction.

| metric (237 test images, full 544×384) | ours | paper |
|---|---|---|
| ODS, per-image mean (König et al. eq. 10) | {metrics['test/ods']:.4f} | – |
| OIS (eq. 9) | {metrics['test/ois']:.4f} | – |
| AP (eq. 11, step-wise) | {metrics['test/ap']:.4f} | – |
| ODS, dataset-summed (DeepSegmentor) | {dataset_scale['ods']:.4f} | 0.852 (pixel F1, Liu et al. via SCNet Table III) |
| AP, dataset-summed | {dataset_scale['ap']:.4f} | – |
| F1 / IoU at the validation-calibrated threshold {metrics['test/pixel_threshold']:.3f} | \
{metrics['test/f1']:.4f} / {metrics['test/iou']:.4f} | – |
| region F1 (32×32 patches) | {metrics['test/region_f1']:.4f} | – |

Throughput on this machine: training {n_train * max(epochs, 1) / train_seconds:.2f} images/s (whole fit incl.
validation); test {1000 * test_seconds / n_test:.0f} ms/image at batch 1 (whole test run incl. loading and metrics).
"""
    write_section(text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared/data/deepcrack/DeepCrack")
    parser.add_argument("--minutes", type=float, default=45.0, help="training time budget")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1 = paper)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_deepcrack_liu")
    args = parser.parse_args()
    run(args.root, args.minutes, args.workdir, args.width)
