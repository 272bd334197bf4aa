"""Where the inference time of SkipAE or DFR goes, beside anomaly_peer's PaDiM / FastFlow rows of ``benchmarks.run``.

    python -m benchmarks.profile_feature_ae --checkpoint runs/.../DFR_magnetic_tile/checkpoints/best.ckpt [--write]

Times (median ms per image, eval mode, no grad, 256² random inputs, as many torch threads as usable cores) each
part of a trained feature autoencoder at batch 1 and 32: the frozen extractor (normalise, tapped blocks, resize +
pool, concat: what PaDiM / FastFlow also pay), the autoencoder on that tensor, the map (residual, upsampling) and
image score, and the whole forward + map + score. Run it on an otherwise idle machine: the parts are timed
separately, so a neighbour's load shifts them unevenly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import commit, machine, usable_cores, write_section
from benchmarks.timing import median_ms_per_image
from crackseg.lightning_modules import DFR, SkipAE
from crackseg.lightning_modules.feature_ae import FeatureReconstruction


def load(checkpoint: Path) -> FeatureReconstruction:
    """The SkipAE or DFR of ``checkpoint`` (DFR's hyper-parameters name a PCA variance), in eval mode on the CPU."""
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    cls = DFR if "pca_variance" in hparams else SkipAE
    return cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True, weights=None).eval()


def parts(model: FeatureReconstruction, images: torch.Tensor) -> dict[str, tuple[int, Callable[[], object]]]:
    """``{part: (parameters, step)}``: one call of ``step`` runs that part of ``model``'s inference on ``images``."""
    net = model.net
    extractor = sum(p.numel() for p in net.extractor.parameters())
    autoencoder = sum(p.numel() for p in net.autoencoder.parameters())
    with torch.no_grad():
        outputs = model(images)
    return {
        "extractor (normalise, blocks, resize + pool, concat)": (
            extractor, lambda: net.extractor(model.normalize(images))),
        "autoencoder on the feature tensor": (autoencoder, lambda: net.autoencoder(outputs["features"])),
        "map (residual, upsampling) + image score": (0, lambda: model.image_score(model.anomaly_map(outputs), {})),
        "whole: forward + map + score": (extractor + autoencoder,
                                         lambda: model.image_score(model.anomaly_map(model(images)), {})),
    }


def profile(model: FeatureReconstruction, size: int = 256, batches: tuple[int, ...] = (1, 32), runs: int = 5,
            warmup: int = 2, chunks: tuple[int | None, ...] = ()) -> list[tuple[str, int, list[float]]]:
    """``(part, parameters, [ms per image at each batch size])`` for the :func:`parts` of ``model``'s inference
    (the whole with the model's own ``inference_chunk``), then the whole under each ``inference_chunk`` of
    ``chunks`` (None: one pass)."""
    rows: dict[str, tuple[int, list[float]]] = {}
    own = model.net.inference_chunk
    for batch in batches:
        steps = parts(model, torch.rand(batch, 3, size, size))
        for name, (count, step) in steps.items():
            rows.setdefault(name, (count, []))[1].append(median_ms_per_image(step, batch, runs, warmup))
        whole = steps["whole: forward + map + score"]
        for chunk in chunks:
            model.net.inference_chunk = chunk
            rows.setdefault(f"whole, inference_chunk {chunk}", (whole[0], []))[1].append(
                median_ms_per_image(whole[1], batch, runs, warmup))
        model.net.inference_chunk = own
    return [(name, count, times) for name, (count, times) in rows.items()]


def _chunk(value: str) -> int | None:
    return None if value.lower() in ("none", "null") else int(value)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (after 2 warm-up runs)")
    parser.add_argument("--chunks", nargs="*", default=[], type=_chunk,
                        help="also time the whole under each inference_chunk (none: one pass)")
    parser.add_argument("--write", action="store_true", help="replace the section profile_<method> of RESULTS.md")
    opts = parser.parse_args(argv)
    torch.set_num_threads(usable_cores())
    model = load(opts.checkpoint)
    method = type(model).__name__
    lines = [f"{machine()}, {torch.get_num_threads()} torch thread(s); commit {commit()}; checkpoint "
             f"`{opts.checkpoint}`; median of {opts.runs} runs after 2 warm-up runs; the parts run unchunked, "
             f"the whole with the model's inference_chunk {model.net.inference_chunk}", "",
             "| part | parameters | ms/img b1 | ms/img b32 |", "|---|---|---|---|"]
    for name, count, (b1, b32) in profile(model, runs=opts.runs, chunks=tuple(opts.chunks)):
        lines.append(f"| {name} | {count / 1e6:.2f} M | {b1:.1f} | {b32:.1f} |")
    text = "\n".join(lines)
    print(text)
    if opts.write:
        write_section(f"profile_{method.lower()}",
                      f"## Where {method}'s inference time goes (256², CPU)\n"
                      f"Command: `python -m benchmarks.profile_feature_ae {' '.join(argv or sys.argv[1:])}`\n\n"
                      + text)
    return text


if __name__ == "__main__":
    main()
