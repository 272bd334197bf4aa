"""Image AUROC of trained SkipAE / DFR / VAEGradCAM checkpoints under each image-score switch (issue 17).

    python -m benchmarks.anomaly_scores --run SkipAE=runs/bench/cpu-anomaly/SkipAE_magnetic_tile \\
        --run DFR=runs/bench/cpu-anomaly/DFR_magnetic_tile [--border 8] [--write]

Each ``--run NAME=FOLDER`` is a finished ``crackseg fit`` run (its ``checkpoints/best.ckpt`` and the
``config.yaml`` the CLI saved under it). The checkpoint's anomaly maps of the test split are computed once (the
score does not change them); each image is then scored by ``score: max`` (the papers), ``topk`` (mean of the top
``topk_fraction``) and ``mean``, with the whole map and with ``--border`` pixels per side left out
(``score_border``), and ranked against the labels with crackseg's exact image AUROC. A VAEGradCAM run gets its own
table: its ``score`` switches (``l2``: the mean squared reconstruction error of §3.3, ``l1``, ``attention_std``)
beside diagnostics of what the error measures: the image's mean brightness alone, the squared error after
removing each image's mean residual (a brightness offset), and the top-1 % mean of the residual map. An MSFlow
run is re-scored with ``map_normalization`` ``image`` (the reference code: each map relative to its image's most
likely pixel) and ``none`` (absolute likelihoods, comparable across images), and with ``image_score`` ``mean_nll``
and ``scale_zmax`` (its per-scale statistics from the checkpoint, or, for a run fitted with another score, computed
by ``calibrate_scale_statistics`` over the run's training images): image AUROC and pixel AUROC (every 16th pixel)
of each; and, as a diagnostic, the image AUROC of each scale's
negative log-likelihood alone (its mean and top-1 % mean over the image). Prints
the tables (``--write``: also the section ``anomaly_scores`` of RESULTS.md).

``--smoothing 0,4,8`` adds a diagnostic table: the test maps smoothed by a Gaussian of each sigma (pixels; kernel
2⌊4σ + 0.5⌋ + 1, reflect padding: anomalib's ``GaussianBlur2d`` for PaDiM / PatchCore; 0 = unsmoothed), scored
again: a feature autoencoder's image AUROC (``max`` / ``topk``, whole map and ``--border``), pixel AUROC (every
16th pixel) and AUPRO; an MSFlow run's pixel AUROC and AUPRO of its additive map, its multiplicative map (both
the reference's per-image normalisation) and the absolute −Σ logp.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import yaml
from torchvision.transforms.v2.functional import gaussian_blur

from benchmarks.common import commit, machine, usable_cores, write_section
from crackseg import datamodules, lightning_modules
from crackseg.metrics import AUPRO, ImageMetrics

SCORES = ("max", "topk", "mean")


def saved_config(folder: Path) -> dict:
    """The resolved config the CLI saved for the run (the newest ``config.yaml`` under its folder)."""
    found = sorted(folder.rglob("config.yaml"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no config.yaml under {folder}: not a finished crackseg run")
    return yaml.safe_load(found[-1].read_text())


def test_maps(folder: Path) -> tuple[object, list[torch.Tensor], list[dict], torch.Tensor, list[torch.Tensor], object]:
    """The checkpoint's module, its test maps and outputs per batch, the test labels and masks, its datamodule."""
    config = saved_config(folder)
    model_cls = getattr(lightning_modules, config["model"]["class_path"].rpartition(".")[2])
    model = model_cls.load_from_checkpoint(folder / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    data_cls = getattr(datamodules, config["data"]["class_path"].rpartition(".")[2])
    datamodule = data_cls(**config["data"].get("init_args", {}))
    datamodule.setup("test")
    maps, outputs, labels, masks = [], [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            out = model(batch["image"])
            maps.append(model.anomaly_map(out))
            outputs.append(out)
            labels.append(batch["label"])
            masks.append(batch["mask"])
    return model, maps, outputs, torch.cat(labels), masks, datamodule


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    metric = ImageMetrics()
    metric.update(scores.float(), labels, 0.0)
    return float(metric.compute()["image_auroc"]) * 100


def vae_scores(maps: list[torch.Tensor], outputs: list[dict], labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC % of VAEGradCAM's score switches and of brightness diagnostics, from its test outputs."""
    scores: dict[str, list[torch.Tensor]] = {}
    for seg, out in zip(maps, outputs, strict=True):
        target = out["target"].float()
        residual = torch.sigmoid(out["logits"].float()) - target
        flat = residual.flatten(1)
        centred = flat - flat.mean(1, keepdim=True)
        per_pixel = residual.abs().mean(1).flatten(1)
        k = max(1, per_pixel.shape[1] // 100)
        for name, value in (("l2 (§3.3)", flat.pow(2).mean(1)), ("l1", flat.abs().mean(1)),
                            ("attention_std", seg.flatten(1).std(1)), ("mean brightness", target.flatten(1).mean(1)),
                            ("l2 minus mean residual", centred.pow(2).mean(1)),
                            ("residual top-1 % mean", per_pixel.topk(k, dim=1).values.mean(1))):
            scores.setdefault(name, []).append(value)
    return {name: auroc(torch.cat(values), labels) for name, values in scores.items()}


def msflow_scores(model: object, outputs: list[dict], labels: torch.Tensor,
                  masks: list[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """(image AUROC %, pixel AUROC %) of an MSFlow run under each ``map_normalization`` and ``image_score``."""
    result = {}
    for normalization, image_score in (("image", "topk"), ("none", "topk"), ("image", "mean_nll"),
                                       ("image", "scale_zmax")):
        model.hparams.map_normalization, model.hparams.image_score = normalization, image_score
        scores, pixels, targets = [], [], []
        for out, mask in zip(outputs, masks, strict=True):
            out.pop("mul_map", None)  # cached by pro_map for the previous setting
            maps = model.anomaly_map(out)
            scores.append(model.image_score(maps, out))
            pixels.append(maps.flatten()[::16])
            targets.append(mask.flatten()[::16])
        result[f"{normalization}, {image_score}"] = (auroc(torch.cat(scores), labels),
                                                     auroc(torch.cat(pixels), torch.cat(targets)))
    return result


def msflow_scale_scores(model: object, outputs: list[dict], labels: torch.Tensor) -> dict[str, float]:
    """Image AUROC % of each scale's negative log-likelihood alone (a diagnostic, not a switch): mean and top 1 %."""
    result = {}
    native = [model._native_logp(out) for out in outputs]
    means = torch.cat([model.scale_mean_nll(out) for out in outputs])
    for scale in range(len(native[0])):
        nll = [-maps[scale].flatten(1) for maps in native]
        top = [n.topk(max(1, math.ceil(0.01 * n.shape[1])), 1).values.mean(1) for n in nll]
        result[f"scale {scale + 1} mean"] = auroc(means[:, scale], labels)
        result[f"scale {scale + 1} top 1 %"] = auroc(torch.cat(top), labels)
    return result


def msflow_statistics(model: object, datamodule: object) -> list[tuple[str, torch.Tensor]]:
    """``scale_zmax``'s per-scale statistics by source: the training images' (the checkpoint's, or computed by
    ``calibrate_scale_statistics`` for a run fitted with another score; left in the model) and, as a diagnostic,
    the held-out defect-free validation images' (absent with fewer than 2)."""
    datamodule.setup("fit")
    if not model.has_scale_statistics():
        model.calibrate_scale_statistics(datamodule.train_dataloader())
    trained = model.scale_nll_stats.clone()
    sources = [("training images (the switch)", trained)]
    try:
        model.calibrate_scale_statistics(datamodule.val_dataloader())
        sources.append(("validation images", model.scale_nll_stats.clone()))
    except ValueError:  # fewer than 2 validation images: no such row
        pass
    model.scale_nll_stats.copy_(trained)
    return sources


def msflow_zmax_sources(model: object, sources: list[tuple[str, torch.Tensor]], outputs: list[dict],
                        labels: torch.Tensor) -> list[tuple[str, float, float, list[str], list[float]]]:
    """``scale_zmax`` under each source of statistics (:func:`msflow_statistics`): image AUROC % of the maximum
    and of the sum of the standardised scales, at which scale each test image's maximum lies (good / defective),
    and the mean z of the good test images per scale."""
    values = torch.cat([model.scale_mean_nll(out) for out in outputs])
    rows = []
    for source, (mean, std) in sources:
        z = (values - mean) / std
        where = z.argmax(1)
        counts = [f"{int(((where == s) & (labels == 0)).sum())} / {int(((where == s) & (labels == 1)).sum())}"
                  for s in range(z.shape[1])]
        rows.append((source, auroc(z.amax(1), labels), auroc(z.sum(1), labels), counts,
                     z[labels == 0].mean(0).tolist()))
    return rows


def smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """A (B, 1, H, W) map smoothed by a Gaussian of ``sigma`` pixels (anomalib's kernel size); 0: unchanged."""
    if sigma == 0:
        return maps
    size = 2 * int(4 * sigma + 0.5) + 1
    return gaussian_blur(maps.float(), [size, size], [sigma, sigma])


def _msflow_variant_maps(model: object, out: dict) -> dict[str, torch.Tensor]:
    """MSFlow's additive and multiplicative maps (per-image normalisation, the reference) and −Σ logp."""
    normalization = model.hparams.map_normalization
    model.hparams.map_normalization = "image"
    out.pop("mul_map", None)
    maps = {"additive map": model.anomaly_map(out), "multiplicative map": model.pro_map(None, out),
            "−Σ logp": -model._total_logp(out)}
    model.hparams.map_normalization = normalization
    out.pop("mul_map", None)
    return maps


def smoothing_rows(model: object, maps: list[torch.Tensor], outputs: list[dict], labels: torch.Tensor,
                   masks: list[torch.Tensor], sigmas: list[float], border: int) -> list[list[str]]:
    """Rows of the ``--smoothing`` table: map, sigma, [image AUROC × 4 (feature AEs),] pixel AUROC, AUPRO."""
    msflow = isinstance(model, lightning_modules.MSFlow)
    variants = [_msflow_variant_maps(model, out) for out in outputs] if msflow else [{"residual map": m} for m in maps]
    settings = [(score, b) for b in (0, border) for score in ("max", "topk")]
    saved = (model.hparams.get("score"), model.hparams.get("score_border"))
    rows = []
    for name in variants[0]:
        for sigma in sigmas:
            pro, pixels, targets, scores = AUPRO(), [], [], {s: [] for s in settings}
            for batch_maps, mask in zip(variants, masks, strict=True):
                smoothed = smooth(batch_maps[name], sigma)
                pro.update(smoothed, mask)
                pixels.append(smoothed.flatten()[::16])
                targets.append(mask.flatten()[::16])
                for setting in settings if not msflow else ():
                    model.hparams.score, model.hparams.score_border = setting
                    scores[setting].append(model.image_score(smoothed, {}))
            images = [] if msflow else [f"{auroc(torch.cat(v), labels):.1f}" for v in scores.values()]
            rows.append([name, f"{sigma:g}", *images, f"{auroc(torch.cat(pixels), torch.cat(targets)):.1f}",
                         f"{100 * float(pro.compute()):.1f}"])
    if not msflow:
        model.hparams.score, model.hparams.score_border = saved
    return rows


def smoothing_text(name: str, rows: list[list[str]], border: int) -> str:
    """The ``--smoothing`` table of one run."""
    images = [] if len(rows[0]) == 4 else ["max", "topk", f"max, border {border}", f"topk, border {border}"]
    head = ["map", "sigma", *(f"image AUROC {s}" for s in images), "pixel AUROC", "AUPRO"]
    return (f"\n{name}: test maps smoothed by a Gaussian of each sigma (pixels; 0: as tested), % (diagnostic):\n\n| "
            + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
            + "".join("| " + " | ".join(row) + " |\n" for row in rows))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=FOLDER of a finished fit run")
    parser.add_argument("--border", type=int, default=8, help="score_border of the border-excluded rows (pixels)")
    parser.add_argument("--write", action="store_true", help="replace the section --section of RESULTS.md")
    parser.add_argument("--section", default="anomaly_scores", help="section of RESULTS.md --write replaces")
    parser.add_argument("--smoothing", type=lambda v: [float(x) for x in v.split(",")], default=[],
                        help="comma-separated Gaussian sigmas (pixels) of the smoothing table, e.g. 0,4,8")
    args = parser.parse_args(argv)
    torch.set_num_threads(usable_cores())
    rows, vae, flows, smoothed = [], [], [], []
    for item in args.run:
        name, _, folder = item.partition("=")
        model, maps, outputs, labels, masks, datamodule = test_maps(Path(folder))
        if args.smoothing and not isinstance(model, lightning_modules.VAEGradCAM):
            smoothed.append(smoothing_text(name, smoothing_rows(model, maps, outputs, labels, masks, args.smoothing,
                                                                args.border), args.border))
        if isinstance(model, lightning_modules.MSFlow):
            sources = msflow_statistics(model, datamodule)
            flows.append((name, msflow_scores(model, outputs, labels, masks),
                          msflow_scale_scores(model, outputs, labels),
                          msflow_zmax_sources(model, sources, outputs, labels)))
            continue
        if isinstance(model, lightning_modules.VAEGradCAM):
            vae.append((name, vae_scores(maps, outputs, labels), len(labels)))
            continue
        paper = (model.hparams.score, int(model.hparams.score_border))
        cells = []
        for border in (0, args.border):
            for score in SCORES:
                model.hparams.score, model.hparams.score_border = score, border
                value = auroc(torch.cat([model.image_score(m, o) for m, o in zip(maps, outputs, strict=True)]), labels)
                cells.append(f"**{value:.1f}**" if (score, border) == paper else f"{value:.1f}")
        rows.append(f"| {name} | {len(labels)} ({int(labels.sum())} defective) | " + " | ".join(cells) + " |")
    header = " | ".join(f"{s}" for s in SCORES) + " | " + " | ".join(f"{s}, border {args.border}" for s in SCORES)
    text = f"""## Image-score switches of the trained anomaly detectors (issue 17)

Command: `python -m benchmarks.anomaly_scores {' '.join(argv or sys.argv[1:])}`; machine: {machine()}; commit
{commit()}. The best checkpoints of the `run_cpu-anomaly` rows, their test maps computed once and re-scored;
image AUROC % (crackseg's exact rank AUROC).
"""
    if rows:
        text += f"""
Feature autoencoders: each `score` (`topk`: mean of the top `topk_fraction`) with the whole map and with
`score_border: {args.border}`. Bold: the configuration the run was tested with.

| run | test images | {header} |
|---|---|{'---|' * (2 * len(SCORES))}
""" + "\n".join(rows) + "\n"
    for name, values, n in vae:
        text += (f"\n{name} ({n} test images), image AUROC % of each score (the paper's: l2):\n\n| "
                 + " | ".join(values) + " |\n|" + "---|" * len(values) + "\n| "
                 + " | ".join(f"{v:.1f}" for v in values.values()) + " |\n")
    for name, values, scales, sources in flows:
        text += (f"\n{name}: image AUROC % / pixel AUROC % per `map_normalization`, `image_score` (the first: the "
                 "reference code, the run's):\n\n| " + " | ".join(values) + " |\n|" + "---|" * len(values) + "\n| "
                 + " | ".join(f"{a:.1f} / {p:.1f}" for a, p in values.values()) + " |\n\n"
                 f"{name}: image AUROC % of each scale's negative log-likelihood alone (diagnostic):\n\n| "
                 + " | ".join(scales) + " |\n|" + "---|" * len(scales) + "\n| "
                 + " | ".join(f"{v:.1f}" for v in scales.values()) + " |\n")
        n = len(sources[0][3])
        text += (f"\n{name}: `image_score: scale_zmax` by the source of its per-scale statistics (image AUROC %; "
                 "maximum at each scale: good / defective test images; mean z of the good test images):\n\n"
                 "| statistics of | scale_zmax | sum of the standardised scales | "
                 + " | ".join(f"maximum at scale {s + 1}" for s in range(n)) + " | mean z of good test images |\n|"
                 + "---|" * (n + 4) + "\n")
        for source, zmax, zsum, counts, mean_z in sources:
            text += (f"| {source} | {zmax:.1f} | {zsum:.1f} | " + " | ".join(counts) + " | "
                     + " / ".join(f"{v:.2f}" for v in mean_z) + " |\n")
    text += "".join(smoothed)
    print(text)
    if args.write:
        write_section(args.section, text)
    return text


if __name__ == "__main__":
    main()
