"""Weakly supervised segmentation on real DeepCrack: classifier → pseudo labels → U-Net, WSV beside FSV.

    python -m benchmarks.weakly_deepcrack --classifier-minutes 8 --segmentation-minutes 8
    python -m benchmarks.weakly_deepcrack --classifier-epochs 1 --segmentation-epochs 1 --limit-batches 2 \\
        --speed-images 2 --no-write                                                   # smoke test
    python -m benchmarks.weakly_deepcrack --classifier-config classifier_fast_deepcrack.yaml --modes WSV \\
        --section weakly_deepcrack_fast --workdir runs/bench_weakly_fast              # the small CPU classifier

König et al.'s chain on the real DeepCrack sample (train split → classifier and pseudo labels; test split →
metrics), with the configs of ``configs/weakly/``:

1. ``classifier_deepcrack.yaml``: the crack classifier on 128² windows (stride 64) of the DeepCrack training
   images (EfficientNet-Lite0, offline ImageNet weights; the paper: ResNet50), tested on the windows of the test
   images: patch F1 / precision / recall (Table I);
2. ``crackseg pseudo-label`` with the classifier's last checkpoint over all 300 training images (fast generator):
   pseudo-label quality against the real masks, ODS / OIS / AP (Table II); the fast and the reference generator
   are also timed on the same first ``--speed-images`` training images in this run (images/s, median of
   ``--speed-runs``);
3. ``unet_fsv_deepcrack.yaml`` (real masks) and ``unet_wsv_deepcrack.yaml`` (the pseudo labels), trained the same
   way, tested on the 237 real test images: ODS / OIS / AP (Table VI).

Writes the section ``weakly_deepcrack`` of ``benchmarks/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import REPO, SHARED_DATA, commit, fit_and_test, machine, usable_cores, write_section
from crackseg.cli import main as crackseg_main
from crackseg.data.io import read_image
from crackseg.datamodules import DeepCrackDataModule
from crackseg.pseudolabels import FastPseudoLabeler, ReferencePseudoLabeler
from crackseg.pseudolabels.dataset import load_classifier

CONFIGS = REPO / "configs" / "weakly"
#: König et al., ResNet50 classifier: Table I (Crack500 patches), Table II (Crack500 training labels), Table VI (DCD).
PAPER_PATCH = {"f1": 0.9045, "precision": 0.8824, "recall": 0.9278}
PAPER_LABELS = {"ods": 0.5359, "ois": 0.5839, "ap": 0.4371, "images_per_s": 0.1868}
PAPER_UNET = {"FSV": (0.5886, 0.6475, 0.4478), "WSV": (0.6199, 0.7120, 0.6595)}


def config_epochs(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["trainer"]["max_epochs"])


def generator_speed(checkpoint: Path, root: Path, n_images: int, runs: int) -> dict[str, float]:
    """Images/s of the fast and the reference generator on the first ``n_images`` DeepCrack training images."""
    datamodule = DeepCrackDataModule(root, val_fraction=0.0)
    samples = datamodule.split_samples()["train"][:n_images]
    images = [read_image(s.image) for s in samples]
    classifier = load_classifier(checkpoint)
    speeds = {}
    for name, cls in (("fast", FastPseudoLabeler), ("reference", ReferencePseudoLabeler)):
        generator = cls(classifier)
        generator(images[:1])  # warm-up
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            generator(images)
            times.append(time.perf_counter() - start)
        speeds[name] = len(images) / statistics.median(times)
    speeds["height"], speeds["width"] = images[0].shape[:2]
    return speeds


def describe_classifier(run_dir: Path) -> str:
    """One sentence on the classifier a run trained (backbone, weights, optimiser), read from the config the fit
    saved (every value resolved: the short configs leave the class defaults out)."""
    saved = sorted(run_dir.glob("lightning_logs/version_*/config.yaml"), key=lambda p: int(p.parent.name[8:]))
    if not saved:
        raise SystemExit(f"no config.yaml saved under {run_dir}/lightning_logs: cannot describe the classifier")
    args = yaml.safe_load(saved[0].read_text())["model"]["init_args"]
    backbone, weights, extra = args.get("backbone"), args.get("weights"), args.get("backbone_kwargs")
    if weights == "offline":
        origin = "with the offline ImageNet weights"
    elif weights in (None, "null", "none"):
        origin = "from random weights"
    else:
        origin = f"with weights {weights!r}"
    shape = f" ({', '.join(f'{k} {v}' for k, v in extra.items())})" if extra else ""
    return (f"{backbone}{shape} {origin} (the paper: ResNet50, ImageNet), {args.get('optimizer', 'sgd').upper()} lr "
            f"{args.get('lr'):g}, schedule {args.get('lr_schedule')}")


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def run(args: argparse.Namespace) -> str:
    root = Path(args.root)
    if not root.is_dir():
        raise SystemExit(f"DeepCrack data not found at {root} (give --root)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    limits = [] if args.limit_batches is None else [f"--trainer.limit_{s}_batches={args.limit_batches}"
                                                    for s in ("train", "val", "test")]
    torch.set_num_threads(usable_cores())

    # 1. classifier on 128² windows
    classifier_config = CONFIGS / args.classifier_config
    classifier = fit_and_test(classifier_config, workdir / "classifier",
                              ["--data.init_args.source.init_args.root", str(root), *limits],
                              max_time_minutes=args.classifier_minutes,
                              max_epochs=args.classifier_epochs or config_epochs(classifier_config),
                              test_checkpoint="last.ckpt")
    checkpoint = workdir / "classifier" / "checkpoints" / "last.ckpt"

    # 2. pseudo labels of every training image, and the two generators' speed in this run
    labels = workdir / "pseudo_labels"
    report = crackseg_main(["pseudo-label", "--ckpt_path", str(checkpoint), "--data.class_path", "DeepCrackDataModule",
                            "--data.init_args.root", str(root), "--data.init_args.val_fraction", "0", "--out",
                            str(labels), "--overwrite", "true", "--progress", "false"])
    quality = (report.get("quality") or {}).get("kept") or {}
    quality_all = (report.get("quality") or {}).get("all") or {}
    torch.set_num_threads(args.speed_threads)
    speed = generator_speed(checkpoint, root, args.speed_images, args.speed_runs)
    torch.set_num_threads(usable_cores())

    # 3. U-Net on the real masks (FSV) and on the pseudo labels (WSV)
    unet = {}
    width = ["--model.init_args.base_channels", str(args.unet_width)]
    for mode, data_root in (("FSV", root), ("WSV", labels)):
        if mode not in args.modes:
            continue
        config = CONFIGS / f"unet_{mode.lower()}_deepcrack.yaml"
        unet[mode] = fit_and_test(config, workdir / f"unet_{mode.lower()}", ["--data.init_args.root", str(data_root),
                                                                            *width, *limits],
                                  max_time_minutes=args.segmentation_minutes,
                                  max_epochs=args.segmentation_epochs or config_epochs(config))

    m = classifier.metrics
    rows_unet = []
    for mode, result in unet.items():
        r = result.metrics
        paper = PAPER_UNET[mode]
        rows_unet.append(f"| {mode} | {fmt(r.get('test/ods'))} | {fmt(r.get('test/ois'))} | {fmt(r.get('test/ap'))} | "
                         f"{fmt(r.get('test/ods_dataset'))} / {fmt(r.get('test/ap_dataset'))} | "
                         f"{result.epochs} ({result.steps}), {result.train_seconds / 60:.1f} min | "
                         f"{paper[0]:.4f} / {paper[1]:.4f} / {paper[2]:.4f} |")
    budget = (("classifier_config", None if args.classifier_config == "classifier_deepcrack.yaml"
               else args.classifier_config), ("modes", None if set(args.modes) == {"FSV", "WSV"}
                                             else " ".join(args.modes)),
              ("section", None if args.section == "weakly_deepcrack" else args.section),
              ("classifier_minutes", args.classifier_minutes), ("classifier_epochs", args.classifier_epochs),
              ("segmentation_minutes", args.segmentation_minutes), ("segmentation_epochs", args.segmentation_epochs),
              ("unet_width", args.unet_width), ("limit_batches", args.limit_batches))
    command = " ".join(["python -m benchmarks.weakly_deepcrack",
                        *[f"--{k.replace('_', '-')} {v}" for k, v in budget if v is not None]])
    text = f"""## Weakly supervised segmentation on DeepCrack (real data): classifier → pseudo labels → U-Net

