"""Unsupervised anomaly detection on the real magnetic tile sample: SkipAE, DFR (and VAEGradCAM when available).

    python -m benchmarks.anomaly_magnetic_tile --epochs 30
    python -m benchmarks.anomaly_magnetic_tile --methods SkipAE DFR --minutes 40
    python -m benchmarks.anomaly_magnetic_tile --epochs 1 --limit-train-batches 5 --no-write   # smoke test

Each method trains with its ``configs/<method>/magnetic_tile.yaml`` (SkipAE and DFR: EfficientNet-Lite0
extractor with the offline ImageNet weights, Adam lr 1e-4, 256² inputs) on the same split (seeded: 80 % of
MT_Free for training / validation, 20 % of MT_Free + every defective image for testing) and is tested
with its best checkpoint and the MeanStdThreshold thresholds. Reported: image AUROC, pixel AUROC, AUPRO
(FPR ≤ 0.3), and the inference time per image at 256² with batch 1 and batch 32 (median of 5 timed runs
after warm-up, eval mode, ``torch.no_grad``, forward + anomaly map + image score), beside the times Tang
et al. 2022 (Table 4) report on an RTX 2080 Ti with their extractors (ResNeXt101 / VGG19). Writes the
section ``anomaly_magnetic_tile`` of ``benchmarks/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from pathlib import Path

import torch
import yaml

import crackseg.lightning_modules as modules
from benchmarks.common import REPO, SHARED_DATA, RunResult, commit, fit_and_test, machine, usable_cores, write_section
from benchmarks.timing import median_ms_per_image

CONFIGS = {"SkipAE": "configs/skipae/magnetic_tile.yaml", "DFR": "configs/dfr/magnetic_tile.yaml",
           "VAEGradCAM": "configs/vae_gradcam/magnetic_tile.yaml"}
#: Tang et al. 2022, Table 4: inference time (ms) on an RTX 2080 Ti (SkipAE: ResNeXt101 blocks 1-3; DFR: VGG19).
PAPER_MS = {"SkipAE": 11.2, "DFR": 10.1}


def available_methods() -> list[str]:
    """The methods of :data:`CONFIGS` whose LightningModule ``crackseg.lightning_modules`` exports."""
    return [name for name in CONFIGS if hasattr(modules, name) and (REPO / CONFIGS[name]).is_file()]


def inference_ms(checkpoint: Path, class_name: str, batch_size: int, runs: int = 5, warmup: int = 2,
                 size: int = 256, device: str = "cpu") -> float:
    """Median milliseconds per image of forward + anomaly map + image score for a (batch_size, 3, size, size) batch."""
    cls = getattr(modules, class_name)
    # the checkpoint holds the extractor's weights: no need to fetch them again
    kwargs = {"weights": None} if issubclass(cls, modules.FeatureReconstruction) else {}
    model = cls.load_from_checkpoint(checkpoint, map_location=device, weights_only=True, **kwargs)
    model.eval()
    images = torch.rand(batch_size, 3, size, size, device=device)
    # float(...) waits for the device
    return median_ms_per_image(lambda: float(model.evaluate_batch({"image": images})["score"].sum()),
                               batch_size, runs, warmup, device)


def backbone_of(config: Path) -> str:
    """Short description of a config's feature extractor."""
    args = yaml.safe_load(config.read_text())["model"]["init_args"]
    if "backbone" not in args:
        return "ResNet-18 stages (random init)"
    blocks = args.get("blocks")
    where = f"blocks {blocks}" if blocks is not None else "layers " + ", ".join(args.get("layers") or [])
    return f"{args['backbone']} {where} ({args.get('weights')} weights)"


