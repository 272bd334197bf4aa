"""SCNet vs DeepCrack-Liu trained the same way on the real CrackForest (CFD) sample, CPU.

    python -m benchmarks.scnet_cfd --epochs 15 --width 0.25

Both models use their configurations (``configs/scnet/crackforest.yaml``,
``configs/deepcrack_liu/crackforest.yaml``: SGD lr 1e-4, momentum 0.9, weight decay 2e-4) trained as SCNet's
paper trains every model of its Table III (batch 4 of 256² crops, rotation 0–90° and flips), with the same
data split (SCNet's 20 % test hold-out, seed 0), the same number of epochs and the same width multiplier;
each is tested with its best checkpoint. The paper's "F1" is the best-threshold F1 with TP / FP / FN summed
over the test set (``test/ods_dataset``); F1 at the validation-calibrated (F1Threshold) threshold is shown
beside it. Writes a section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from benchmarks.common import REPO, SHARED_DATA, commit, fit_and_test, machine, write_section

# Sharma et al. 2021: Table III (pixel F1, %) and Table IV (region F1, %) on CrackForest.
PAPER = {"SCNet": {"f1": 90.40, "region_f1": 96.62}, "DeepCrackLiu": {"f1": 84.42, "region_f1": None}}
CONFIGS = {"SCNet": "configs/scnet/crackforest.yaml", "DeepCrackLiu": "configs/deepcrack_liu/crackforest.yaml"}


def run(root: Path, epochs: int, width: float, workdir: Path, models: list[str] | None = None,
        minutes: float | None = None, trainer_config: str = "configs/trainer/cpu.yaml", section: str = "scnet_cfd",
        extra: list[str] | None = None) -> str:
    overrides = ["--data.init_args.root", str(root), "--data.init_args.test_fraction", "0.2",
                 "--data.init_args.crop_size", "256", "--data.init_args.rotate_limit", "90",
                 "--model.init_args.width_multiplier", str(width), *(extra or [])]
    results = {name: fit_and_test(REPO / config, workdir / name, overrides, max_time_minutes=minutes,
                                  max_epochs=epochs, trainer_config=trainer_config)
               for name, config in CONFIGS.items() if models is None or name in models}
    rows = []
    for name, r in results.items():
        m, paper = r.metrics, PAPER[name]
        region = f"{paper['region_f1']:.2f}" if paper["region_f1"] is not None else "–"
        rows.append(f"| {name} | {100 * m['test/ods_dataset']:.2f} ({paper['f1']:.2f}) | {100 * m['test/f1']:.2f} | "
                    f"{100 * m['test/auprc']:.2f} | "
                    f"{100 * m['test/iou']:.2f} | {100 * m['test/region_f1']:.2f} ({region}) | "
                    f"{100 * m['test/ods']:.2f} / {100 * m['test/ois']:.2f} / {100 * m['test/ap']:.2f} | "
                    f"{r.epochs} ({r.steps} steps) | {r.train_images_per_second:.2f} | {r.test_ms_per_image:.0f} |")
    any_result = next(iter(results.values()))
    budget = f"{epochs} epochs" + (f" or {minutes:g} minutes" if minutes else "") + f" ({trainer_config})"
    text = f"""## SCNet vs DeepCrack-Liu on CrackForest (real data), CPU

Command: `python -m benchmarks.scnet_cfd {" ".join(sys.argv[1:])}`; date {dt.date.today().isoformat()};
machine: {machine()}; commit {commit()}.

Same training for both: paper optimiser (SGD lr 1e-4, momentum 0.9, weight decay 2e-4), batch 4 of 256² crops
with rotation 0–90° and flips, **{budget}**, channel width multiplier **{width:g}** (1 = the papers'
networks; reduced to fit a 2-core CPU), {any_result.n_train} training / {any_result.n_test} test images
(CFD images with ground truth, 20 % test hold-out, 20 % of the rest for validation, seed 0). Pixel F1 as the
paper computes it: best threshold, TP / FP / FN summed over the test set (`test/ods_dataset`); F1 / IoU at the
threshold calibrated on validation by F1Threshold; region F1 on 32×32 patches. In brackets: the paper's figure
(Sharma et al. 2021, Tables III and IV; trained to convergence on a GPU at full width), not comparable to a run
this short.

| model | pixel F1 %, dataset-level (paper) | F1 % at val. threshold | AUPRC % | IoU % | region F1 % (paper) | \
ODS / OIS / AP % (per image) | epochs | train img/s | test ms/img |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    write_section(section, text)
    print(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=SHARED_DATA / "cfd")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--width", type=float, default=0.25, help="channel width multiplier (1 = paper)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_scnet_cfd")
    parser.add_argument("--models", nargs="+", default=None, choices=list(CONFIGS))
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock fit budget per model")
    parser.add_argument("--trainer-config", dest="trainer_config", default="configs/trainer/cpu.yaml")
    parser.add_argument("--section", default="scnet_cfd", help="section of benchmarks/RESULTS.md to write")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further crackseg overrides")
    args = parser.parse_args()
    run(args.root, args.epochs, args.width, args.workdir, args.models, args.minutes, args.trainer_config,
        args.section, args.extra)
