"""Crack500 (Yang et al., 2019): 640x360 pavement crops, official train / val / test split."""

from __future__ import annotations

from pathlib import Path

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split
from crackseg.datamodules.folder import attach_masks, folder_images


class Crack500DataModule(CrackDataModule):
    """Crack500 in its distributed layout, official train / val / test split (1896 / 348 / 1124 crops).

    Layout::

        root/
          traincrop/<id>.jpg   image
          traincrop/<id>.png   its mask, same folder and stem (crack > mask_threshold)
          valcrop/ ...
          testcrop/ ...
          train.txt            optional list files, one "image mask" pair of paths relative to
          val.txt              root per line; when a split's list file exists it is used instead
          test.txt             of the split's folder

    Images are the ``.jpg`` / ``.jpeg`` files of a split folder and masks its ``.png`` files; every
    image needs a mask and every mask an image.

    Args:
        root: the Crack500 folder.
        **kwargs: options of :class:`CrackDataModule` (batch size, crops, seed, ...).
    """

    def list_file_samples(self, list_file: Path) -> list[Sample]:
        """Samples of a list file of ``image mask`` lines (paths relative to ``root``)."""
        samples = []
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{list_file}, line {number}: expected 'image mask', got {line.strip()!r}")
            image, mask = (self.root / part for part in parts)
            for path in (image, mask):
                if not path.is_file():
                    raise DataError(f"{list_file}, line {number}: file not found: {path}")
            samples.append(Sample(image, mask))
        return samples

    def find_samples(self, split: Split) -> list[Sample] | None:
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            return self.list_file_samples(list_file)
        folder = self.root / f"{split}crop"
        if not folder.is_dir():
            raise DataError(f"Crack500 layout not found under {self.root}: expected {split}crop/ "
                            f"(or a list file {split}.txt)")
        images = [(path, -1, True) for path in folder_images(folder, suffixes=(".jpg", ".jpeg"))]
        return attach_masks(images, folder, mask_suffix=".png")
