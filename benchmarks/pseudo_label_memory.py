"""Peak memory and time of König et al.'s pseudo labels of one 12-MP photo, whole against tiled.

    python -m benchmarks.pseudo_label_memory [--size 4000 3000] [--tiles none 1024] [--margin 512] [--write]

A synthetic 4000 x 3000 crack photo (:func:`crackseg.data.synthetic.generate_sample`) is pseudo-labelled by
:class:`~crackseg.pseudolabels.generator.FastPseudoLabeler` with the EfficientNet-Lite0 crack classifier (offline
ImageNet backbone, untrained head: the memory and the work do not depend on the head's weights), once per
``--tiles`` setting (``none``: the whole photo at once; a number: ``tile_size``, with ``--margin``), each in a
child process whose own peak resident set size comes from ``os.wait4``. The children save their labels and
confidence maps; the table says whether each tiled run's equal the whole-photo run's, pixel for pixel. Prints a
markdown table (``--write``: also the section ``pseudo_label_memory`` of RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, commit, machine, write_section


def child(args: argparse.Namespace) -> None:
    """Label the photo with one tile setting; print a JSON line with the time; save the label."""
    import torch

    from crackseg.data.synthetic import generate_sample
    from crackseg.lightning_modules.classifier import CrackClassifier
    from crackseg.pseudolabels.generator import FastPseudoLabeler

    torch.set_num_threads(args.threads)
    width, height = args.size
    image, _ = generate_sample(0, (height, width))
    torch.manual_seed(0)
    classifier = CrackClassifier(backbone="efficientnet_lite0", weights="offline", normalization="symmetric")
    tile = None if args.child == "none" else int(args.child)
    generator = FastPseudoLabeler(classifier, device="cpu", tile_size=tile, tile_margin=args.margin)
    start = time.perf_counter()
    (label,) = generator([image])
    seconds = time.perf_counter() - start
    np.savez_compressed(Path(args.workdir) / f"label_{args.child}.npz", label=label.label, confidence=label.confidence)
    print(json.dumps({"seconds": seconds, "crack_pixels": label.crack_pixels}))


def run_child(args: argparse.Namespace, tile: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.pseudo_label_memory", "--child", tile, "--size", *map(str, args.size),
               "--margin", str(args.margin), "--threads", str(args.threads), "--workdir", args.workdir]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    _, status, usage = os.wait4(process.pid, 0)
    out = process.stdout.read() if process.stdout else ""
    if status != 0:
        raise SystemExit(f"the {tile} run failed (status {status}): {out}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--tiles", nargs="+", default=["none", "1024"], help="tile sizes; none = whole photo")
    parser.add_argument("--margin", type=int, default=512, help="tile_margin (px)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each child")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_pseudo_label_memory"))
    parser.add_argument("--write", action="store_true", help="replace the section pseudo_label_memory of RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        child(args)
        return ""
    results = {tile: run_child(args, tile) for tile in args.tiles}
    reference = np.load(Path(args.workdir) / f"label_{args.tiles[0]}.npz")
    rows = []
    for tile, result in results.items():
        labels = np.load(Path(args.workdir) / f"label_{tile}.npz")
        same = all(np.array_equal(labels[key], reference[key]) for key in ("label", "confidence"))
        setting = "whole photo" if tile == "none" else f"tiles of {tile} px, margin {args.margin} px"
        rows.append(f"| {setting} | {result['peak_mb']:.0f} | {result['seconds']:.0f} | {result['crack_pixels']} | "
                    f"{'yes' if same else 'NO'} |")
    width, height = args.size
    text = f"""## Pseudo labels of a {width * height / 1e6:.0f}-MP photo: whole against tiled (issue 21, item 7)

Command: `python -m benchmarks.pseudo_label_memory {' '.join(argv or sys.argv[1:])}`; date {dt.date.today()};
machine: {machine()}; commit {commit()}; {args.threads} torch thread(s) per run, one run each (a child process).
Synthetic {width}×{height} crack photo, `FastPseudoLabeler` with the EfficientNet-Lite0 classifier (offline
backbone, untrained head), CPU. Peak = the child's own peak resident set size (about 1.3 GB of it is Python,
torch and the model before any labelling). "Same" compares the label and the confidence map with the first
row's, pixel for pixel.

| setting | peak RSS (MB) | labelling time (s) | crack pixels | same label and confidence |
|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    print(text)
    if args.write:
        write_section("pseudo_label_memory", text)
    return text


if __name__ == "__main__":
    main()
