"""Base class of every datamodule: splits, validation of files, loaders, prediction inputs.

A concrete datamodule only says where a split's samples are (:meth:`CrackDataModule.find_samples`);
everything else (seeded hold-out validation, normal-only training, augmentation, synthetic anomalies,
file checks, the prediction folder) lives here once.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler

from crackseg.data.anomalies import AnomalySynthesizer
from crackseg.data.dataset import CrackDataset, Sample, collate, read_sample_mask, sample_id
from crackseg.data.io import (
    DataError,
    image_size,
    is_image_file,
    list_images,
    read_image,
    read_mask,
    read_mask_levels,
)
from crackseg.data.transforms import SYMMETRIES, build_transform

Split = Literal["train", "val", "test"]


class CrackDataModule(LightningDataModule):
    """Common datamodule logic; subclasses implement :meth:`find_samples`.

    Args:
        root: dataset folder, in the layout the dataset is distributed in.
        batch_size: training batch size.
        eval_batch_size: validation / test / predict batch size (1 handles images of varied size).
        num_workers: data-loading worker processes.
        crop_size: side of the random training crop; None trains on whole (resized) images.
        image_size: (height, width) all images are resized to; None keeps the size on disk.
        rotate_limit: training rotation range [0, rotate_limit] degrees.
        flip: random horizontal / vertical flips in training.
        color_jitter: colour jitter strength in training (0 = off).
        rotate90: random rotations by multiples of 90° in training (no interpolation, no border).
        scale_jitter: random rescaling in training by a factor in [1 - s, 1 + s], before the crop (0 = off).
        blur_probability: probability of a Gaussian or motion blur in training (0 = off).
        gamma_jitter: random gamma in [1 - g, 1 + g] in training (0 = off).
        train_images: train on a seeded random subset of this many training images (after the validation
            hold-out; learning curves, few-label studies); None = all.
        val_fraction: fraction of the training images held out for validation when the dataset has no
            official validation split (seeded, so every run holds out the same images).
        seed: seed of the hold-out split.
        train_on_normal_only: drop defective images from the training split (unsupervised methods).
        check_files: ``"full"`` decodes every image and mask of the splits in use at set-up, so a
            missing, truncated or mismatched file stops the run before the first training step (about
            1–3 ms per image); ``"header"`` only opens headers (fast, but a file truncated after its
            header fails later, mid-epoch); ``"none"`` skips the checks.
        mask_threshold: grey level above which an image-mask pixel is a crack.
        predict_path: image file or folder for ``crackseg predict``; None predicts the test split. When the
            model tiles (``model.init_args.predict_tile_size``), predict images are loaded at their size on
            disk (``image_size`` is ignored) one at a time (``eval_batch_size`` is ignored).
        synthetic_anomalies: a synthetic-anomaly operation (``{class_path: CutPaste}``,
            ``{class_path: PoissonBlend, init_args: {source: {class_path: DeepCrackDataModule, ...}}}``,
            see :mod:`crackseg.data.anomalies`) turning the splits of ``synthetic_splits`` into a
            synthetic-anomaly segmentation task (self-supervised pre-training): each image receives an
            anomaly with probability ``synthetic_probability`` after augmentation, its mask becomes the
            anomaly's mask (label 1), and images left untouched get an empty mask (label 0). Training
            anomalies are random (new every epoch, different per worker); validation anomalies are
            seeded by ``seed`` (the same every epoch). Test and predict images stay real. Only normal
            images may receive anomalies (a real defect would be labelled normal): the training split
            must hold no defective image (MVTec AD, magnetic tile and unsupervised synthetic data are
            normal-only; elsewhere set ``train_on_normal_only``), else set-up stops naming one; the
            validation split, which has no such switch, keeps only its normal images. None = real
            labels.
        synthetic_probability: probability that an image of a synthetic split receives an anomaly.
            The MSFlow pre-training paper does not give it; 0.5 as in DRAEM (Zavrtanik et al. 2021).
        synthetic_splits: the splits that receive synthetic anomalies, among ``train`` and ``val``.
        gauss_noise_std: training Gaussian noise (largest standard deviation as a fraction of the intensity
            range; 0 = off), as König et al. add to their segmentation training (§IV-E).
        multiplicative_noise: training multiplicative noise strength (factors in [1 - m, 1 + m]; 0 = off);
            with both noises on, one of them is applied per image.
        enumerate_symmetries: enlarge the training split 8-fold: every image in its 4 rotations by 90° x 2
            flips, before the random augmentation (König et al.'s offline enlargement, §IV-A; an epoch is 8
            times longer). The random ``flip`` is then off; ``rotate_limit`` still applies. A quarter turn
            swaps a non-square image's sides, so a non-square ``image_size`` needs a ``crop_size``.
        shuffle: shuffle the training images every epoch (under DDP Lightning's ``DistributedSampler``
            shuffles, seeded by ``seed_everything``); false reads them in order, under DDP too (process r of
            N gets images r, r + N, ...: the same global batches with 1 or N processes).
        on_unreadable: what ``crackseg predict`` does with an image that cannot be decoded (truncated JPEG,
            empty or non-image file): ``"skip"`` leaves it out with one warning line and lists it in the
            writer's ``skipped.csv``; ``"error"`` stops before predicting. Zero readable images is always an
            error; fit / test always stop early, before training, naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        crop_size: int | None = 256,
        image_size: tuple[int, int] | None = None,
        rotate_limit: float = 90.0,
        flip: bool = True,
        color_jitter: float = 0.0,
        rotate90: bool = False,
        scale_jitter: float = 0.0,
        blur_probability: float = 0.0,
        gamma_jitter: float = 0.0,
        train_images: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        train_on_normal_only: bool = False,
        check_files: Literal["full", "header", "none"] = "full",
        mask_threshold: int = 127,
        predict_path: str | os.PathLike | None = None,
        synthetic_anomalies: AnomalySynthesizer | None = None,
        synthetic_probability: float = 0.5,
        synthetic_splits: Sequence[str] = ("train", "val"),
        gauss_noise_std: float = 0.0,
        multiplicative_noise: float = 0.0,
        enumerate_symmetries: bool = False,
        shuffle: bool = True,
        on_unreadable: Literal["skip", "error"] = "skip",
    ) -> None:
        super().__init__()
        if on_unreadable not in ("skip", "error"):
            raise ValueError(f"data.init_args.on_unreadable must be 'skip' or 'error', got {on_unreadable!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"data.crop_size must be >= 1 or null, got {crop_size}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"data.image_size must be [height, width] >= 1, got {image_size}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if synthetic_anomalies is not None and not isinstance(synthetic_anomalies, AnomalySynthesizer):
            raise ValueError("data.init_args.synthetic_anomalies must be an AnomalySynthesizer ({class_path: "
                             "CutPaste} or {class_path: PoissonBlend, ...}), got "
                             f"{type(synthetic_anomalies).__name__}")
        if not 0.0 <= synthetic_probability <= 1.0:
            raise ValueError(f"data.init_args.synthetic_probability must be in [0, 1], got {synthetic_probability}")
        if isinstance(synthetic_splits, str) or not set(synthetic_splits) <= {"train", "val"}:
            raise ValueError("data.init_args.synthetic_splits must be a list of 'train' and / or 'val', got "
                             f"{synthetic_splits!r}")
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        self.image_size = tuple(image_size) if image_size is not None else None
        self.rotate_limit = rotate_limit
        self.flip = flip
        self.color_jitter = color_jitter
        if train_images is not None and (isinstance(train_images, bool) or train_images < 1):
            raise ValueError(f"data.init_args.train_images must be an integer >= 1 or null, got {train_images!r}")
        self.augment_options = {"rotate90": rotate90, "scale_jitter": scale_jitter,
                                "blur_probability": blur_probability, "gamma_jitter": gamma_jitter}
        build_transform(True, **self.augment_options)  # bad strengths fail here, naming the option
        self.train_images = train_images
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_on_normal_only = train_on_normal_only
        self.check_files = check_files
        self.mask_threshold = mask_threshold
        self.predict_path = Path(predict_path).expanduser() if predict_path is not None else None
        self.synthetic_anomalies = synthetic_anomalies
        self.synthetic_probability = synthetic_probability
        self.synthetic_splits = tuple(synthetic_splits)
        for name, value in (("gauss_noise_std", gauss_noise_std), ("multiplicative_noise", multiplicative_noise)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.init_args.{name} must be in [0, 1), got {value}")
        self.gauss_noise_std = gauss_noise_std
        self.multiplicative_noise = multiplicative_noise
        if enumerate_symmetries and crop_size is None and image_size is not None and image_size[0] != image_size[1]:
            raise ValueError(f"data.init_args.enumerate_symmetries turns images by 90°, which the non-square "
                             f"data.init_args.image_size {list(image_size)} would stretch back: set a crop_size")
        self.enumerate_symmetries = enumerate_symmetries
        self.shuffle = shuffle
        self.on_unreadable = on_unreadable
        self.datasets: dict[str, CrackDataset] = {}
        #: (sample id, reason) of the predict images left out as unreadable (``on_unreadable: skip``).
        self.skipped: list[tuple[str, str]] = []

    # -- to implement -------------------------------------------------------------------------
    def find_samples(self, split: Split) -> list[Sample] | None:
        """The samples of ``split`` as laid out under ``root``.

        Return None for ``"val"`` when the dataset has no official validation split: a seeded
        ``val_fraction`` of the training samples is then held out.
        """
        raise NotImplementedError

    def prepare_root(self) -> None:
        """Create data under ``root`` if the datamodule generates it (synthetic data); no-op otherwise."""

    # -- set-up -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.prepare_root()

    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise DataError(f"dataset root not found: {self.root} (set data.init_args.root)")

    def split_samples(self) -> dict[str, list[Sample]]:
        """Train / val / test samples after hold-out and normal-only filtering (no file checks).

        Raises:
            DataError: synthetic anomalies are requested on a training split with a defective image.
        """
        self._require_root()
        train = self.find_samples("train") or []
        val = self.find_samples("val")
        if val is None:
            train, val = hold_out(train, self.val_fraction, self.seed) if self.val_fraction > 0 else (train, [])
        if self.train_on_normal_only:
            train = [s for s in train if self._label(s) == 0]
        if self.train_images is not None:
            train = self._subset(train)
        if self.synthetic_anomalies is not None:
            if "train" in self.synthetic_splits and not self.train_on_normal_only:
                defective = next((s for s in train if self._label(s) == 1), None)
                if defective is not None:
                    raise DataError(
                        f"synthetic anomalies are put on normal images only, but the train split of "
                        f"{type(self).__name__} under {self.root} holds defective images (e.g. "
                        f"{sample_id(defective)}): set data.init_args.train_on_normal_only=true, or leave "
                        "train out of data.init_args.synthetic_splits")
            if "val" in self.synthetic_splits:
                val = [s for s in val if self._label(s) != 1]
        test = self.find_samples("test") or []
        return {"train": train, "val": val, "test": test}

    def _subset(self, train: list[Sample]) -> list[Sample]:
        if self.train_images > len(train):
            raise DataError(f"data.init_args.train_images is {self.train_images} but the train split of "
                            f"{type(self).__name__} under {self.root} holds {len(train)} images")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed)).tolist()
        return [train[i] for i in sorted(order[:self.train_images])]

    def _label(self, sample: Sample) -> int:
        """The sample's label, derived from its mask (cropped to its tile) when unknown."""
        if sample.label >= 0 or sample.mask is None:
            return sample.label
        return int(read_sample_mask(sample, self.mask_threshold).any())

    def check_samples(self, samples: Sequence[Sample], split: str) -> None:
        """Raise a :class:`DataError` naming the file if a sample is missing, unreadable or mismatched."""
        if not samples:
            hint = ""
            if split == "val" and self.find_samples("val") is None:
                hint = f" (data.val_fraction={self.val_fraction} holds out no training image)"
            elif split == "train" and self.train_on_normal_only:
                hint = " (data.train_on_normal_only=true left no normal image)"
            elif split == "val" and self.synthetic_anomalies is not None and "val" in self.synthetic_splits:
                hint = " (synthetic anomalies keep only its normal images)"
            raise DataError(f"the {split} split of {type(self).__name__} under {self.root} is empty{hint}")
        if self.check_files == "none":
            return
        dataset = CrackDataset(samples, None, self.mask_threshold)
        checked: set[tuple] = set()  # tiles of one image share its files: check them once
        for index, sample in enumerate(samples):
            key = (sample.image, sample.mask, sample.tile[2] if sample.tile else None)
            if key in checked:
                continue
            checked.add(key)
            if self.check_files == "full":
                dataset.load(index)
                continue
            size = image_size(sample.image)
            if sample.tile is not None and min(size) < sample.tile[2]:
                raise DataError(f"image {sample.image} is {size[1]}x{size[0]}, too small to cut into a "
                                f"{sample.tile[2]}x{sample.tile[2]} grid")
            if sample.mask is not None:
                mask_size = image_size(sample.mask)
                if mask_size != size:
                    raise DataError(
                        f"mask {sample.mask} is {mask_size[1]}x{mask_size[0]} but image {sample.image} is "
                        f"{size[1]}x{size[0]} (width x height)")

    def readable_predict_samples(self, samples: Sequence[Sample]) -> list[Sample]:
        """The predict samples whose image decodes (``check_files``: ``"full"`` decodes, ``"header"`` opens the
        header, ``"none"`` trusts them); unreadable ones are skipped into :attr:`skipped` with one warning line
        each (``on_unreadable: skip``) or raise (``"error"``).

        Raises:
            DataError: an image is unreadable and ``on_unreadable`` is ``"error"``, or none is readable.
        """
        self.skipped = []
        if self.check_files == "none":
            return list(samples)
        readable, checked = [], {}
        for sample in samples:
            if sample.image not in checked:
                try:
                    read_image(sample.image) if self.check_files == "full" else image_size(sample.image)
                    checked[sample.image] = None
                except DataError as err:
                    if self.on_unreadable == "error":
                        raise DataError(f"{err} (data.init_args.on_unreadable=error; 'skip' leaves such files "
                                        "out of predict)") from None
                    checked[sample.image] = str(err)
                    rank_zero_warn(f"skipping unreadable image: {err}")
            if checked[sample.image] is None:
                readable.append(sample)
            else:
                self.skipped.append((sample_id(sample), str(checked[sample.image])))
        if not readable:
            raise DataError(f"none of the {len(samples)} predict images is readable (e.g. {self.skipped[0][1]})")
        return readable

    def _train_on_normals(self) -> bool:
        """Whether the training split holds normal images only by design (empty masks expected)."""
        return self.train_on_normal_only or (self.synthetic_anomalies is not None
                                             and "train" in self.synthetic_splits)

    def warn_if_masks_empty(self, samples: Sequence[Sample], split: str) -> None:
        """Warn when the split has mask files and every one of them reads as empty.

        Masks are read until one shows a crack (usually the first), so this costs one file in the common
        case. All-empty masks on a split that is trained or tested on usually mean the masks are drawn in
        grey levels at or below ``mask_threshold`` (e.g. 0 / 1 / 2 class ids, or a dark palette colour):
        the warning names the option and the grey levels found in the first mask file.
        """
        masks = list(dict.fromkeys(s.mask for s in samples if s.mask is not None))
        if not masks:
            return
        for mask in masks:
            if read_mask(mask, self.mask_threshold).any():
                return
        levels = np.unique(read_mask_levels(masks[0])).tolist()
        shown = ", ".join(map(str, levels[:16])) + (", ..." if len(levels) > 16 else "")
        rank_zero_warn(
            f"every one of the {len(masks)} mask files of the {split} split of {type(self).__name__} under "
            f"{self.root} is empty at data.init_args.mask_threshold={self.mask_threshold} (pixels above it are "
            f"cracks); {masks[0]} holds the grey levels [{shown}]: lower mask_threshold if cracks are drawn "
            "in one of them")

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" and self.predict_path is not None:
            samples = self.readable_predict_samples(predict_samples(self.predict_path))
            self.datasets["predict"] = self._dataset(samples, "predict")
            return
        splits = self.split_samples()
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in wanted.get(stage, ("train", "val", "test")) if stage else ("train", "val", "test"):
            self.check_samples(splits[split], split)
            if split == "test" or split == "train" and not self._train_on_normals():
                self.warn_if_masks_empty(splits[split], split)
            self.datasets[split] = self._dataset(splits[split], split)
        if stage == "predict":
            self.datasets["predict"] = (self._dataset(splits["test"], "predict") if self.predict_full_resolution()
                                        else self.datasets["test"])

    def predict_full_resolution(self) -> bool:
        """Whether the attached model predicts full-resolution images by tiles (``predict_tile_size``)."""
        trainer = self.trainer
        model = trainer.lightning_module if trainer is not None else None
        return bool(getattr(model, "predict_full_resolution", False))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Leave a full-resolution predict image on the CPU: the model copies its tiles to the device a batch at
        a time, so the device never holds the whole image."""
        trainer = self.trainer
        if trainer is None or not trainer.predicting or not isinstance(batch, dict) or "image" not in batch \
                or not self.predict_full_resolution():
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        moved = super().transfer_batch_to_device({k: v for k, v in batch.items() if k != "image"}, device,
                                                 dataloader_idx)
        return {**moved, "image": batch["image"]}

    def _dataset(self, samples: Sequence[Sample], split: str) -> CrackDataset:
        image_size = None if split == "predict" and self.predict_full_resolution() else self.image_size
        variants = SYMMETRIES if split == "train" and self.enumerate_symmetries else 1
        flip = self.flip and variants == 1  # the 8 enumerated symmetries replace the random flips
        transform = build_transform(split == "train", self.crop_size, image_size, self.rotate_limit, flip,
                                    self.color_jitter, gauss_noise_std=self.gauss_noise_std,
                                    multiplicative_noise=self.multiplicative_noise, **self.augment_options)
        if self.synthetic_anomalies is None or split not in self.synthetic_splits:
            return CrackDataset(samples, transform, self.mask_threshold, random_transform=split == "train",
                                variants=variants)
        self.synthetic_anomalies.prepare()  # before loaders fork their workers
        return CrackDataset(samples, transform, self.mask_threshold, synthesizer=self.synthetic_anomalies,
                            synthetic_probability=self.synthetic_probability,
                            synthetic_seed=None if split == "train" else self.seed, random_transform=split == "train",
                            variants=variants)

    # -- loaders ------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        train = split == "train"
        batch_size = self.batch_size if train else self.eval_batch_size
        if split == "predict" and self.predict_full_resolution():
            batch_size = 1  # one full-resolution image in memory at a time
        sampler = None
        sampler_kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if train and not shuffle and sampler_kwargs:
            # in order under DDP too: Lightning's own DistributedSampler always shuffles the training split
            sampler = DistributedSampler(self.datasets[split], shuffle=False, **sampler_kwargs)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            drop_last=train and len(self.datasets[split]) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)


def hold_out(samples: Sequence[Sample], fraction: float, seed: int,
             groups: Sequence[Hashable] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into (kept, held out), holding out a seeded ``fraction``.

    The same samples (in the same order) and seed always hold out the same images; both parts keep
    the order of ``samples``.

    Args:
        samples: the samples.
        fraction: fraction held out (rounded; a group of two or more samples keeps at least one and
            holds out at least one).
        seed: seed of the random choice.
        groups: a key per sample (label, class name) to hold out ``fraction`` of each group
            separately (stratified); None treats all samples as one group.
    """
    if groups is None:
        groups = [0] * len(samples)
    if len(groups) != len(samples):
        raise ValueError(f"hold_out got {len(groups)} group keys for {len(samples)} samples")
    rng = np.random.default_rng(seed)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(groups):
        members.setdefault(key, []).append(index)
    held: set[int] = set()
    for indices in members.values():
        n_held = int(round(fraction * len(indices)))
        if len(indices) >= 2:
            n_held = min(max(n_held, 1), len(indices) - 1)
        order = rng.permutation(len(indices))
        held.update(indices[i] for i in order[:n_held].tolist())
    kept = [s for i, s in enumerate(samples) if i not in held]
    return kept, [s for i, s in enumerate(samples) if i in held]


def predict_samples(path: Path) -> list[Sample]:
    """Samples (no masks) for a single image file or every image of a folder tree."""
    if path.is_file():
        if not is_image_file(path):
            raise DataError(f"not an image file: {path}")
        return [Sample(path)]
    if not path.is_dir():
        raise DataError(f"prediction input not found: {path} (set data.init_args.predict_path)")
    images = list_images(path, recursive=True)
    if not images:
        raise DataError(f"no images found under {path}")
    return [Sample(p) for p in images]
