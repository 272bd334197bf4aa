"""Speed of the pseudo-label generators (fast vs reference) on 480 x 320 images, and their agreement.

    python -m benchmarks.pseudo_label_speed [--images 4] [--runs 3] [--threads 1] [--device cpu]
        [--models resnet10t-narrow resnet18 efficientnet_lite0 resnet50 tiny-cnn] [--agreement_images 20]
        [--checkpoint runs/weakly_classifier_fast_deepcrack/checkpoints/last.ckpt]
    python -m benchmarks.pseudo_label_speed --precision_table --models resnet50 --section pseudo_label_precision

Each classifier is a random-weight :class:`~crackseg.models.classifier.CrackClassifierNet` (timm backbone, the
reference code's head GAP -> Dense(1000, ReLU) -> Dense(2); no weights are downloaded) with the ``CrackClassifier``
interface (ImageNet normalisation). Random weights cost the same time as trained ones; the labels they give are
meaningless, but both generators must still give the same ones. ``resnet10t-narrow`` is the small CPU classifier of
``configs/weakly/classifier_fast_deepcrack.yaml``; ``tiny-cnn`` (two 3 x 3 convolutions) shows the cost of
everything but the classifier. ``--checkpoint`` adds trained ``CrackClassifier`` checkpoints (their labels mean
something: the table then also gives their crack pixels). ``--precision_table`` times the fast generator with the
patch classification in float32 and in bf16 autocast instead, with the labels' agreement.

The whole pipeline is timed (patch classification, GradCAM++, thresholding, merging), as images/s over the median
of ``--runs`` runs, in wall time and in CPU time of the process (with ``--threads 1`` the CPU time is what the
pipeline costs regardless of other jobs on the machine); the fast generator also gets a per-stage breakdown.
Images: CrackForest's 480 x 320 photographs from ``../shared/data/cfd`` when present, else synthetic 480 x 320
crack images.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crackseg.data.io import list_images, read_image  # noqa: E402
from crackseg.data.synthetic import generate_sample  # noqa: E402
from crackseg.pseudolabels import FastPseudoLabeler, ReferencePseudoLabeler  # noqa: E402

CFD_IMAGES = REPO.parent / "shared" / "data" / "cfd" / "image"
DEEPCRACK_IMAGES = REPO.parent / "shared" / "data" / "deepcrack" / "DeepCrack" / "train_img"
MODELS = ("resnet10t-narrow", "resnet18", "efficientnet_lite0", "resnet50", "tiny-cnn")
#: timm name and constructor arguments of each stand-in (configs/weakly/classifier_fast_deepcrack.yaml's network)
BACKBONES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "resnet10t-narrow": ("resnet10t", {"channels": [16, 32, 64, 128], "stem_width": 8}),
    "resnet18": ("resnet18", None), "efficientnet_lite0": ("efficientnet_lite0", None), "resnet50": ("resnet50", None),
}


class TinyNet(nn.Module):
    """Two 3 x 3 convolutions, global average pooling, a linear head: a nearly free classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.target_layer = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def features(self, x: Tensor) -> Tensor:
        return self.target_layer(x)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.head(self.features(x).mean(dim=(2, 3)))}


