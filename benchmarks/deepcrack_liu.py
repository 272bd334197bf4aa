"""Train DeepCrack-Liu on the real DeepCrack training set for a time budget, test it, record the figures.

    python -m benchmarks.deepcrack_liu --root ../shared/data/deepcrack/DeepCrack --minutes 45

Uses the paper configuration ``configs/deepcrack_liu/deepcrack.yaml`` (DeepSegmentor: SGD lr 1e-4 × 0.1 every
40 epochs, focal loss with side outputs, whole 544×384 images with flips) on the CPU, stops after ``--minutes``
of training, tests the best checkpoint on the 237 official test images, and writes a section of
``benchmarks/RESULTS.md`` with the measured ODS / OIS / AP (König et al.'s per-image definition and
DeepSegmentor's dataset-summed one, ``test/ods_dataset``), throughput and the paper's figure. Nothing in the
table is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from benchmarks.common import REPO, SHARED_DATA, commit, fit_and_test, machine, write_section

# Liu et al. (2019) as reported in SCNet (Sharma et al. 2021), Table III: pixel-wise F1 on DeepCrack.
PAPER_F1 = 0.852


def run(root: Path, minutes: float, workdir: Path, width: float) -> None:
    result = fit_and_test(REPO / "configs/deepcrack_liu/deepcrack.yaml", workdir,
                          ["--data.init_args.root", str(root), "--model.init_args.width_multiplier", str(width)],
                          max_time_minutes=minutes)
    m = result.metrics
    text = f"""## DeepCrack-Liu on DeepCrack (real data), CPU

Command: `python -m benchmarks.deepcrack_liu --minutes {minutes:g} --width {width:g}`;
date {dt.date.today().isoformat()}; machine: {machine()}; commit {commit()}.

Training budget: **{minutes:g} minutes on the CPU** ({result.epochs} epochs started, {result.steps} SGD steps of
batch {result.batch_size}, {result.n_train} training images, the rest of the 300 held out for validation) with
the paper configuration (`configs/deepcrack_liu/deepcrack.yaml`, DeepSegmentor's recipe: SGD lr 1e-4 × 0.1
every 40 epochs, focal loss on fused + side outputs, whole 544×384 images with flips, Xavier gain 0.02; width
multiplier {width:g}). The paper trains to convergence on a GPU; this run is far
shorter, so it is a smoke-scale figure, not a reproduction.

| metric (237 test images, full 544×384) | ours | paper |
|---|---|---|
| ODS, per-image mean (König et al. eq. 10) | {m['test/ods']:.4f} | – |
| OIS (eq. 9) | {m['test/ois']:.4f} | – |
| AP (eq. 11, step-wise) | {m['test/ap']:.4f} | – |
| ODS, dataset-summed (DeepSegmentor `prf_metrics`, `test/ods_dataset`) | {m['test/ods_dataset']:.4f} | \
{PAPER_F1} (pixel F1, Liu et al. via SCNet Table III) |
| AP, dataset-summed (`test/ap_dataset`) | {m['test/ap_dataset']:.4f} | – |
| F1 / IoU at the validation-calibrated threshold {m['test/pixel_threshold']:.3f} | \
{m['test/f1']:.4f} / {m['test/iou']:.4f} | – |
| pixel AUPRC | {m['test/auprc']:.4f} | – |
| region F1 (32×32 patches) | {m['test/region_f1']:.4f} | – |

Throughput on this machine: training {result.train_images_per_second:.2f} images/s (whole fit incl. validation);
test {result.test_ms_per_image:.0f} ms/image at batch 1 (whole test run incl. loading, metrics and writing).
"""
    write_section("deepcrack_liu_deepcrack", text)
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=SHARED_DATA / "deepcrack/DeepCrack")
    parser.add_argument("--minutes", type=float, default=45.0, help="training time budget")
    parser.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1 = paper)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_deepcrack_liu")
    args = parser.parse_args()
    run(args.root, args.minutes, args.workdir, args.width)
