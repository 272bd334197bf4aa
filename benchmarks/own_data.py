"""A user's own small dataset: pretrained EncoderDecoder (the own-data recipe) against U-Net from scratch.

    python -m benchmarks.own_data --minutes 6                                  # the default rows
    python -m benchmarks.own_data --datasets deepcrack --sizes 10 40 all --models encoder_decoder
    python -m benchmarks.own_data --minutes 0.2 --sizes 10 --rows-limit 2 --no-write   # smoke test

Every row trains on the real samples of ``../shared/data`` for the same wall-clock budget (``--minutes``, fit
including its validations) on this machine, keeps the checkpoint of the best ``val/ods_dataset`` and tests it on
the dataset's own test split (DeepCrack: the official 237 images; CrackForest: the seeded 40 % of its 118
labelled images). ``train_images`` picks a seeded subset of the training split (the validation hold-out, a
seeded 20 %, stays the same for every size, and 10 ⊂ 20 ⊂ 40 ⊂ all).

Models:

- ``encoder_decoder``: ``configs/recipes/own_data.yaml``'s model and augmentation (smp U-Net on the offline
  ImageNet EfficientNet-Lite0, AdamW + warm-up + cosine, BCE + soft IoU);
- ``unet_paper``: U-Net from scratch as König et al. train it (``configs/weakly/unet_fsv_deepcrack.yaml``: SGD
  lr 1e-3 ÷ 10 every 10 epochs, BCE, 8-fold symmetries, jitter and noise);
- ``unet_recipe``: the same U-Net from scratch with the recipe's optimiser, loss and augmentation.

Cross-dataset rows test the ``all`` EncoderDecoder of one dataset on the other's test split, and train one
EncoderDecoder on DeepCrack + CrackForest joined (``JoinedDataModule``, equal shares) tested on both.
Writes the section ``own_data`` of ``benchmarks/RESULTS.md`` after every row unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import REPO, SHARED_DATA, commit, machine, usable_cores, write_section
from crackseg.cli import main as crackseg_main

DATASETS = {
    "deepcrack": ("DeepCrackDataModule", SHARED_DATA / "deepcrack" / "DeepCrack"),
    "crackforest": ("CrackForestDataModule", SHARED_DATA / "cfd"),
}
RECIPE_AUGMENTATION = {"scale_jitter": 0.25, "blur_probability": 0.2, "color_jitter": 0.3, "gamma_jitter": 0.3,
                       "gauss_noise_std": 0.02, "rotate90": True, "rotate_limit": 0.0}
PAPER_AUGMENTATION = {"enumerate_symmetries": True, "rotate_limit": 0.0, "color_jitter": 0.2,
                      "gauss_noise_std": 0.01, "multiplicative_noise": 0.25}
METRICS = ("ods_dataset", "ods", "ois", "ap")


def model_config(name: str, unet_width: int) -> dict[str, Any]:
    """The ``model`` block and the training augmentation of a benchmark model."""
    if name == "encoder_decoder":
        return {"model": {"class_path": "EncoderDecoder"}, "augmentation": RECIPE_AUGMENTATION}
    if name == "unet_paper":
        return {"model": {"class_path": "UNet", "init_args": {"base_channels": unet_width, "lr": 1e-3,
                                                              "weight_decay": 0.0, "lr_schedule": "step"}},
                "augmentation": PAPER_AUGMENTATION}
    if name == "unet_recipe":
        return {"model": {"class_path": "UNet", "init_args": {
            "base_channels": unet_width, "loss": "bce+soft_iou", "optimizer": "adamw", "lr": 1e-3,
            "weight_decay": 1e-4, "lr_schedule": "cosine", "lr_warmup_fraction": 0.05}},
            "augmentation": RECIPE_AUGMENTATION}
    raise ValueError(f"unknown model {name!r}")


def data_config(dataset: str, size: str, augmentation: dict[str, Any]) -> dict[str, Any]:
    cls, root = DATASETS[dataset]
    init: dict[str, Any] = {"root": str(root), **augmentation}
    if size != "all":
        init["train_images"] = int(size)
    return {"class_path": cls, "init_args": init}


def joined_config(augmentation: dict[str, Any]) -> dict[str, Any]:
    sources = [data_config(name, "all", augmentation) for name in DATASETS]
    return {"class_path": "JoinedDataModule", "init_args": {"sources": sources, "names": list(DATASETS)}}


def write_config(workdir: Path, model: dict[str, Any], data: dict[str, Any], val_every: int) -> Path:
    config = {
        "seed_everything": 0,
        "default_callbacks": False,  # only the two below: no map panels or prediction files in timed rows
        "trainer": {
            "default_root_dir": str(workdir), "max_epochs": 100000, "check_val_every_n_epoch": None,
            "val_check_interval": val_every,
            "logger": {"class_path": "CSVLogger", "init_args": {"save_dir": str(workdir)}},
            "enable_progress_bar": False,
            "callbacks": [{"class_path": "ModelCheckpoint", "init_args": {
                "filename": "best", "monitor": "val/ods_dataset", "mode": "max", "save_last": True,
                "enable_version_counter": False}}, {"class_path": "F1Threshold"}]},
        "model": model, "data": data,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _time_limit(minutes: float) -> str:
    seconds = max(1, int(round(minutes * 60)))
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def seconds_per_step(name: str, unet_width: int, steps: int = 4) -> float:
    """Median seconds of one training step (batch 4 of 256², forward, backward, AdamW) of a benchmark model."""
    from crackseg.lightning_modules import EncoderDecoder, UNet
    from crackseg.losses import combined_loss

    model = EncoderDecoder(weights=None) if name == "encoder_decoder" else UNet(base_channels=unet_width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, masks = torch.rand(4, 3, 256, 256), (torch.rand(4, 1, 256, 256) > 0.97).float()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = combined_loss(model(images)["logits"], masks, ("bce",))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def fit(config: Path, minutes: float, limit_val: int | None, max_steps: int) -> dict[str, Any]:
    """``crackseg fit`` for ``max_steps`` (the schedule's horizon: cosine and warm-up need one), stopped at
    ``minutes`` whichever comes first."""
    args = ["fit", "--config", str(REPO / "configs/trainer/cpu.yaml"), "--config", str(config),
            f"--trainer.max_time={_time_limit(minutes)}", f"--trainer.max_steps={max_steps}"]
    if limit_val:
        args.append(f"--trainer.limit_val_batches={limit_val}")
    start = time.perf_counter()
    cli = crackseg_main(args)
    return {"seconds": time.perf_counter() - start, "steps": cli.trainer.global_step,
            "n_train": sum(len(d) // getattr(d, "variants", 1) for d in _train_sets(cli.datamodule))}


def _train_sets(datamodule: Any) -> list[Any]:
    sources = getattr(datamodule, "sources", None) or [datamodule]
    return [s.datasets["train"] for s in sources]


def test(config: Path, checkpoint: Path, data: dict[str, Any] | None = None) -> dict[str, float]:
    """``crackseg test`` of ``checkpoint``; ``data`` replaces the config's datamodule (cross-dataset)."""
    if data is not None:
        cfg = yaml.safe_load(config.read_text())
        cfg["data"] = data
        config = config.with_name(f"test_{data['class_path']}.yaml")
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cli = crackseg_main(["test", "--config", str(REPO / "configs/trainer/cpu.yaml"), "--config", str(config),
                         "--ckpt_path", str(checkpoint)])
    return {k.removeprefix("test/"): float(v) for k, v in cli.trainer.callback_metrics.items()
            if k.startswith("test/")}


def inference_ms(model_names: list[str], unet_width: int, runs: int) -> dict[str, float]:
    """Median ms of one 512² image through each model (eval, no grad, batch 1)."""
    from crackseg.lightning_modules import EncoderDecoder, UNet

    out = {}
    for name in model_names:
        model = EncoderDecoder() if name == "encoder_decoder" else UNet(base_channels=unet_width)
        model.eval()
        x = torch.rand(1, 3, 512, 512)
        with torch.no_grad():
            model(x)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                model(x)
                times.append(1000 * (time.perf_counter() - start))
        out[name] = statistics.median(times)
    return out


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(args: argparse.Namespace, rows: list[dict[str, Any]], cross: list[dict[str, Any]],
           speed: dict[str, float]) -> str:
    lines = [f"## own_data — pretrained EncoderDecoder vs U-Net from scratch on few labelled images "
             f"({dt.date.today()}, commit {commit()})", "",
             f"Machine: {machine()}. Budget: {args.minutes:g} wall-clock minutes of `fit` per row (validations "
             f"included), as training steps from a speed probe ({getattr(args, 'budget_note', '')}; the schedules "
             f"run over them; the time limit stops a row first if it is slower); {args.val_every_ed} / "
             f"{args.val_every_unet} steps between validations for EncoderDecoder / U-Net"
             f"{f' on {args.limit_val} validation images' if args.limit_val else ''}. Batch 4 of 256² crops, "
             f"best `val/ods_dataset` checkpoint tested on the full test split. U-Net base channels: "
             f"{args.unet_width} (the paper: 64). `python -m benchmarks.own_data {' '.join(args.argv)}`.", "",
             "| dataset | train images | model | steps | test ods_dataset | ODS | OIS | AP |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        m = row["metrics"]
        lines.append(f"| {row['dataset']} | {row['n_train']} | {row['model']} | {row['steps']} | "
                     + " | ".join(fmt(m.get(k)) for k in METRICS) + " |")
    if cross:
        lines += ["", "Cross-dataset (EncoderDecoder, all training images; ods_dataset on each test split; "
                  "relative = against in-domain training on that test split):", "",
                  "| trained on | tested on | test ods_dataset | in-domain | relative |", "|---|---|---|---|---|"]
        for row in cross:
            rel = None if not row.get("in_domain") else row["ods_dataset"] / row["in_domain"]
            lines.append(f"| {row['train']} | {row['test']} | {fmt(row['ods_dataset'])} | "
                         f"{fmt(row.get('in_domain'))} | {'–' if rel is None else f'{100 * rel:.0f} %'} |")
    if speed:
        lines += ["", "Inference, one 512² image (ms, median of "
                  f"{args.speed_runs}, {usable_cores()} threads): "
                  + ", ".join(f"{name} {ms:.0f}" for name, ms in speed.items())]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(usable_cores())
    workdir = Path(args.workdir)
    rows: list[dict[str, Any]] = []
    cross: list[dict[str, Any]] = []
    speed: dict[str, float] = {}
    baseline_sizes = args.baseline_sizes or args.sizes
    plan = [(d, s, m) for s in args.sizes for d in args.datasets for m in args.models
            if m == "encoder_decoder" or s in baseline_sizes]
    if args.rows_limit:
        plan = plan[:args.rows_limit]

    def flush() -> str:
        text = render(args, rows, cross, speed)
        if not args.no_write:
            write_section(args.section, text)
        print(text, flush=True)
        return text

    if args.speed_runs:
        speed = inference_ms(args.models, args.unet_width, args.speed_runs)
    step_seconds = {name: seconds_per_step(name, args.unet_width) for name in dict.fromkeys(m for _, _, m in plan)}
    budget_steps = {name: max(10, int(args.minutes * 60 * args.train_share / s)) for name, s in step_seconds.items()}
    args.budget_note = ", ".join(f"{n} {s:.2f} s/step → {budget_steps[n]} steps" for n, s in step_seconds.items())
    best: dict[str, Path] = {}
    in_domain: dict[str, float | None] = {}
    for dataset, size, name in plan:
        spec = model_config(name, args.unet_width)
        run_dir = workdir / f"{dataset}_{size}_{name}"
        val_every = args.val_every_ed if name == "encoder_decoder" else args.val_every_unet
        config = write_config(run_dir, spec["model"], data_config(dataset, size, spec["augmentation"]), val_every)
        info = fit(config, args.minutes, args.limit_val, budget_steps[name])
        checkpoint = run_dir / "checkpoints" / "best.ckpt"
        metrics = test(config, checkpoint)
        rows.append({"dataset": dataset, "n_train": info["n_train"], "model": name, "steps": info["steps"],
                     "metrics": metrics})
        if size == "all" and name == "encoder_decoder":
            best[dataset] = config
            in_domain[dataset] = metrics.get("ods_dataset")
        flush()
    if args.cross and len(best) == len(DATASETS):
        for train, config in best.items():
            for other in DATASETS:
                if other != train:
                    data = data_config(other, "all", {})
                    metrics = test(config, config.parent / "checkpoints" / "best.ckpt", data)
                    cross.append({"train": train, "test": other, "ods_dataset": metrics.get("ods_dataset"),
                                  "in_domain": in_domain.get(other)})
        flush()
        run_dir = workdir / "joined_all_encoder_decoder"
        spec = model_config("encoder_decoder", args.unet_width)
        config = write_config(run_dir, spec["model"], joined_config(spec["augmentation"]), args.val_every_ed)
        fit(config, args.minutes, args.limit_val, budget_steps["encoder_decoder"])
        metrics = test(config, run_dir / "checkpoints" / "best.ckpt")
        for other in DATASETS:
            cross.append({"train": "joined (DeepCrack + CrackForest)", "test": other,
                          "ods_dataset": metrics.get(f"{other}/ods_dataset"), "in_domain": in_domain.get(other)})
    return flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_own_data"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--sizes", nargs="+", default=["10", "20", "40", "all"],
                        help="training images per row: integers or 'all'")
    parser.add_argument("--models", nargs="+", default=["encoder_decoder", "unet_paper", "unet_recipe"],
                        choices=["encoder_decoder", "unet_paper", "unet_recipe"])
    parser.add_argument("--baseline-sizes", dest="baseline_sizes", nargs="+", default=None,
                        help="sizes at which the U-Net rows run (default: every size)")
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock fit budget per row")
    parser.add_argument("--train-share", dest="train_share", type=float, default=0.8,
                        help="share of --minutes planned for training steps (the rest: validations); the step "
                             "budget = minutes x share / measured seconds per step, the schedules' horizon")
    parser.add_argument("--unet-width", dest="unet_width", type=int, default=64, help="U-Net base channels")
    parser.add_argument("--val-every-ed", dest="val_every_ed", type=int, default=60,
                        help="training steps between validations, EncoderDecoder")
    parser.add_argument("--val-every-unet", dest="val_every_unet", type=int, default=15,
                        help="training steps between validations, U-Net (slower steps)")
    parser.add_argument("--limit-val", dest="limit_val", type=int, default=None, help="validation images per check")
    parser.add_argument("--no-cross", dest="cross", action="store_false", help="skip the cross-dataset rows")
    parser.add_argument("--rows-limit", dest="rows_limit", type=int, default=None, help="first N rows only (smoke)")
    parser.add_argument("--speed-runs", dest="speed_runs", type=int, default=5)
    parser.add_argument("--section", default="own_data")
    parser.add_argument("--no-write", dest="no_write", action="store_true")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    run(args)


if __name__ == "__main__":
    main()
