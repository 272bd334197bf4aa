"""Pseudo-label a datamodule's split and write a DeepCrack-layout dataset, with the labels' quality.

:func:`pseudo_label_dataset` runs a generator over the full-size images of one split of any
:class:`~crackseg.datamodules.CrackDataModule` (its samples' image files, not its training crops) and writes::

    out/
      train_img/<stem><suffix>   the source image (copied; a tile of a grid-cut image is written as PNG)
      train_lab/<stem>.png       its pseudo label, 0 / 255
      train_conf/<stem>.png      its confidence map, 0–255 (the reference code's output, before binarisation)
      test_img/, test_lab/       the source test split with its real masks (0 / 255 PNG)
      quality.json               pseudo-label quality against the ground truth, counts, speed

so that ``DeepCrackDataModule(root=out)`` trains on the pseudo labels and tests on the ground truth. With
``include_test`` the test images are pseudo-labelled too and added to the training images (the semi-supervised
setting of the paper's Table VIII; their real masks stay in ``test_lab/``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from crackseg.checkpoint import CheckpointError, load_module
from crackseg.data.dataset import Sample, load_sample, read_sample_mask
from crackseg.data.io import DataError, write_png
from crackseg.datamodules.base import CrackDataModule
from crackseg.metrics import ThresholdSweepF1
from crackseg.pseudolabels.config import PseudoLabelConfig
from crackseg.pseudolabels.generator import CrackClassifierLike, PseudoLabel, build_generator, resolve_device

__all__ = ["CLASSIFIER_CLASS", "CheckpointError", "LabelQuality", "load_classifier", "pseudo_label_dataset"]

#: the LightningModule a pseudo-label checkpoint is loaded with unless told otherwise
CLASSIFIER_CLASS = "crackseg.lightning_modules.classifier.CrackClassifier"
LAYOUT = ("train_img", "train_lab", "train_conf", "test_img", "test_lab")
QUALITY_FILE = "quality.json"
#: thresholds of König et al.'s official evaluate.py: 0.00, 0.01, ..., 0.99 (``pred > t``)
OFFICIAL_THRESHOLDS = torch.arange(100, dtype=torch.float64) / 100


def load_classifier(ckpt_path: str | os.PathLike, classifier_class: type | str = CLASSIFIER_CLASS,
                    map_location: str | torch.device = "cpu") -> CrackClassifierLike:
    """Load a crack-classifier checkpoint (:func:`crackseg.checkpoint.load_module`: ``weights_only``, the
    recorded class checked against ``classifier_class``).

    Args:
        ckpt_path: a Lightning checkpoint of ``classifier_class``.
        classifier_class: the LightningModule class (or its import path), ``CrackClassifier`` by default.
        map_location: where the weights are loaded.

    Raises:
        CheckpointError: the file is missing, unreadable, of another class, or the loaded module lacks the
            classifier interface (``net.target_layer``, ``normalize``, ``crack_probability``).
    """
    path = Path(ckpt_path).expanduser()
    module = load_module(path, classifier_class).to(map_location)
    missing = [name for name in ("normalize", "crack_probability", "net") if not hasattr(module, name)]
    if not missing and not hasattr(module.net, "target_layer"):
        missing.append("net.target_layer")
    if missing:
        raise CheckpointError(f"{path} loaded as {type(module).__name__}, which lacks the crack-classifier "
                              f"interface: no {', '.join(missing)}")
    return module


class LabelQuality:
    """Pseudo labels against ground truth: ODS / OIS / AP (König et al.) and pixel precision / recall / F1 / IoU.

    ODS / OIS / AP come from :class:`~crackseg.metrics.ThresholdSweepF1` (per-image average, as the paper's
    Table II) on the binary labels (for a binary map ODS = OIS = the mean per-image F1) and on the grey
    confidence maps (``confidence_*``, the reference code's output); precision, recall, F1 and IoU are computed
    from the pixel counts summed over the images. ``official_f1`` / ``confidence_official_f1``: the official
    ``evaluate.py``'s "Macro F1" (F1 of the image-averaged precision and recall, thresholds 0.00–0.99,
    :meth:`~crackseg.metrics.ThresholdSweepF1.macro_f1`). Compare binary-label figures with binary-label
    figures, confidence-map figures with the paper's Table II (made from confidence maps).
    """

    def __init__(self) -> None:
        self.binary = ThresholdSweepF1(thresholds=OFFICIAL_THRESHOLDS)
        self.confidence = ThresholdSweepF1(thresholds=OFFICIAL_THRESHOLDS)
        self.tp = self.fp = self.fn = 0
        self.images = 0

    def update(self, label: PseudoLabel | None, target: np.ndarray) -> None:
        """Add one image; ``label`` None counts as an empty prediction (a skipped image)."""
        truth = target.astype(bool)
        if label is None:
            predicted = np.zeros_like(truth)
            confidence = np.zeros(truth.shape, np.float32)
        else:
            predicted = label.label.astype(bool)
            confidence = label.confidence.astype(np.float32) / 255.0
        target_t = torch.from_numpy(truth)[None]
        self.binary.update(torch.from_numpy(predicted.astype(np.float32))[None], target_t)
        self.confidence.update(torch.from_numpy(confidence)[None], target_t)
        self.tp += int((predicted & truth).sum())
        self.fp += int((predicted & ~truth).sum())
        self.fn += int((~predicted & truth).sum())
        self.images += 1

    def compute(self) -> dict[str, float | int] | None:
        """The figures, or None without images."""
        if not self.images:
            return None
        sweep = {k: float(v) for k, v in self.binary.compute().items() if k != "ods_threshold"}
        sweep["official_f1"] = float(self.binary.macro_f1())
        soft = {f"confidence_{k}": float(v) for k, v in self.confidence.compute().items()}
        soft["confidence_official_f1"] = float(self.confidence.macro_f1())
        tp, fp, fn = self.tp, self.fp, self.fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
        return {"images": self.images, **sweep, "precision": precision, "recall": recall, "f1": f1, "iou": iou,
                **soft}


def _stem(sample: Sample) -> str:
    stem = Path(sample.image).stem
    if sample.tile is not None:
        row, col, grid = sample.tile
        stem += f"_r{row}c{col}of{grid}"
    return stem


def _unique(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name.lower() in taken:
        name = f"{stem}_{n}"
        n += 1
    taken.add(name.lower())
    return name


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _write_image(sample: Sample, image: np.ndarray, folder: Path, stem: str) -> Path:
    """The source file copied as it is, or (a tile) the crop as PNG; atomic either way."""
    if sample.tile is None:
        target = folder / f"{stem}{Path(sample.image).suffix.lower()}"
        _copy_atomic(Path(sample.image), target)
    else:
        target = folder / f"{stem}.png"
        write_png(target, image)
    return target


def _progress(items: Sequence[Any], description: str, enabled: bool) -> Iterator[Any]:
    if enabled:
        try:
            from rich.progress import track
        except ImportError:
            pass
        else:
            yield from track(items, description=description)
            return
    yield from items


def _check_out(out: Path, overwrite: bool, samples: Sequence[Sample]) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder")
    resolved = out.resolve()
    for sample in samples:
        for path in (sample.image, sample.mask):
            if path is not None and resolved in Path(path).resolve().parents:
                raise ValueError(f"--out {out} holds the source file {path}: choose a folder outside the source "
                                 "dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} is not empty: choose an empty or new folder, or pass --overwrite true "
                              f"to replace its {', '.join(LAYOUT)} and {QUALITY_FILE}")


def pseudo_label_dataset(
    classifier: CrackClassifierLike,
    datamodule: CrackDataModule,
    out: str | os.PathLike,
    split: Literal["train", "val", "test"] = "train",
    generator: Literal["fast", "reference"] = "fast",
    include_test: bool = False,
    config: PseudoLabelConfig | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    precision: Literal["32", "bf16", "16"] = "32",
    images_per_batch: int = 8,
    overwrite: bool = False,
    progress: bool = True,
    classifier_name: str | None = None,
    tile_size: int | None = 1024,
    tile_margin: int = 512,
) -> dict[str, Any]:
    """Pseudo-label the images of one split and write a DeepCrack-layout dataset (see the module docstring).

    Args:
        classifier: a trained crack classifier (:class:`CrackClassifierLike`).
        datamodule: the source dataset; its samples' image files are read at their own size.
        out: output folder; must be new or empty unless ``overwrite``.
        split: ``"train"`` (every non-test sample: the datamodule's training and validation parts, since the
            written dataset holds its own validation images out), ``"val"`` or ``"test"``.
        generator: ``"fast"`` or ``"reference"`` (:mod:`crackseg.pseudolabels.generator`).
        include_test: also pseudo-label the test images and add them to the training images (semi-supervised,
            Table VIII); ignored when ``split`` is ``"test"``.
        config: the method's parameters (paper defaults).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: patches per classifier forward pass.
        precision: ``"32"``, ``"bf16"`` or ``"16"``: autocast of the patch classification (see
            :class:`~crackseg.pseudolabels.generator.PseudoLabelGenerator`).
        images_per_batch: images the generator processes together.
        overwrite: replace ``train_img/``, ``train_lab/``, ``train_conf/``, ``test_img/``, ``test_lab/`` and
            ``quality.json`` of a non-empty ``out`` (other files there are left alone).
        progress: show a progress bar.
        classifier_name: recorded in ``quality.json`` (the checkpoint path).
        tile_size: photos with a side above ``tile_size + 2 * tile_margin`` px are processed by tiles, with
            bounded memory and the same labels (:class:`~crackseg.pseudolabels.generator.PseudoLabelGenerator`).
        tile_margin: context around each tile, at least the classifier's receptive-field radius.

    Returns:
        The content of ``quality.json``.

    Raises:
        FileExistsError: ``out`` is not empty and ``overwrite`` is false (nothing is written).
        ValueError: ``out`` holds source files, or a bad argument.
        DataError: the split is empty or a file cannot be read.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if images_per_batch < 1:
        raise ValueError(f"images_per_batch must be >= 1, got {images_per_batch}")
    config = config if config is not None else PseudoLabelConfig()
    out = Path(out).expanduser()
    splits = datamodule.split_samples()
    chosen = splits["train"] + splits["val"] if split == "train" else list(splits[split])
    name = type(datamodule).__name__
    if not chosen:
        raise DataError(f"the {split} split of {name} under {datamodule.root} is empty: nothing to pseudo-label")
    targets = chosen + (list(splits["test"]) if include_test and split != "test" else [])
    _check_out(out, overwrite, targets + list(splits["test"]))
    labeller = build_generator(generator, classifier, config, device, batch_size, precision=precision,
                               tile_size=tile_size, tile_margin=tile_margin)

    if overwrite:
        for folder in LAYOUT:
            shutil.rmtree(out / folder, ignore_errors=True)
        (out / QUALITY_FILE).unlink(missing_ok=True)
    for folder in LAYOUT:
        (out / folder).mkdir(parents=True, exist_ok=True)

    # the test split with its real masks
    test_taken: set[str] = set()
    test_without_mask = 0
    for sample in _progress(splits["test"], "copying the test split", progress):
        if sample.mask is None:
            test_without_mask += 1
            continue
        image, _ = load_sample(sample, datamodule.mask_threshold) if sample.tile is not None else (None, None)
        stem = _unique(_stem(sample), test_taken)
        _write_image(sample, image, out / "test_img", stem)
        write_png(out / "test_lab" / f"{stem}.png", read_sample_mask(sample, datamodule.mask_threshold) * 255)

    # pseudo labels
    taken: set[str] = set()
    kept_quality, all_quality = LabelQuality(), LabelQuality()
    written, below_min, skipped, seconds = 0, 0, [], 0.0
    batches = [targets[i:i + images_per_batch] for i in range(0, len(targets), images_per_batch)]
    for batch in _progress(batches, f"pseudo-labelling ({generator})", progress):
        loaded = [load_sample(sample, datamodule.mask_threshold) for sample in batch]
        start = time.perf_counter()
        labels = labeller([image for image, _ in loaded])
        seconds += time.perf_counter() - start
        for sample, (image, mask), label in zip(batch, loaded, labels, strict=True):
            if not label.kept:  # rule f: fewer than min_crack_pixels crack pixels
                below_min += 1
                empty = np.zeros_like(label.label)
                label = PseudoLabel(empty, empty.copy(), 0, False) if config.below_min == "empty" else None
            if mask is not None:
                all_quality.update(label, mask)
                if label is not None:
                    kept_quality.update(label, mask)
            if label is None:
                skipped.append(_stem(sample))
                continue
            stem = _unique(_stem(sample), taken)
            _write_image(sample, image, out / "train_img", stem)
            write_png(out / "train_lab" / f"{stem}.png", label.label * 255)
            write_png(out / "train_conf" / f"{stem}.png", label.confidence)
            written += 1

    report = {
        "source": {"datamodule": name, "root": str(datamodule.root), "split": split, "include_test": include_test},
        "classifier": classifier_name,
        "generator": generator,
        "device": str(resolve_device(device)),
        "precision": str(precision),
        "parameters": asdict(config),
        "images": len(targets),
        "labelled": written,
        "below_min_crack_pixels": below_min,
        "skipped": skipped,
        "test_images": len(splits["test"]) - test_without_mask,
        "test_images_without_mask_left_out": test_without_mask,
        "generator_seconds": round(seconds, 3),
        "images_per_second": round(len(targets) / seconds, 3) if seconds > 0 else None,
        "quality": {"kept": kept_quality.compute(), "all": all_quality.compute()},
    }
    tmp = out / f".{QUALITY_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out / QUALITY_FILE)
    return report
