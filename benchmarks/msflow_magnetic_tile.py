"""MSFlow without / with CutPaste / with Poisson extractor pre-training on the real magnetic tile sample (Table I).

    python -m benchmarks.msflow_magnetic_tile --pretrain-minutes 10 --minutes 8
    python -m benchmarks.msflow_magnetic_tile --epochs 1 --limit-train-batches 2 --no-write   # smoke test

The three columns of Marc et al. (2024), Table I, on the magnetic tile sample with
``configs/msflow/magnetic_tile.yaml``, composed with ``pretrain_cutpaste.yaml`` /
``pretrain_poisson_from_deepcrack.yaml`` and then ``cutpaste.yaml`` / ``poisson.yaml`` (EfficientNet-Lite0
stages 1–3 with the offline ImageNet weights, 256² inputs, batch 8):

1. MSFlow on the ImageNet extractor (lr 1e-4);
2. CutPaste pre-training of the extractor (U-Net, BCE), then MSFlow on it (lr 1e-6, §III-B1);
3. Poisson pre-training with the real DeepCrack crack regions as sources, then MSFlow (lr 1e-6).

Every MSFlow run trains on the same MT_Free split and is tested with its best (lowest validation NLL)
checkpoint on the held-out MT_Free images plus every defective image: pixel AUROC (additive map), AUPRO
(multiplicative map, FPR ≤ 0.3) and image AUROC. Training throughput: images per second of pure training
steps (forward + backward + optimiser step on a random 256² batch of 8, median of timed steps after
warm-up), for MSFlow and for the pre-training U-Net, on this machine. Writes the section
``msflow_magnetic_tile`` of ``benchmarks/RESULTS.md`` unless ``--no-write``.
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

from benchmarks.common import REPO, SHARED_DATA, RunResult, commit, fit_and_test, machine, usable_cores, write_section
from crackseg.lightning_modules import ExtractorPretraining, MSFlow

CONFIGS = REPO / "configs" / "msflow"
#: the pre-training fragment of each variant
PRETRAIN = {"cutpaste": "cutpaste", "poisson": "poisson_from_deepcrack"}
#: Marc et al. 2024, Table I: pixel AUROC / AUPRO (%) without a task, with CutPaste, with Poisson pre-training.
PAPER = {"Wood": ((97.08, 98.40), (97.29, 98.12), (97.40, 98.34)),
         "Tile": ((96.25, 95.36), (98.75, 98.81), (98.72, 98.77)),
         "Crack500": ((75.68, 60.39), (88.22, 70.81), (88.17, 70.49))}
VARIANTS = ("none", "cutpaste", "poisson")


def train_images_per_second(module: torch.nn.Module, batch_size: int = 8, size: int = 256, steps: int = 5,
                            warmup: int = 2) -> float:
    """Median images/s of training steps (forward, loss, backward, Adam step) on a random batch."""
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-6)
    batch = {"image": torch.rand(batch_size, 3, size, size),
             "mask": (torch.rand(batch_size, 1, size, size) > 0.9).float(),
             "has_mask": torch.ones(batch_size, dtype=torch.bool), "label": torch.ones(batch_size, dtype=torch.long)}
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = module.compute_loss(module(batch["image"]), batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def config_epochs(config: Path) -> int:
    return int(yaml.safe_load(config.read_text())["trainer"]["max_epochs"])


def fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def run(args: argparse.Namespace) -> str:
    root, deepcrack = Path(args.root), Path(args.deepcrack)
    for path, what in ((root, "magnetic tile"), (deepcrack, "DeepCrack (Poisson sources)")):
        if not path.is_dir():
            raise SystemExit(f"{what} data not found at {path}")
    workdir = Path(args.workdir)
    data = ["--data.init_args.root", str(root), f"--trainer.accelerator={args.accelerator}"]
    for option in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if getattr(args, option) is not None:
            data.append(f"--trainer.{option}={getattr(args, option)}")
    results: dict[str, RunResult] = {}
    pretrain: dict[str, RunResult] = {}
    for variant in args.variants:
        overrides = list(data)
        if variant != "none":
            pre_overrides = list(data)
            if variant == "poisson":
                source_root = "--data.init_args.synthetic_anomalies.init_args.source.init_args.root"
                pre_overrides += [source_root, str(deepcrack)]
            pre_config = [CONFIGS / "magnetic_tile.yaml", CONFIGS / f"pretrain_{PRETRAIN[variant]}.yaml"]
            last = workdir / f"pretrain_{variant}" / "checkpoints" / "last.ckpt"
            if not (args.reuse_pretraining and last.is_file()):
                pretrain[variant] = fit_and_test(pre_config, workdir / f"pretrain_{variant}", pre_overrides,
                                                 max_time_minutes=args.pretrain_minutes,
                                                 max_epochs=args.pretrain_epochs or config_epochs(pre_config[-1]),
                                                 test_checkpoint=None)
            overrides += ["--model.init_args.extractor_checkpoint", str(last)]
            if args.pretrained_lr is not None:
                overrides += ["--model.init_args.lr", str(args.pretrained_lr)]
        config = [CONFIGS / "magnetic_tile.yaml"] + ([] if variant == "none" else [CONFIGS / f"{variant}.yaml"])
        run_dir = workdir / (f"msflow_{variant}" + ("" if args.pretrained_lr is None or variant == "none"
                                                    else f"_lr{args.pretrained_lr:g}"))
        results[variant] = fit_and_test(config, run_dir, overrides, max_time_minutes=args.minutes,
                                        max_epochs=args.epochs or config_epochs(config[0]))
        print(variant, {k: v for k, v in results[variant].metrics.items() if k.startswith("test/")}, flush=True)

    torch.set_num_threads(usable_cores())
    flow_speed = train_images_per_second(MSFlow(backbone="efficientnet_lite0", weights=None,
                                                normalization="symmetric"), steps=args.timing_steps)
    unet_speed = train_images_per_second(ExtractorPretraining(backbone="efficientnet_lite0", weights=None,
                                                              normalization="symmetric"), steps=args.timing_steps)
    rows = []
    names = {"none": "without any task", "cutpaste": "CutPaste anomaly task", "poisson": "Poisson anomaly task"}
    for variant, result in results.items():
        m = result.metrics
        pre = pretrain.get(variant)
        pre_text = (f"{pre.epochs} ({pre.steps}), {pre.train_seconds / 60:.1f} min" if pre
                    else "reused from the earlier run" if variant != "none" else "–")
        i = VARIANTS.index(variant)
        paper = " · ".join(f"{name} {PAPER[name][i][0]:.2f} / {PAPER[name][i][1]:.2f}" for name in PAPER)
        rows.append(f"| {names[variant]} | {fmt(m.get('test/auroc'))} | {fmt(m.get('test/aupro'))} | "
                    f"{fmt(m.get('test/image_auroc'))} | {pre_text} | {result.epochs} ({result.steps}), "
                    f"{result.train_seconds / 60:.1f} min | {paper} |")
    first = next(iter(results.values()))
    budget = (("epochs", args.epochs), ("minutes", args.minutes), ("pretrain_epochs", args.pretrain_epochs),
              ("pretrain_minutes", args.pretrain_minutes), ("pretrained_lr", args.pretrained_lr),
              ("section", args.section if args.section != "msflow_magnetic_tile" else None))
    command = " ".join(["python -m benchmarks.msflow_magnetic_tile",
                        *[f"--{k.replace('_', '-')} {v}" for k, v in budget if v is not None],
                        "--variants", *args.variants, *(["--reuse-pretraining"] if args.reuse_pretraining else [])])
    limits = ", ".join(o[2:] for o in data if o.startswith("--trainer.limit")) or "none"
    lr_text = ("1e-6 (§III-B1)" if args.pretrained_lr is None
               else f"{args.pretrained_lr:g} (the paper: 1e-6; changed to isolate the extractor's effect at this "
               "budget)")
    text = f"""## MSFlow with task-specific extractor pre-training on magnetic tile (real data)

