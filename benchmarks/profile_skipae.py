"""Where SkipAE's inference time goes, beside anomaly_peer's PaDiM / FastFlow rows of ``benchmarks.run``.

    python -m benchmarks.profile_skipae --checkpoint runs/.../SkipAE_magnetic_tile/checkpoints/best.ckpt [--write]

Times (median ms per image, eval mode, no grad, 256² inputs) the frozen extractor alone (resize + pool + concat of
the tapped blocks, what PaDiM / FastFlow also pay) and the whole forward + map + score, at batch 1 and 32.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import commit, machine, write_section
from benchmarks.timing import median_ms_per_image
from crackseg.lightning_modules import SkipAE


def median_ms(fn: Callable[[torch.Tensor], None], batch: int, runs: int = 5, warmup: int = 2) -> float:
    """Median milliseconds per image of ``fn`` on a (batch, 3, 256, 256) input."""
    images = torch.rand(batch, 3, 256, 256)
    return median_ms_per_image(lambda: fn(images), batch, runs, warmup)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--write", action="store_true")
    opts = parser.parse_args(argv)
    model = SkipAE.load_from_checkpoint(opts.checkpoint, map_location="cpu", weights_only=True, weights=None).eval()
    net = model.net
    params = {name: sum(p.numel() for p in getattr(net, name).parameters()) for name in ("extractor", "autoencoder")}

    def full(x: torch.Tensor) -> None:
        maps = model.anomaly_map(model(x))
        model.image_score(maps, {})

    lines = [f"{machine()}, {torch.get_num_threads()} torch thread(s); commit {commit()}; checkpoint "
             f"`{opts.checkpoint.name}` of the cpu-small SkipAE magnetic-tile row", "",
             "| part | parameters | ms/img b1 | ms/img b32 |", "|---|---|---|---|"]
    def extractor(x: torch.Tensor) -> None:
        net.extractor(model.normalize(x))

    for name, fn in (("extractor (normalise, blocks, resize, pool, concat)", extractor),
                     ("whole SkipAE: extractor + autoencoder + map + score", full)):
        count = params["extractor"] + (params["autoencoder"] if name.startswith("whole") else 0)
        lines.append(f"| {name} | {count / 1e6:.1f} M | {median_ms(fn, 1):.1f} | {median_ms(fn, 32):.1f} |")
    text = "\n".join(lines)
    print(text)
    if opts.write:
        write_section("profile_skipae", "## Why SkipAE is slower than anomalib's PaDiM / FastFlow per image\n"
                      f"Command: `python -m benchmarks.profile_skipae --checkpoint {opts.checkpoint} --write`\n\n"
                      + text)


if __name__ == "__main__":
    main()