def fmt(value: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{scale * value:.{digits}f}"


def timing_only(args: argparse.Namespace) -> str:
    """Re-measure the inference times of checkpoints an earlier run left in ``--workdir`` (on a quiet machine)."""
    torch.set_num_threads(usable_cores())
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    rows = []
    for name in args.methods:
        checkpoint = Path(args.workdir) / name / "checkpoints" / "best.ckpt"
        if not checkpoint.is_file():
            raise SystemExit(f"no checkpoint {checkpoint}: run the benchmark without --timing-only first")
        ms = {bs: inference_ms(checkpoint, name, bs, runs=args.timing_runs, device=device) for bs in (1, 32)}
        paper = f"{PAPER_MS[name]:.1f}" if name in PAPER_MS else "–"
        rows.append(f"| {name} | {backbone_of(REPO / CONFIGS[name])} | {ms[1]:.1f} | {ms[32]:.1f} | {paper} |")
        print(rows[-1], flush=True)
    text = f"""## Inference time of the unsupervised methods at 256² (magnetic tile checkpoints)

Command: `python -m benchmarks.anomaly_magnetic_tile --timing-only --methods {' '.join(args.methods)}`; date
{dt.date.today().isoformat()}; machine: {machine()} ({device}); commit {commit()}. Forward + anomaly map + image score,
eval mode, `torch.no_grad`, random 256² inputs, median of {args.timing_runs} timed runs after 2 warm-up runs, with
{usable_cores()} usable core(s) and as many torch threads. Paper: Tang et al. 2022, Table 4, RTX 2080 Ti,
ResNeXt101 (SkipAE) / VGG19 (DFR).

| method | extractor | ms/img batch 1 | ms/img batch 32 | paper ms/img |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    if not args.no_write:
        write_section("anomaly_magnetic_tile_timing", text)
    print(text)
    return text


def run(args: argparse.Namespace) -> str:
    if args.timing_only:
        return timing_only(args)
    root = Path(args.root)
    if not root.is_dir():
        raise SystemExit(f"magnetic tile data not found at {root} (give --root)")
    missing = [m for m in args.methods if m not in available_methods()]
    methods = [m for m in args.methods if m not in missing]
    if not methods:
        raise SystemExit(f"none of {args.methods} is available (crackseg.lightning_modules exports "
                         f"{available_methods()})")
    # AUPRO for every method (the anomaly-score methods compute it at test anyway; VAEGradCAM's maps are in [0, 1])
    overrides = ["--data.init_args.root", str(root), f"--trainer.accelerator={args.accelerator}",
                 "--model.init_args.aupro=true"]
    for option in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = getattr(args, option)
        if value is not None:
            overrides.append(f"--trainer.{option}={value}")
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    rows, results = [], {}
    for name in methods:
        config = REPO / CONFIGS[name]
        epochs = args.epochs or int(yaml.safe_load(config.read_text())["trainer"]["max_epochs"])
        own = [o.split("=", 1)[1] for o in args.override if o.split("=", 1)[0] == name]
        result: RunResult = fit_and_test(config, Path(args.workdir) / name, overrides + own,
                                         max_time_minutes=args.minutes, max_epochs=epochs)
        checkpoint = Path(args.workdir) / name / "checkpoints" / "best.ckpt"
        torch.set_num_threads(usable_cores())
        ms = {bs: inference_ms(checkpoint, name, bs, runs=args.timing_runs, device=device) for bs in (1, 32)}
        results[name] = result
        m = result.metrics
        hparams = torch.load(checkpoint, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        extra = f" (d = {hparams['latent_dim']})" if name == "DFR" and hparams.get("latent_dim") else ""
        paper = f"{PAPER_MS[name]:.1f}" if name in PAPER_MS else "–"
        rows.append(f"| {name}{extra} | {backbone_of(config)} | {fmt(m.get('test/image_auroc'))} | "
                    f"{fmt(m.get('test/auroc'))} | {fmt(m.get('test/aupro'))} | {fmt(m.get('test/f1'))} | "
                    f"{result.epochs} ({result.steps}) | {result.train_seconds / 60:.1f} | "
                    f"{result.test_seconds / 60:.1f} | {ms[1]:.1f} | {ms[32]:.1f} | {paper} |")
        print(rows[-1], flush=True)
    first = next(iter(results.values()))
    limits = ", ".join(o[2:] for o in overrides if o.startswith("--trainer.limit")) or "none"
    command = " ".join(["python -m benchmarks.anomaly_magnetic_tile", *[f"--{k.replace('_', '-')} {v}" for k, v in (
        ("epochs", args.epochs), ("minutes", args.minutes)) if v is not None], "--methods", *methods,
        *[f"--override {o}" for o in args.override]])
    note = f" Not run: {', '.join(missing)} (not exported by crackseg.lightning_modules)." if missing else ""
    text = f"""## Unsupervised anomaly detection on magnetic tile (real data)

Command: `{command}`; date {dt.date.today().isoformat()}; machine: {machine()}; commit {commit()};
batch limits: {limits}.{note}

Each method: its `configs/<method>/magnetic_tile.yaml`, trained on defect-free images only
({first.n_train} MT_Free training images, 256²), tested with the best checkpoint on {first.n_test} images (20 % of
MT_Free held out + all 5 defect classes, with masks). Pixel F1 at the MeanStdThreshold pixel threshold (mean + 1 std
of defect-free validation pixels). AUPRO integrates the per-region overlap up to FPR 0.3. Inference: ms per 256²
image, forward + anomaly map + image score, eval mode, `torch.no_grad`, median of {args.timing_runs} timed runs after
warm-up, batch 1 / batch 32, on this machine ({device}). Paper: Tang et al. 2022, Table 4, RTX 2080 Ti with
ResNeXt101 (SkipAE) / VGG19 (DFR) extractors; our SkipAE / DFR use EfficientNet-Lite0 with the offline weights, so
the times are not comparable one to one.

| method | extractor | image AUROC % | pixel AUROC % | AUPRO % | pixel F1 % | epochs (steps) | train min | \
test min | ms/img b1 | ms/img b32 | paper ms |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    if not args.no_write:
        write_section("anomaly_magnetic_tile", text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=available_methods(), choices=sorted(CONFIGS),
                        help="methods to run (default: every available one)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per method (default: the config's, 150)")
    parser.add_argument("--minutes", type=float, default=None, help="training time limit per method")
    parser.add_argument("--root", default=str(SHARED_DATA / "magnetic_tile"), help="magnetic tile folder")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_anomaly_magnetic_tile"))
    parser.add_argument("--accelerator", default="cpu", help="trainer accelerator (cpu, gpu, auto)")
    parser.add_argument("--limit-train-batches", dest="limit_train_batches", default=None)
    parser.add_argument("--limit-val-batches", dest="limit_val_batches", default=None)
    parser.add_argument("--limit-test-batches", dest="limit_test_batches", default=None)
    parser.add_argument("--override", action="append", default=[], metavar="METHOD=--ARG=VALUE",
                        help="a CLI override for one method only, e.g. VAEGradCAM=--model.init_args.warmup_epochs=5")
    parser.add_argument("--timing-runs", dest="timing_runs", type=int, default=5)
    parser.add_argument("--timing-only", dest="timing_only", action="store_true",
                        help="only re-measure inference times of the checkpoints in --workdir")
    parser.add_argument("--no-write", dest="no_write", action="store_true", help="print only, leave RESULTS.md")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