Command: `{command}`; date {dt.date.today().isoformat()}; machine: {machine()}; commit {commit()}.

Classifier (`configs/weakly/{args.classifier_config}`): {describe_classifier(workdir / 'classifier')}, 128² windows with
stride 64 of the DeepCrack training images (60 held out for validation); {classifier.epochs} epoch(s),
{classifier.steps} steps, {classifier.train_seconds / 60:.1f} min;
its last checkpoint makes the pseudo labels. Test windows of the 237 test images:

| patch classification | F1 | precision | recall |
|---|---|---|---|
| ours (DeepCrack test windows) | {fmt(m.get('test/image_f1'))} | {fmt(m.get('test/image_precision'))} | \
{fmt(m.get('test/image_recall'))} |
| paper, ResNet50 (Crack500 test patches, Table I) | {PAPER_PATCH['f1']} | {PAPER_PATCH['precision']} | \
{PAPER_PATCH['recall']} |

Pseudo labels of all 300 training images (`crackseg pseudo-label`, fast generator) against their real masks
({quality_all.get('images', '–')} images with masks; {report.get('below_min_crack_pixels', '–')} got no label
(fewer than 100 crack pixels); the command's own speed figure: {report.get('images_per_second', float('nan')):.2f}
images/s). ODS = OIS for binary labels; the 0–255 confidence maps give ODS / OIS / AP
{fmt(quality.get('confidence_ods'))} / {fmt(quality.get('confidence_ois'))} / {fmt(quality.get('confidence_ap'))}.

