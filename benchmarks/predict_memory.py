"""Peak memory and speed of full-resolution tiled ``crackseg predict`` on a 6000 x 4000 synthetic photo.

    python -m benchmarks.predict_memory [--size 6000 4000] [--tiles 512:4 1024:1] [--overlap 64]
        [--base-channels 16] [--depth 4] [--device cpu] [--train-steps 300] [--runs 3] [--write]
        [--workdir runs/bench_predict_memory]

A synthetic crack image of ``--size`` (width height, :func:`crackseg.data.synthetic.generate_sample`) and a UNet
checkpoint (``--train-steps`` steps on small synthetic crack images, enough for a crack-like mask: an untrained
net marks nearly every pixel, the writer's and quantifier's worst case) are made once in ``--workdir``.
Then, per ``tile:tile batch`` pair, ``crackseg predict`` runs in a child process
with tiling (``configs/predict/tiled.yaml``), the prediction writer (mask, map, overlay PNGs, scores and crack
CSVs) and no progress bar; the child's own peak resident set size comes from ``os.wait4`` (the ``ru_maxrss`` that
``getrusage(RUSAGE_CHILDREN)`` reports, for that child alone). Wall time covers the whole child: Python and torch
start-up, checkpoint loading, reading the image, tiled inference, writing and crack quantification. Prints a
markdown table of the medians over ``--runs`` runs (``--write``: also the section ``predict_memory`` of
RESULTS.md); the target of issue 7 is a peak below 3 GB (3072 MB). The peak is about 0.85 GB of imported
libraries (torch, Lightning), 4 + 4 bytes per image pixel (float32 image and map) and the activations of one tile
batch (UNet-16: ~0.6 GB for 4 tiles of 512², ~2.4 GB for 4 of 1024²): ``predict_tile_batch_size`` sets it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from benchmarks.common import commit, machine, write_section  # noqa: E402
from crackseg.inference.tiling import TileSettings, tile_count  # noqa: E402

TINY_DATA = ["--data", "SyntheticCracksDataModule", "--data.init_args.n_train", "32", "--data.init_args.n_val", "2",
             "--data.init_args.n_test", "2", "--data.init_args.generate_size", "[128, 128]",
             "--data.init_args.crop_size", "128", "--data.init_args.batch_size", "4"]


def make_image(path: Path, width: int, height: int) -> None:
    """A synthetic crack photo of ``width`` x ``height`` (cached)."""
    if path.is_file():
        return
    from crackseg.data.io import write_png
    from crackseg.data.synthetic import generate_sample

    image, _ = generate_sample(0, size=(height, width), width_range=(2.0, 12.0))
    write_png(path, image)


def make_checkpoint(path: Path, workdir: Path, model: list[str], steps: int) -> None:
    """A UNet checkpoint after ``steps`` training steps on synthetic cracks (cached)."""
    if path.is_file():
        return
    from crackseg.cli import main

    cli = main(["fit", "--data.init_args.root", str(workdir / "tiny_data"), *TINY_DATA, *model,
                "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
                "--model.init_args.lr", "0.01", "--trainer.enable_checkpointing", "false",
                "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir)])
    cli.trainer.save_checkpoint(path)


def cuda_peak_mb(log: Path) -> float | None:
    """The child's peak allocated CUDA memory (MB) it printed last, None without a GPU."""
    found = re.findall(r"CUDA_PEAK_MB (\S+)", log.read_text(errors="replace"))
    return float(found[-1]) if found and float(found[-1]) >= 0 else None


