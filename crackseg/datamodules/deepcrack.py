"""DeepCrack (Liu et al., Neurocomputing 2019): pavement and concrete cracks, 300 train / 237 test."""

from __future__ import annotations

from pathlib import Path

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split
from crackseg.datamodules.folder import attach_masks, folder_images


class DeepCrackDataModule(CrackDataModule):
    """DeepCrack in its distributed layout, official train / test split.

    Layout::

        root/                  (or root/DeepCrack/)
          train_img/*.jpg      300 images, 544x384
          train_lab/*.png      binary masks of the same stem (crack > mask_threshold)
          test_img/*.jpg       237 images
          test_lab/*.png

    ``root`` may also be the parent folder holding ``DeepCrack/``. Validation is a seeded
    ``val_fraction`` of the training images. Every image needs a mask and every mask an image.

    Args:
        root: the DeepCrack folder, or its parent.
        **kwargs: options of :class:`CrackDataModule` (batch size, crops, seed, ...).
    """

    def dataset_dir(self) -> Path:
        """The folder holding ``train_img/`` (``root`` or ``root/DeepCrack``)."""
        for folder in (self.root, self.root / "DeepCrack"):
            if (folder / "train_img").is_dir() and (folder / "train_lab").is_dir():
                return folder
        raise DataError(f"DeepCrack layout not found under {self.root}: expected train_img/ and train_lab/ "
                        "(in root or in root/DeepCrack/)")

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        folder = self.dataset_dir()
        image_dir, mask_dir = folder / f"{split}_img", folder / f"{split}_lab"
        for path in (image_dir, mask_dir):
            if not path.is_dir():
                raise DataError(f"DeepCrack {split} folder not found: {path} "
                                f"(expected {split}_img/ and {split}_lab/ under {folder})")
        return attach_masks(((p, -1, True) for p in folder_images(image_dir)), mask_dir, ".png")