class StandInClassifier(nn.Module):
    """``normalize`` / ``crack_probability`` around a network, as ``CrackClassifier`` has them."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name == "tiny-cnn":
            self.net: nn.Module = TinyNet()
        else:
            from crackseg.models.classifier import CrackClassifierNet

            backbone, kwargs = BACKBONES[name]
            self.net = CrackClassifierNet(backbone, weights=None, backbone_kwargs=kwargs)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    @torch.no_grad()
    def crack_probability(self, images: Tensor) -> Tensor:
        return self.net(self.normalize(images))["logits"].softmax(dim=1)[:, 1]


def load_images(n: int) -> tuple[list[np.ndarray], str]:
    """``n`` RGB 480 x 320 (width x height) images and where they come from."""
    if CFD_IMAGES.is_dir():
        images = [read_image(p) for p in list_images(CFD_IMAGES)]
        images = [image for image in images if image.shape[:2] == (320, 480)][:n]
        if len(images) == n:
            return images, "CrackForest (real photographs)"
    return [generate_sample(seed, (320, 480))[0] for seed in range(n)], "synthetic (crackseg.data.synthetic)"


def timed(function: Callable[[], object], runs: int) -> tuple[float, float, object]:
    """Median wall time and median CPU time of this process over ``runs`` calls, and the last result.

    The CPU time counts every thread of the process; with one torch thread it is what the pipeline costs when
    other processes compete for the cores (wall time then grows, CPU time hardly does).
    """
    walls, cpus, result = [], [], None
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus), result


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def classifiers(models: Sequence[str], checkpoints: Sequence[str]) -> Iterator[tuple[str, Any]]:
    """``(row name, classifier)``: a seeded random-weight stand-in per model name, then each trained checkpoint."""
    from crackseg.pseudolabels.dataset import load_classifier

    for name in models:
        torch.manual_seed(0)
        yield name, StandInClassifier(name)
    for path in checkpoints:
        yield f"trained: {path}", load_classifier(path)


def run(models: Sequence[str], n_images: int, runs: int, reference_runs: int, device: str,
        batch_size: int, checkpoints: Sequence[str] = ()) -> None:
    images, origin = load_images(n_images)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = platform.processor() or platform.machine()
    print(f"# Pseudo-label generator speed: {n_images} images of 480x320 ({origin}), device {device}, "
          f"{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPU(s), {cpu}, torch {torch.__version__}, "
          f"load average {load:.2f} at start\n")
    print("| classifier | fast img/s (wall) | reference img/s (wall) | fast img/s (CPU time) | reference img/s "
          "(CPU time) | fast: patches / GradCAM++ / thresholding / rest (CPU ms per image) | IoU fast vs reference "
          "(mean, min) | identical labels | crack pixels per label (labels kept) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, classifier in classifiers(models, checkpoints):
        fast = FastPseudoLabeler(classifier, device=device, batch_size=batch_size)
        reference = ReferencePseudoLabeler(classifier, device=device, batch_size=batch_size)
        fast(images)  # warm-up on the timed batch (allocators, oneDNN kernels for every batch shape)
        fast_time, fast_cpu, fast_labels = timed(lambda fast=fast: fast(images), runs)
        reference_time, reference_cpu, reference_labels = timed(lambda reference=reference: reference(images),
                                                                reference_runs)
        stages = [timed(lambda stage=stage: stage(images), runs)[1] for stage in
                  (fast.patch_maps, fast.cams, fast.threshold_masks)]
        rest = max(fast_cpu - sum(stages), 0.0)
        per_image = " / ".join(f"{1000 * t / n_images:.0f}" for t in (*stages, rest))
        scores = [iou(a.label, b.label) for a, b in zip(fast_labels, reference_labels, strict=True)]  # type: ignore[arg-type]
        identical = sum(np.array_equal(a.label, b.label) for a, b in zip(fast_labels, reference_labels, strict=True))  # type: ignore[arg-type]
        crack = np.mean([label.crack_pixels for label in fast_labels])  # type: ignore[union-attr]
        kept = sum(label.kept for label in fast_labels)  # type: ignore[union-attr]
        print(f"| {name} | {n_images / fast_time:.2f} | {n_images / reference_time:.2f} | "
              f"{n_images / fast_cpu:.2f} | {n_images / reference_cpu:.2f} | {per_image} | "
              f"{np.mean(scores):.4f}, {min(scores):.4f} | {identical}/{n_images} | {crack:.0f} ({kept}/{n_images}) |",
              flush=True)
    if hasattr(os, "getloadavg"):
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other processes share the CPU)")


def precision_table(models: Sequence[str], n_images: int, runs: int, device: str, batch_size: int,
                    checkpoints: Sequence[str] = ()) -> None:
    """Fast generator in float32 and with bf16 autocast of the patch classification: images/s and label agreement."""
    images, origin = load_images(n_images)
    print(f"# Patch classification precision: {n_images} images of 480x320 ({origin}), device {device}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}\n")
    print("| classifier | fast img/s, float32 | fast img/s, bf16 autocast | speed-up | label IoU bf16 vs float32 "
          "(mean, min) | crack pixels float32 / bf16 |")
    print("|---|---|---|---|---|---|")
    for name, classifier in classifiers(models, checkpoints):
        speed, labels = {}, {}
        for precision in ("32", "bf16"):
            generator = FastPseudoLabeler(classifier, device=device, batch_size=batch_size, precision=precision)
            generator(images)  # warm-up
            wall, _, result = timed(lambda generator=generator: generator(images), runs)
            speed[precision], labels[precision] = n_images / wall, result
        pairs = list(zip(labels["32"], labels["bf16"], strict=True))  # type: ignore[arg-type]
        scores = [iou(a.label, b.label) for a, b in pairs]
        pixels = [sum(label.crack_pixels for label in labels[p]) for p in ("32", "bf16")]  # type: ignore[union-attr]
        print(f"| {name} | {speed['32']:.2f} | {speed['bf16']:.2f} | {speed['bf16'] / speed['32']:.2f} | "
              f"{np.mean(scores):.4f}, {min(scores):.4f} | {pixels[0]} / {pixels[1]} |", flush=True)


def agreement(n_images: int, device: str, batch_size: int) -> None:
    """IoU of the fast and reference labels, and equality of their threshold masks, on more real images.

    Uses the ``tiny-cnn`` classifier (the thresholding does not depend on it) on ``n_images`` CrackForest and
    ``n_images`` DeepCrack images (synthetic ones when ``../shared/data`` is absent), with bilateral radius 1
    (OpenCV diameter 3: d = 2 misread as a diameter) and 2 (the paper's eq. 1, diameter 5 as the reference code).
    """
    from crackseg.pseudolabels import PseudoLabelConfig

    images, origin = [], []
    for folder, name in ((CFD_IMAGES, "CrackForest"), (DEEPCRACK_IMAGES, "DeepCrack")):
        if folder.is_dir():
            images += [read_image(p) for p in list_images(folder)[:n_images]]
            origin.append(name)
    if not images:
        images = [generate_sample(seed, (320, 480))[0] for seed in range(2 * n_images)]
        origin.append("synthetic")
    torch.manual_seed(0)
    classifier = StandInClassifier("tiny-cnn")
    print(f"\n# Agreement on {len(images)} images ({' + '.join(origin)}), tiny-cnn classifier\n")
    print("| bilateral radius d (OpenCV diameter) | label IoU fast vs reference (mean, min) | identical labels | "
          "identical threshold masks | "
          "labels with >= 100 crack pixels | threshold-mask crack pixels per image |")
    print("|---|---|---|---|---|---|")
    for radius in (1, 2):  # OpenCV diameters 3 (the old reading of d = 2) and 5 (paper eq. 1, reference code)
        config = PseudoLabelConfig(bilateral_radius=radius)
        fast = FastPseudoLabeler(classifier, config, device, batch_size)(images, keep_stages=True)
        reference = ReferencePseudoLabeler(classifier, config, device, batch_size)(images, keep_stages=True)
        pairs = list(zip(fast, reference, strict=True))
        scores = [iou(a.label, b.label) for a, b in pairs]
        labels = sum(np.array_equal(a.label, b.label) for a, b in pairs)
        masks = sum(np.array_equal(a.stages["threshold_mask"], b.stages["threshold_mask"]) for a, b in pairs)
        kept = sum(a.kept for a in fast)
        dark = np.mean([a.stages["threshold_mask"].sum() for a in fast])
        print(f"| {radius} ({config.bilateral_diameter}) | {np.mean(scores):.4f}, {min(scores):.4f} | "
              f"{labels}/{len(images)} | "
              f"{masks}/{len(images)} | {kept}/{len(images)} | {dark:.0f} |", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="images per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of the fast generator (median)")
    parser.add_argument("--reference_runs", type=int, default=2, help="runs of the reference generator (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--batch_size", type=int, default=256, help="patches per classifier forward pass")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--checkpoint", nargs="*", default=[], help="trained CrackClassifier checkpoints to time too")
    parser.add_argument("--agreement_images", type=int, default=0,
                        help="also check fast vs reference on this many CrackForest + DeepCrack images")
    parser.add_argument("--precision_table", action="store_true",
                        help="instead of the speed table: float32 vs bf16 autocast of the patch classification")
    parser.add_argument("--section", default="pseudo_label_speed", help="section of benchmarks/RESULTS.md to write")
    parser.add_argument("--write", action="store_true",
                        help="record the printed tables as the section --section of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        if args.precision_table:
            precision_table(args.models, args.images, args.runs, args.device, args.batch_size, args.checkpoint)
        elif args.models or args.checkpoint:
            run(args.models, args.images, args.runs, args.reference_runs, args.device, args.batch_size,
                args.checkpoint)
        if args.agreement_images:
            agreement(args.agreement_images, args.device, args.batch_size)
    if args.write:
        from benchmarks.common import commit, write_section

        command = "python -m benchmarks.pseudo_label_speed " + " ".join(argv if argv is not None else sys.argv[1:])
        title = "Pseudo-label patch classification in bf16" if args.precision_table else "Pseudo-label generator speed"
        write_section(args.section, f"## {title}\n\n"
                                            f"Command: `{command}`; date {datetime.date.today().isoformat()}; "
                                            f"commit {commit()}.\n\n{printed.getvalue().replace('# ', '', 1)}")


class _Tee(io.TextIOBase):
    """Writes to several streams (the console and a buffer)."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    main()
