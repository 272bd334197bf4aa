"""Shared pieces of the benchmark scripts: one training + test run through the CLI, RESULTS.md sections."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from crackseg.cli import main

REPO = Path(__file__).resolve().parents[1]
#: where the scripts write their sections; ``CRACKSEG_RESULTS`` redirects them (``gpu_check.sh --dry-run``)
RESULTS = Path(os.environ.get("CRACKSEG_RESULTS") or REPO / "benchmarks" / "RESULTS.md")
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass
class RunResult:
    """Figures of one fit + test run."""

    metrics: dict[str, float]
    epochs: int
    steps: int
    batch_size: int
    n_train: int
    n_test: int
    train_seconds: float
    test_seconds: float
    out_dir: Path

    @property
    def train_images_per_second(self) -> float:
        return self.n_train * max(self.epochs, 1) / self.train_seconds

    @property
    def test_ms_per_image(self) -> float:
        return 1000 * self.test_seconds / max(self.n_test, 1)


def usable_cores() -> int:
    """CPU cores this process may run on (``taskset`` / cgroup affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> str:
    """One line describing where the run happened."""
    cores = usable_cores()
    pinned = f" (this run pinned to {cores})" if cores != (os.cpu_count() or cores) else ""
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores{pinned}, "
            f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, "
            f"torch {torch.__version__}")


def commit() -> str:
    """Short hash of the checked-out commit."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fit_and_test(config: Path | Sequence[Path], workdir: Path, overrides: list[str],
                 max_time_minutes: float | None = None, max_epochs: int | None = None,
                 test_checkpoint: str | None = "best.ckpt",
                 trainer_config: str | Path = "configs/trainer/cpu.yaml") -> RunResult:
    """``crackseg fit`` then ``crackseg test`` of a config (or a dataset config and its fragments, in order)
    with the run's folder at ``workdir`` (checkpoints and predictions follow it).

    ``trainer_config`` is the trainer fragment (relative to the repository), e.g. ``configs/trainer/gpu.yaml``.

    ``test_checkpoint`` names the checkpoint tested (in ``workdir/checkpoints``); None skips the test.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir, out_dir = workdir / "checkpoints", workdir / "predictions"
    configs = [config] if isinstance(config, (str, Path)) else list(config)
    common = ["--config", str(REPO / trainer_config), *(arg for c in configs for arg in ("--config", str(c))),
              *overrides, f"--trainer.default_root_dir={workdir}", "--trainer.logger=CSVLogger",
              f"--trainer.logger.save_dir={workdir}", "--trainer.enable_progress_bar=false"]
    limits = [f"--trainer.max_epochs={max_epochs or 100000}"]
    if max_time_minutes is not None:  # DD:HH:MM:SS, to the second (fractions of a minute allowed)
        seconds = max(1, int(round(max_time_minutes * 60)))
        limits.append(f"--trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    torch.set_num_threads(usable_cores())
    start = time.perf_counter()
    cli = main(["fit", *common, *limits])
    train_seconds = time.perf_counter() - start
    epochs, steps = cli.trainer.current_epoch, cli.trainer.global_step
    n_train, batch_size = len(cli.datamodule.datasets["train"]), cli.datamodule.batch_size
    if test_checkpoint is None:
        metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
        return RunResult(metrics, epochs, steps, batch_size, n_train, 0, train_seconds, 0.0, out_dir)
    start = time.perf_counter()
    cli = main(["test", *common, "--ckpt_path", str(ckpt_dir / test_checkpoint)])
    test_seconds = time.perf_counter() - start
    return RunResult({k: float(v) for k, v in cli.trainer.callback_metrics.items()}, epochs, steps, batch_size,
                     n_train, len(cli.datamodule.datasets["test"]), train_seconds, test_seconds, out_dir)


def write_section(name: str, text: str, results: Path | None = None) -> None:
    """Replace (or append) the section ``name`` of ``results`` (default: RESULTS.md) between its markers."""
    results = RESULTS if results is None else Path(results)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    header = "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; no figure is typed by hand.\n"
    old = results.read_text() if results.exists() else header
    block = f"{begin}\n{text.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    results.write_text(new)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run NAME=RUN_DIR`` (repeatable) and ``--checkpoint``: rows of ``benchmarks.run`` to read back."""
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR",
                        help="a row folder of benchmarks.run (its checkpoints/ subfolder is read)")
    parser.add_argument("--checkpoint", default="last.ckpt", help="checkpoint file name in RUN_DIR/checkpoints")


def run_checkpoints(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> dict[str, Path]:
    """``{NAME: RUN_DIR/checkpoints/<--checkpoint>}`` of the ``--run`` options; a parser error names a bad one."""
    checkpoints = {}
    for spec in opts.run:
        name, _, run_dir = spec.partition("=")
        if not run_dir:
            parser.error(f"--run {spec!r}: give NAME=RUN_DIR")
        checkpoints[name] = Path(run_dir) / "checkpoints" / opts.checkpoint
        if not checkpoints[name].is_file():
            parser.error(f"--run {name}: no checkpoint {checkpoints[name]}")
    return checkpoints
