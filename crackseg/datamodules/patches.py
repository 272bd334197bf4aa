"""Patch classification data from a segmentation dataset (König et al., weakly supervised, §IV-A).

:class:`PatchClassificationDataModule` wraps any segmentation datamodule and serves sliding windows
(128×128, stride 64 in the paper) of its train / validation / test images, labelled "crack" (1) when at
least one mask pixel in the window is crack, else "no crack" (0): the image-level labels the weakly
supervised classifier is trained on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from crackseg.data.dataset import (
    CrackDataset,
    Sample,
    crop_tile,
    read_sample_mask,
    sample_id,
    seed_transform,
    tile_box,
)
from crackseg.data.io import DataError, image_size, read_image
from crackseg.data.transforms import SYMMETRIES, build_transform, dihedral
from crackseg.datamodules.base import CrackDataModule, predict_samples

__all__ = ["PatchClassificationDataModule", "PatchDataset", "Window", "window_id", "window_starts"]

Border = Literal["flush", "reflect"]


@dataclass(frozen=True)
class Window:
    """One classification sample: a window of an image (or the whole image).

    Attributes:
        sample: the source image (possibly a tile of one, see :class:`~crackseg.data.dataset.Sample`).
        top: first row of the window (in the padded image for ``border="reflect"``).
        left: first column.
        size: side of the window; None = the whole image.
        label: 1 = crack, 0 = no crack, -1 = unknown.
        padded: (height, width) the image is reflect-padded to first (``border="reflect"``), else None.
    """

    sample: Sample
    top: int
    left: int
    size: int | None
    label: int
    padded: tuple[int, int] | None = None


def window_starts(length: int, size: int, stride: int, border: Border = "flush") -> list[int]:
    """First pixels of the windows along one axis of ``length`` pixels.

    ``"flush"``: every ``stride`` pixels from 0, plus a last window flush with the far border when the
    stride does not reach it exactly, so the windows cover the axis; an axis shorter than ``size`` has one
    window at 0 (the image is reflect-padded to ``size`` when loaded). ``"reflect"`` (the reference code):
    the axis is reflect-padded to a multiple of ``size`` and windows start every ``stride`` pixels of the
    padded axis.
    """
    if border == "reflect":
        padded = -(-length // size) * size
        return list(range(0, padded - size + 1, stride))
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def window_id(window: Window) -> str:
    """The batch ``path`` of a window: the sample id plus ``#y<top>x<left>s<size>`` (nothing for a whole image)."""
    base = sample_id(window.sample)
    return base if window.size is None else f"{base}#y{window.top}x{window.left}s{window.size}"