Command: `{command}`; date {dt.date.today().isoformat()}; machine: {machine()}; commit {commit()};
batch limits: {limits}.

Configs `configs/msflow/magnetic_tile.yaml` + `pretrain_cutpaste.yaml` / `pretrain_poisson_from_deepcrack.yaml`,
then + `cutpaste.yaml` / `poisson.yaml`: EfficientNet-Lite0 stages 1–3 with the offline ImageNet
weights (the paper: WideResNet50 stages 1–3), 256² inputs (paper 512²), batch 8, Adam with ×1/3 at 70 % / 90 %
of the epochs; MSFlow lr 1e-4 on the ImageNet extractor and {lr_text} on a pre-trained one.
Pre-training: U-Net over the extractor, BCE, half of the training images get a synthetic anomaly; Poisson
sources = the real DeepCrack crack regions; MSFlow reads the pre-training's last checkpoint. Each MSFlow run:
{first.n_train} MT_Free training images, tested with its best (lowest validation NLL) checkpoint on
{first.n_test} images (20 % of MT_Free held out + all defect classes, with masks). Pixel AUROC on the additive
map, AUPRO (FPR ≤ 0.3) on the multiplicative map, image AUROC on the top-3 % score. Budgets are far below the
paper's (100 MSFlow epochs, 400 pre-training epochs on a V100): smoke-scale figures, not a reproduction. The
paper's columns are for its datasets (MVTec wood, tile and Crack500), not magnetic tile. The 2 cores were shared
with other work (tests, development) during parts of the run, unevenly across the rows.

