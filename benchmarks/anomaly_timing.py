"""Inference ms per image of the cpu-anomaly rows and the anomalib peers, re-measured together, in rounds.

The ``cpu-anomaly`` suite times each row right after its training, so its ms/img follow whatever else the
machine ran at that moment (2–4× apart on a shared VM). This script reloads what such a run left in
``--workdir`` and times every model again in one sitting:

- ours: ``<workdir>/<Method>_magnetic_tile/checkpoints/best.ckpt``, forward + anomaly map + image score at the
  row's input size (the suite's own timing function, ``benchmarks.anomaly_magnetic_tile.inference_ms``);
- the peers: anomalib's checkpoints under ``<workdir>/anomalib/MSFlow_magnetic_tile/<peer>/``, reloaded by
  ``benchmarks/anomalib_peer.py --fitted`` (pre-processing + network + map + score), in the anomalib environment.

Every round times every model once (median of ``--runs`` after ``--warmup``); the table gives the median over
``--rounds`` rounds and their range, so a burst of load on the machine shows as a wide range instead of a
wrong verdict::

    python -m benchmarks.anomaly_timing --workdir runs/bench/cpu-anomaly \\
        --anomalib-python /work/venvs/anomalib/bin/python --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import torch
import yaml

from benchmarks.anomaly_magnetic_tile import inference_ms
from benchmarks.common import REPO, commit, machine, usable_cores, write_section
from benchmarks.run import PEERS, anomaly_jobs, peer_extractor

OURS = {job.method: job for job in anomaly_jobs(Path("data/magnetic_tile"), 0.0)}


def ours_ms(workdir: Path, method: str, batch: int, args: argparse.Namespace) -> float:
    """Median ms per image of our row ``method`` at batch size ``batch``."""
    job = OURS[method]
    checkpoint = workdir / job.name / "checkpoints" / "best.ckpt"
    class_name = yaml.safe_load((REPO / job.config).read_text())["model"]["class_path"].rsplit(".", 1)[-1]
    torch.set_num_threads(usable_cores())
    return inference_ms(checkpoint, class_name, batch, runs=args.runs, warmup=args.warmup,
                        size=args.size or job.input_size[0], device=args.device)


def peer_checkpoint(workdir: Path, peer: str) -> Path | None:
    """The newest Lightning checkpoint anomalib saved for ``peer`` in the suite's MSFlow peer folder."""
    found = sorted((workdir / "anomalib" / OURS["MSFlow"].name / peer.lower()).glob("**/*.ckpt"),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def peer_ms(workdir: Path, peer: str, args: argparse.Namespace) -> dict[int, float]:
    """Median ms per image of the fitted ``peer`` per batch size of ``--batches`` (one anomalib process)."""
    data = workdir / "anomalib" / OURS["MSFlow"].name
    backbone, stages, _ = peer_extractor(OURS["MSFlow"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        command = [args.anomalib_python, "-m", "benchmarks.anomalib_peer", "--model", peer.lower(),
                   "--data", str(data), "--weights", str(data / f"{backbone}_offline.pth"),
                   "--out", str(out), "--workdir", tmp, "--backbone", backbone, "--stages", *map(str, stages),
                   "--fitted", str(peer_checkpoint(workdir, peer)), "--accelerator", args.device,
                   "--threads", str(usable_cores()), "--timing-runs", str(args.runs),
                   "--timing-warmup", str(args.warmup), "--timing-batches", *map(str, args.batches)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{peer} timing failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        result = json.loads(out.read_text())
    if result.get("score_check") is not None and result["score_check"] > 1e-3:
        raise SystemExit(f"{peer}: the reloaded model scores the test images differently from the fit "
                         f"(relative gap {result['score_check']:.2g}); its checkpoint is not the fitted model")
    return {int(bs): float(ms) for bs, ms in result["ms_per_image"].items()}


def peers_available(args: argparse.Namespace, workdir: Path) -> tuple[list[str], str]:
    """The peers that can be timed, and a note on those that cannot."""
    if not args.anomalib_python or not Path(args.anomalib_python).is_file():
        return [], f"anomalib peers not timed: no anomalib Python ({args.anomalib_python or 'none given'})"
    missing = [p for p in args.peers if peer_checkpoint(workdir, p) is None]
    note = f"no fitted checkpoint for {', '.join(missing)} under {workdir / 'anomalib'}" if missing else ""
    return [p for p in args.peers if p not in missing], note


def measure(args: argparse.Namespace) -> tuple[dict[str, dict[int, list[float]]], str]:
    """{model: {batch: [ms of each round]}} for our methods then the peers, and a note."""
    workdir = Path(args.workdir)
    missing = [m for m in args.methods if not (workdir / OURS[m].name / "checkpoints" / "best.ckpt").is_file()]
    if missing:
        raise SystemExit(f"no checkpoint for {', '.join(missing)} under {workdir}: run "
                         "`python -m benchmarks.run --suite cpu-anomaly` first (or give --workdir)")
    peers, note = peers_available(args, workdir)
    times: dict[str, dict[int, list[float]]] = {m: {b: [] for b in args.batches} for m in [*args.methods, *peers]}
    for round_ in range(args.rounds):
        for method in args.methods:
            for batch in args.batches:
                times[method][batch].append(ours_ms(workdir, method, batch, args))
        for peer in peers:
            for batch, ms in peer_ms(workdir, peer, args).items():
                times[peer][batch].append(ms)
        print(f"round {round_ + 1}: " + ", ".join(f"{m} {t[args.batches[-1]][-1]:.1f}" for m, t in times.items()),
              flush=True)
    return times, note


def table(args: argparse.Namespace, times: dict[str, dict[int, list[float]]], note: str) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"

    peers = [m for m in times if m in PEERS]
    rows = []
    for model, by_batch in times.items():
        size = args.size or (OURS[model].input_size[0] if model in OURS else OURS["MSFlow"].input_size[0])
        who = "anomalib" if model in peers else "ours"
        rows.append(f"| {model} | {who} | {size}² | " + " | ".join(cell(by_batch[b]) for b in args.batches) + " |")
    verdicts = []
    big = args.batches[-1]
    if peers:
        fastest = min(peers, key=lambda p: statistics.median(times[p][big]))
        best = statistics.median(times[fastest][big])
        for model in args.methods:
            ms = statistics.median(times[model][big])
            verdicts.append(f"- {model}: {ms:.1f} vs {fastest} {best:.1f} ms/img at batch {big} "
                            f"({'met' if ms <= best else '**missed**'}, ×{ms / best:.2f})")
    heads = " | ".join(f"ms/img b{b}" for b in args.batches)
    return f"""## Inference time of the cpu-anomaly rows and the anomalib peers, timed together

Command: `python -m benchmarks.anomaly_timing --workdir {args.workdir} --rounds {args.rounds} --runs {args.runs}`;
date {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine()} ({args.device}); commit {commit()};
{usable_cores()} usable core(s) and as many torch threads; 1-minute load average {args.load_before:.2f} before the
first round, {os.getloadavg()[0]:.2f} after the last (the timing itself adds up to the core count). Each model's
timing: forward + anomaly map + image score (the peers: anomalib's pre-processing + network + map + score), eval
mode, no grad, random inputs at the row's input size, median of {args.runs} runs after {args.warmup} warm-up;
every round times every model once, one after another; a cell is the median of the {args.rounds} rounds (their
range in brackets). The models are the checkpoints of the `run_cpu-anomaly` rows (ours: best.ckpt; the peers:
anomalib's fitted checkpoints, reloaded and checked to reproduce their saved test scores).

| model | code | input | {heads} |
|---|---|---|{'---|' * len(args.batches)}
{chr(10).join(rows)}

{chr(10).join(verdicts) if verdicts else note}
{note if verdicts and note else ''}
"""


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/bench/cpu-anomaly", help="folder of a cpu-anomaly run")
    parser.add_argument("--methods", nargs="+", default=list(OURS), choices=list(OURS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--anomalib-python", default=os.environ.get("CRACKSEG_ANOMALIB_PYTHON"),
                        help="python of an environment with anomalib (default: $CRACKSEG_ANOMALIB_PYTHON)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model and batch size, per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=None, help="input side for every model (default: the row's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="replace section anomaly_timing of RESULTS.md")
    args = parser.parse_args(argv)
    args.load_before = os.getloadavg()[0]
    times, note = measure(args)
    text = table(args, times, note)
    if args.write:
        write_section("anomaly_timing", text)
    print(text)
    return text


if __name__ == "__main__":
    main()
