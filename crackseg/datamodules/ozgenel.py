"""METU concrete crack images (Özgenel, 2018): 227x227 crops, ``Positive`` (crack) / ``Negative``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split, hold_out
from crackseg.datamodules.folder import attach_masks, check_fraction, folder_images, resolve_dir


class OzgenelDataModule(CrackDataModule):
    """METU / Özgenel concrete crack images, image-level labels, seeded train / test hold-out.

    Layout::

        root/
          Positive/*.jpg       images with a crack (label 1), 20 000 RGB 227x227 in the real set
          Negative/*.jpg       images without crack (label 0)
          <mask_dir>/<stem>.png  optional pixel masks for some positive images

    The dataset has no official split: a seeded ``test_fraction`` of each class is held out for
    testing and validation is a seeded ``val_fraction`` of the rest. Images are used whole
    (``crop_size`` None). Positive images without a mask get ``has_mask`` False; a mask whose stem
    matches no positive image is an error. For the unsupervised protocol set
    ``train_on_normal_only=True``: training then uses only Negative images, while validation (held out
    before the filter) and test contain both classes.

    Args:
        root: the dataset folder (holding ``Positive/`` and ``Negative/``).
        mask_dir: folder (relative to ``root`` or absolute) of ``<stem>.png`` masks of positive images.
        test_fraction: fraction of each class held out for testing (seeded by ``seed``).
        crop_size: side of the random training crop; None trains on the whole 227x227 images.
        **kwargs: options of :class:`CrackDataModule` (batch size, seed, ...).
    """

    def __init__(self, root: str | os.PathLike, mask_dir: str | os.PathLike | None = None,
                 test_fraction: float = 0.2, crop_size: int | None = None, **kwargs: Any) -> None:
        super().__init__(root, crop_size=crop_size, **kwargs)
        check_fraction("test_fraction", test_fraction)
        self.mask_dir = mask_dir
        self.test_fraction = test_fraction

    def all_samples(self) -> list[Sample]:
        """Positive then Negative samples, each sorted by name."""
        folders: dict[str, Path] = {name: self.root / name for name in ("Positive", "Negative")}
        missing = [str(path) for path in folders.values() if not path.is_dir()]
        if missing:
            raise DataError(f"Özgenel layout not found under {self.root}: expected Positive/ and Negative/ "
                            f"({', '.join(missing)} missing)")
        mask_dir = resolve_dir(self.root, self.mask_dir)
        if mask_dir is not None and not mask_dir.is_dir():
            raise DataError(f"data.mask_dir not found: {mask_dir}")
        positives = attach_masks([(p, 1, False) for p in folder_images(folders["Positive"])], mask_dir)
        negatives = [Sample(p, None, 0) for p in folder_images(folders["Negative"])]
        return positives + negatives

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        samples = self.all_samples()
        train, test = hold_out(samples, self.test_fraction, self.seed, groups=[s.label for s in samples])
        return train if split == "train" else test
