"""MVTec AD (Bergmann et al., CVPR 2019): one category, defect-free training, pixel masks of defects."""

from __future__ import annotations

import os
from typing import Any

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split
from crackseg.datamodules.folder import attach_masks, folder_images


class MVTecADDataModule(CrackDataModule):
    """One MVTec AD category in its distributed layout, official train / test split.

    Layout::

        root/<category>/
          train/good/*.png                      defect-free training images (label 0)
          test/good/*.png                       defect-free test images (label 0, no mask)
          test/<defect>/*.png                   defective test images (label 1)
          ground_truth/<defect>/<stem>_mask.png   their masks

    Validation is a seeded ``val_fraction`` of ``train/good`` (defect-free only). The test split is
    all of ``test/``. Every defective image needs a mask and every mask an image. Grayscale categories
    are expanded to three channels.

    Args:
        root: the MVTec AD folder (holding one folder per category).
        category: the category, e.g. ``"tile"``, ``"carpet"``, ``"bottle"``.
        crop_size: side of the random training crop; None trains on whole (resized) images.
        image_size: (height, width) all images are resized to.
        **kwargs: options of :class:`CrackDataModule` (batch size, seed, ...).
    """

    def __init__(self, root: str | os.PathLike, category: str, crop_size: int | None = None,
                 image_size: tuple[int, int] | None = (256, 256), **kwargs: Any) -> None:
        super().__init__(root, crop_size=crop_size, image_size=image_size, **kwargs)
        self.category = category

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        folder = self.root / self.category
        if not (folder / "train" / "good").is_dir() or not (folder / "test").is_dir():
            found = sorted(p.name for p in self.root.iterdir() if (p / "train" / "good").is_dir())
            raise DataError(f"MVTec AD category {self.category!r} not found under {self.root}: expected "
                            f"{folder}/train/good/ and {folder}/test/ (categories found: "
                            f"{', '.join(found) or 'none'})")
        if split == "train":
            return attach_masks(((p, 0, False) for p in folder_images(folder / "train" / "good")), None)
        samples: list[Sample] = []
        defects = sorted(p for p in (folder / "test").iterdir() if p.is_dir() and not p.name.startswith("."))
        for defect_dir in defects:
            if defect_dir.name == "good":
                samples += attach_masks(((p, 0, False) for p in folder_images(defect_dir)), None)
                continue
            mask_dir = folder / "ground_truth" / defect_dir.name
            if not mask_dir.is_dir():
                raise DataError(f"MVTec AD masks of {defect_dir} not found: expected {mask_dir}/")
            samples += attach_masks(((p, 1, True) for p in folder_images(defect_dir)), mask_dir, "_mask.png")
        gt_dir = folder / "ground_truth"
        if gt_dir.is_dir():
            extra = sorted(p for p in gt_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                           and not (folder / "test" / p.name).is_dir())
            if extra:
                raise DataError(f"masks {extra[0]} have no test images {folder / 'test' / extra[0].name}/")
        return samples