def _reflect_pad(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad an (H, W, ...) array at the bottom / right to at least (height, width)."""
    pad_h, pad_w = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if not (pad_h or pad_w):
        return array
    return np.pad(array, [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2), mode="reflect")


def _cut(array: np.ndarray, window: Window) -> np.ndarray:
    """The window of an (H, W, ...) array, reflect-padded to the window size where the image is smaller."""
    if window.size is None:
        return array
    if window.padded is not None:
        array = _reflect_pad(array, *window.padded)
    out = array[window.top:window.top + window.size, window.left:window.left + window.size]
    if out.shape[0] < window.size or out.shape[1] < window.size:
        out = _reflect_pad(out, window.size, window.size)
    return out


class PatchDataset(Dataset):
    """Windows of images as classification samples, in the batch format of :mod:`crackseg.data.dataset`.

    Items: ``image`` (3, S, S) float in [0, 1] after ``transform``; ``mask`` zeros (1, S, S) and
    ``has_mask`` False (no pixel metrics); ``label``; ``path`` = :func:`window_id`; ``orig_size`` = the
    window's (height, width) inside the image (smaller than S where the image is). The last decoded image is
    kept, so evaluation (windows in image order) decodes each image once.

    Args:
        windows: the windows.
        transform: an albumentations ``Compose`` taking ``image=``, or None.
        random_transform: reseed ``transform`` before each item (training augmentation).
        variants: 1, or 8: item ``8 i + v`` is window ``i`` in symmetry ``v``
            (:func:`~crackseg.data.transforms.dihedral`), the paper's offline 8-fold enlargement.
    """

    def __init__(self, windows: Sequence[Window], transform: A.Compose | None = None,
                 random_transform: bool = False, variants: int = 1) -> None:
        if variants not in (1, SYMMETRIES):
            raise ValueError(f"variants must be 1 or {SYMMETRIES}, got {variants}")
        self.variants = variants
        self.windows = list(windows)
        self.transform = transform
        self.random_transform = random_transform
        self._cached: tuple[Sample, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.windows) * self.variants

    def labels(self) -> np.ndarray:
        """The items' labels (int64; each window's label repeated for its variants)."""
        return np.repeat(np.array([w.label for w in self.windows], dtype=np.int64), self.variants)

    def _image(self, sample: Sample) -> np.ndarray:
        if self._cached is None or self._cached[0] != sample:
            self._cached = (sample, crop_tile(read_image(sample.image), sample.tile))
        return self._cached[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index, variant = divmod(index, self.variants)
        window = self.windows[index]
        full = self._image(window.sample)
        image = dihedral(_cut(full, window), variant)
        if window.size is None:
            orig_size = image.shape[:2]
        else:
            height, width = window.padded or full.shape[:2]
            orig_size = (min(window.size, height - window.top), min(window.size, width - window.left))
            if variant % 2:  # a quarter turn swaps the extent of a partial window
                orig_size = orig_size[::-1]
        if self.transform is not None:
            if self.random_transform:
                seed_transform(self.transform)
            image = self.transform(image=image)["image"]
        image_t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
        return {
            "image": image_t,
            "mask": torch.zeros((1, *image_t.shape[-2:]), dtype=torch.float32),
            "has_mask": torch.tensor(False),
            "label": torch.tensor(window.label, dtype=torch.long),
            "path": window_id(window),
            "orig_size": torch.tensor(orig_size, dtype=torch.long),
        }


class PatchClassificationDataModule(CrackDataModule):
    """Sliding-window crack / no-crack patches of a segmentation dataset (König et al. §IV-A).

    The wrapped ``source`` datamodule says which images form the train / validation / test splits (its
    ``find_samples``, hold-out ``val_fraction`` / ``seed``, ``mask_threshold`` and ``check_files``); its
    batch and augmentation options are not used. Every image of a split is cut into windows of
    ``patch_size`` with ``stride`` (see :func:`window_starts` for the border), and a window is labelled
    crack (1) when at least ``min_crack_pixels`` of its mask pixels are crack, else 0. The masks are read once,
    at set-up, and only the labels are kept. Images without a mask keep their image-level label for every
    window when it is 0 (a crack-free image has crack-free windows); a crack image without mask cannot be
    cut (which window holds the crack?) and stops the set-up, unless ``patch_size`` is null: then every
    image is one sample with its image-level label (folders of labelled images such as METU / Özgenel,
    through the same augmentation).

    Batches are the usual dict (:class:`PatchDataset`): ``has_mask`` False (no pixel metrics), ``path`` =
    ``<image>#y<top>x<left>s<size>`` (not a file: give ``PredictionWriter`` ``save_overlay: false`` for
    windows). Training augmentation (§IV-C and the reference code): random
    rotation by multiples of 90° and flips (the paper's 8-fold rotation / flip augmentation of the training
    images, drawn online), colour jitter, and one of additive Gaussian or multiplicative noise per image.
    Evaluation windows are not augmented.

    Args:
        source: the segmentation datamodule whose images are cut (``{class_path: DeepCrackDataModule,
            init_args: {root: ...}}``).
        patch_size: window side (128 in the paper); null = whole images, one sample each.
        stride: window step (64 in the paper).
        border: ``"flush"``: a last window flush with the far border completes the cover (no padding
            unless the image is smaller than a window); ``"reflect"``: the reference code's reflect-padding
            of image and mask to a multiple of ``patch_size`` (reflected crack pixels count).
        min_crack_pixels: crack pixels a window needs to be labelled crack (1 in the paper).
        batch_size: training batch size (16 in the paper).
        eval_batch_size: validation / test / predict batch size (whole images of different sizes need 1).
        num_workers: data-loading worker processes.
        rotate90: random rotation by a multiple of 90° in training.
        flip: random horizontal and vertical flips in training.
        color_jitter: brightness / contrast / saturation jitter (0.2 in the reference code; 0 disables).
        hue_jitter: hue jitter (0.2 in the reference code).
        color_jitter_probability: probability of the colour jitter per window (0.75 in the reference code).
        enumerate_symmetries: enlarge the training windows 8-fold, each in its 4 rotations by 90° x 2 flips
            (the paper's offline enlargement, §IV-A; an epoch is 8 times longer); ``rotate90`` / ``flip`` then
            draw nothing more. False: one random symmetry per window and epoch (``rotate90`` and ``flip``).
        gauss_noise_std: largest standard deviation of the additive Gaussian noise, as a fraction of the
            intensity range (0.01 in the reference code; 0 disables).
        multiplicative_noise: the image is multiplied by a factor in [1 − m, 1 + m] (0.25 in the reference
            code; 0 disables).
        predict_path: image file or folder for ``crackseg predict`` (whole images, one score each); None
            predicts the test windows.
    """

    def __init__(
        self,
        source: CrackDataModule,
        patch_size: int | None = 128,
        stride: int = 64,
        border: Border = "flush",
        min_crack_pixels: int = 1,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        rotate90: bool = True,
        flip: bool = True,
        color_jitter: float = 0.2,
        hue_jitter: float = 0.2,
        color_jitter_probability: float = 0.75,
        enumerate_symmetries: bool = False,
        gauss_noise_std: float = 0.01,
        multiplicative_noise: float = 0.25,
        predict_path: str | os.PathLike | None = None,
    ) -> None:
        if not isinstance(source, CrackDataModule):
            raise ValueError("data.init_args.source must be a crackseg datamodule ({class_path: DeepCrackDataModule, "
                             f"init_args: {{root: ...}}}}), got {type(source).__name__}")
        if isinstance(source, PatchClassificationDataModule):
            raise ValueError("data.init_args.source must be a segmentation datamodule, not another "
                             "PatchClassificationDataModule")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"data.init_args.patch_size must be >= 1 or null, got {patch_size}")
        if stride < 1:
            raise ValueError(f"data.init_args.stride must be >= 1, got {stride}")
        if border not in ("flush", "reflect"):
            raise ValueError(f"data.init_args.border must be 'flush' or 'reflect', got {border!r}")
        if min_crack_pixels < 1:
            raise ValueError(f"data.init_args.min_crack_pixels must be >= 1, got {min_crack_pixels}")
        super().__init__(source.root, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, crop_size=None, rotate_limit=0.0, flip=flip,
                         color_jitter=color_jitter, val_fraction=source.val_fraction, seed=source.seed,
                         check_files=source.check_files, mask_threshold=source.mask_threshold,
                         predict_path=predict_path)
        self.source = source
        self.patch_size = patch_size
        self.stride = stride
        self.border = border
        self.min_crack_pixels = min_crack_pixels
        self.rotate90 = rotate90
        self.hue_jitter = hue_jitter
        if not 0.0 <= color_jitter_probability <= 1.0:
            raise ValueError("data.init_args.color_jitter_probability must be in [0, 1], got "
                             f"{color_jitter_probability}")
        self.gauss_noise_std = gauss_noise_std
        self.multiplicative_noise = multiplicative_noise
        self.enumerate_symmetries = enumerate_symmetries
        random_symmetries = not enumerate_symmetries
        self.transforms = {train: build_transform(train, None, None, 0.0, flip and random_symmetries, color_jitter,
                                                  rotate90=rotate90 and random_symmetries,
                                                  hue_jitter=hue_jitter, gauss_noise_std=gauss_noise_std,
                                                  multiplicative_noise=multiplicative_noise,
                                                  color_jitter_probability=color_jitter_probability)
                           for train in (True, False)}
        self.datasets: dict[str, Any] = {}

    # -- windows ---------------------------------------------------------------------------------
    def find_samples(self, split: str) -> list[Sample] | None:
        """The source's samples of ``split`` (before its hold-out)."""
        return self.source.find_samples(split)  # type: ignore[arg-type]

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def split_samples(self) -> dict[str, list[Sample]]:
        """The source's train / val / test samples (its hold-out and filters)."""
        return self.source.split_samples()

    def windows(self, samples: Sequence[Sample], split: str) -> list[Window]:
        """The windows of ``samples`` with their labels (masks are read here, once)."""
        windows: list[Window] = []
        size, stride = self.patch_size, self.stride
        for sample in samples:
            if size is None:
                windows.append(Window(sample, 0, 0, None, self.source._label(sample)))
                continue
            if sample.mask is None and sample.label != 0:
                raise DataError(
                    f"{sample_id(sample)} ({split} split of {type(self.source).__name__}) has no mask, so its "
                    f"{size}x{size} windows cannot be labelled (label {sample.label}): give masks, or set "
                    "data.init_args.patch_size: null to classify whole images by their image-level labels")
            mask = read_sample_mask(sample, self.mask_threshold) if sample.mask is not None else None
            if mask is not None:
                height, width = mask.shape
            else:
                height, width = image_size(sample.image)
                if sample.tile is not None:
                    top, bottom, left, right = tile_box(height, width, sample.tile)
                    height, width = bottom - top, right - left
            ys = window_starts(height, size, stride, self.border)
            xs = window_starts(width, size, stride, self.border)
            padded = None
            if self.border == "reflect":
                padded = (ys[-1] + size, xs[-1] + size)
                if mask is not None:
                    mask = _reflect_pad(mask, *padded)
            for top in ys:
                for left in xs:
                    if mask is None:
                        label = 0
                    else:
                        label = int(int(mask[top:top + size, left:left + size].sum()) >= self.min_crack_pixels)
                    windows.append(Window(sample, top, left, size, label, padded))
        return windows

    # -- set-up ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.predict_path is not None:
            self.datasets["predict"] = CrackDataset(predict_samples(self.predict_path), None, self.mask_threshold)
            return
        splits = self.split_samples()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            self.source.check_samples(splits[split], split)
            windows = self.windows(splits[split], split)
            variants = SYMMETRIES if split == "train" and self.enumerate_symmetries else 1
            self.datasets[split] = PatchDataset(windows, self.transforms[split == "train"],
                                                random_transform=split == "train", variants=variants)
            labels = self.datasets[split].labels()
            rank_zero_info(f"{type(self).__name__}: {split}: {len(windows)} "
                           f"{'images' if self.patch_size is None else f'{self.patch_size}px windows'} of "
                           f"{len(splits[split])} images, {int((labels == 1).sum())} crack, "
                           f"{int((labels == 0).sum())} no crack")
        if stage == "predict":
            self.datasets["predict"] = self.datasets["test"]