| extractor | pixel AUROC % | AUPRO % | image AUROC % | pre-training epochs (steps), time | \
MSFlow epochs (steps), time | paper Table I, AUROC / AUPRO % |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Training throughput on this machine (batch 8 of 256², median of {args.timing_steps} steps after warm-up): MSFlow
{flow_speed:.2f} images/s (flows only: the extractor is frozen), pre-training U-Net {unet_speed:.2f} images/s.
"""
    if not args.no_write:
        write_section(args.section, text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--epochs", type=int, default=None, help="MSFlow epochs (default: the config's, 100)")
    parser.add_argument("--minutes", type=float, default=None, help="MSFlow training time limit per run")
    parser.add_argument("--pretrain-epochs", dest="pretrain_epochs", type=int, default=None,
                        help="pre-training epochs (default: the config's, 400)")
    parser.add_argument("--pretrain-minutes", dest="pretrain_minutes", type=float, default=None,
                        help="pre-training time limit per task")
    parser.add_argument("--pretrained-lr", dest="pretrained_lr", type=float, default=None,
                        help="MSFlow lr with a pre-trained extractor (default: the config's, 1e-6 as the paper)")
    parser.add_argument("--reuse-pretraining", dest="reuse_pretraining", action="store_true",
                        help="use the pre-training checkpoints already in --workdir")
    parser.add_argument("--section", default="msflow_magnetic_tile", help="RESULTS.md section to write")
    parser.add_argument("--root", default=str(SHARED_DATA / "magnetic_tile"), help="magnetic tile folder")
    parser.add_argument("--deepcrack", default=str(SHARED_DATA / "deepcrack" / "DeepCrack"),
                        help="DeepCrack folder (Poisson sources)")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_msflow_magnetic_tile"))
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--limit-train-batches", dest="limit_train_batches", default=None)
    parser.add_argument("--limit-val-batches", dest="limit_val_batches", default=None)
    parser.add_argument("--limit-test-batches", dest="limit_test_batches", default=None)
    parser.add_argument("--timing-steps", dest="timing_steps", type=int, default=5)
    parser.add_argument("--no-write", dest="no_write", action="store_true", help="print only, leave RESULTS.md")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