def run_predict(args: list[str], log: Path) -> tuple[float, float, int]:
    """Run ``crackseg predict args`` in a child process: (wall seconds, peak RSS in MB, exit status)."""
    command = [sys.executable, "-c", "import sys, torch; from crackseg.cli import main; main(sys.argv[1:]); "
               "print('CUDA_PEAK_MB', torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else -1)",
               "predict", *args]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in kB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(6000, 4000), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--tiles", nargs="+", default=["512:4", "1024:1"],
                        help="tile side:tiles per batch (the batch's activations dominate the peak)")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="trainer accelerator: cpu or gpu")
    parser.add_argument("--precision", default="32-true", help="trainer precision, e.g. bf16-mixed on a GPU")
    parser.add_argument("--threshold", type=float, default=None,
                        help="pixel threshold (default: the checkpoint's, 0.5: with one training step nearly every "
                             "pixel is a crack, the writer's and quantifier's worst case)")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps of the checkpoint")
    parser.add_argument("--runs", type=int, default=3, help="runs per tile setting (medians are reported)")
    parser.add_argument("--write", action="store_true", help="write the table to benchmarks/RESULTS.md")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_predict_memory")
    opts = parser.parse_args(argv)
    workdir = opts.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    width, height = opts.size
    image = workdir / f"synthetic_{width}x{height}.png"
    model = ["--model", "UNet", "--model.init_args.base_channels", str(opts.base_channels),
             "--model.init_args.depth", str(opts.depth)]
    ckpt = workdir / f"unet_c{opts.base_channels}_d{opts.depth}_s{opts.train_steps}.ckpt"
    print(f"preparing {image.name} and {ckpt.name} in {workdir} ...", flush=True)
    make_image(image, width, height)
    make_checkpoint(ckpt, workdir, model, opts.train_steps)

    rows = []
    for spec in opts.tiles:
        tile, tile_batch = (int(v) for v in spec.split(":"))
        out = workdir / f"out_tile{tile}"
        args = ["--data.init_args.root", str(workdir / "tiny_data"), *TINY_DATA, *model,
                "--config", str(REPO / "configs/predict/tiled.yaml"),
                "--model.init_args.predict_tile_size", str(tile),
                "--model.init_args.predict_tile_overlap", str(opts.overlap),
                "--model.init_args.predict_tile_batch_size", str(tile_batch),
                "--trainer.accelerator", opts.device, "--trainer.devices", "1", "--trainer.precision", opts.precision,
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--trainer.callbacks+=PredictionWriter", f"--trainer.callbacks.output_dir={out}",
                "--trainer.callbacks.mm_per_pixel=0.5",
                "--data.init_args.predict_path", str(image), "--ckpt_path", str(ckpt)]
        if opts.threshold is not None:
            args += ["--model.init_args.threshold", str(opts.threshold)]
        print(f"tile {tile}: running crackseg predict ...", flush=True)
        runs = []
        for _ in range(opts.runs):
            seconds, peak_mb, status = run_predict(args, workdir / f"predict_tile{tile}.log")
            if status != 0:
                raise SystemExit(f"crackseg predict failed (exit {status}); see {workdir / f'predict_tile{tile}.log'}")
            runs.append((seconds, peak_mb, cuda_peak_mb(workdir / f"predict_tile{tile}.log")))
        seconds = statistics.median(r[0] for r in runs)
        peak_mb = statistics.median(r[1] for r in runs)
        worst_mb = max(r[1] for r in runs)
        mask = out / "predict" / "masks" / f"{image.stem}.png"
        with Image.open(mask) as handle:
            written = handle.size
        if written != (width, height):
            raise SystemExit(f"mask {mask} is {written}, expected {(width, height)}")
        with open(out / "predict" / "cracks.csv", newline="") as handle:
            cracks = sum(1 for _ in csv.DictReader(handle))
        n_tiles = tile_count(height, width, TileSettings(tile, opts.overlap, tile_batch))
        gpu = [r[2] for r in runs if r[2] is not None]
        rows.append((tile, tile_batch, n_tiles, seconds, peak_mb, worst_mb, cracks, max(gpu) if gpu else None))

    lines = [f"{machine()}; commit {commit()}; date {dt.date.today()}; UNet base_channels {opts.base_channels} "
             f"depth {opts.depth} trained {opts.train_steps} steps, {opts.device} {opts.precision}, overlap "
             f"{opts.overlap} px; medians of {opts.runs} runs",
             "",
             "| image (W x H) | tile | tile batch | tiles | wall time (s) | peak RSS (MB), median / worst | tiles/s "
             "| cracks in CSV | < 3 GB | peak GPU memory (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for tile, tile_batch, n_tiles, seconds, peak_mb, worst_mb, cracks, gpu_mb in rows:
        lines.append(f"| {width} x {height} | {tile} | {tile_batch} | {n_tiles} | {seconds:.1f} | {peak_mb:.0f} / "
                     f"{worst_mb:.0f} | {n_tiles / seconds:.2f} | {cracks} | {'yes' if worst_mb < 3072 else 'NO'} | "
                     f"{'–' if gpu_mb is None else f'{gpu_mb:.0f}'} |")
    lines += ["", "Wall time and tiles/s include process start-up, image reading, PNG writing and crack "
              "quantification; peak RSS is the child process's own (``os.wait4``)."]
    text = "\n".join(lines)
    print("\n" + text)
    if opts.write:
        write_section("predict_memory", "## Full-resolution tiled prediction: peak memory and speed\n"
                      f"Command: `python -m benchmarks.predict_memory {' '.join(argv or sys.argv[1:])}`\n\n" + text)


if __name__ == "__main__":
    main()