| pseudo labels | ODS | OIS | AP | images/s |
|---|---|---|---|---|
| ours (DeepCrack train, fast generator), labelled images | {fmt(quality.get('ods'))} | \
{fmt(quality.get('ois'))} | {fmt(quality.get('ap'))} | {speed['fast']:.2f} |
| ours, all images (skipped ones as empty labels) | {fmt(quality_all.get('ods'))} | {fmt(quality_all.get('ois'))} | \
{fmt(quality_all.get('ap'))} | |
| ours, reference generator (same images, same run) | – | – | – | {speed['reference']:.2f} |
| paper, ResNet50 (Crack500 train, Table II, Titan XP) | {PAPER_LABELS['ods']} | {PAPER_LABELS['ois']} | \
{PAPER_LABELS['ap']} | {PAPER_LABELS['images_per_s']} |

Generator speed: the whole pipeline (patch classification, GradCAM++, thresholding, merging) with the trained
classifier on the first {args.speed_images} training images ({speed['width']}×{speed['height']}), median of
{args.speed_runs} runs after a warm-up, on this machine's CPU with {args.speed_threads} torch thread(s).

U-Net (`configs/weakly/unet_{{fsv,wsv}}_deepcrack.yaml`, base width {args.unet_width} instead of the paper's 64 to fit
a 2-core CPU; BCE, SGD lr 1e-3 ÷10 every 10 epochs, batch 4 of 256² crops), trained on the real masks (FSV) or on
the pseudo labels (WSV) for the same budget, tested on the 237 real test images at full size (ODS / OIS / AP over
thresholds 0.01…0.99, König et al. eqs. 9–11); paper: Table VI (DCD, 30 epochs on a GPU; the paper evaluates on all
537 DCD images with a classifier trained on Crack500):

| U-Net | ODS | OIS | AP | ODS / AP, dataset-level | epochs (steps), time | paper Table VI ODS / OIS / AP |
|---|---|---|---|---|---|---|
{chr(10).join(rows_unet)}
"""
    if not args.no_write:
        write_section(args.section, text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=str(SHARED_DATA / "deepcrack" / "DeepCrack"), help="DeepCrack folder")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_weakly_deepcrack"))
    parser.add_argument("--classifier-config", dest="classifier_config", default="classifier_deepcrack.yaml",
                        help="classifier config in configs/weakly/")
    parser.add_argument("--modes", nargs="+", default=["FSV", "WSV"], choices=["FSV", "WSV"],
                        help="U-Net trainings to run (real masks, pseudo labels)")
    parser.add_argument("--section", default="weakly_deepcrack", help="section of benchmarks/RESULTS.md to write")
    parser.add_argument("--classifier-minutes", dest="classifier_minutes", type=float, default=None)
    parser.add_argument("--classifier-epochs", dest="classifier_epochs", type=int, default=None)
    parser.add_argument("--segmentation-minutes", dest="segmentation_minutes", type=float, default=None)
    parser.add_argument("--segmentation-epochs", dest="segmentation_epochs", type=int, default=None)
    parser.add_argument("--unet-width", dest="unet_width", type=int, default=16, help="U-Net base channels")
    parser.add_argument("--limit-batches", dest="limit_batches", default=None, help="trainer batch limits (smoke)")
    parser.add_argument("--speed-images", dest="speed_images", type=int, default=8)
    parser.add_argument("--speed-runs", dest="speed_runs", type=int, default=3)
    parser.add_argument("--speed-threads", dest="speed_threads", type=int, default=usable_cores(),
                        help="torch threads while timing the generators")
    parser.add_argument("--no-write", dest="no_write", action="store_true", help="print only, leave RESULTS.md")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
