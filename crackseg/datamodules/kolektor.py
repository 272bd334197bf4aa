"""KolektorSDD2 (Božič et al., 2021): electrical commutator surfaces, official train / test split."""

from __future__ import annotations

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split
from crackseg.datamodules.folder import attach_masks, folder_images


class KolektorSDD2DataModule(CrackDataModule):
    """KolektorSDD2 in its distributed layout, official train / test split.

    Layout::

        root/
          train/<id>.png       image (about 230x630)
          train/<id>_GT.png    its defect mask, same folder (grey or RGB, 0/255; may be empty)
          test/<id>.png
          test/<id>_GT.png

    The label of an image is 1 when its mask has a defect pixel, 0 otherwise (so
    ``train_on_normal_only`` trains on the defect-free images). Validation is a seeded
    ``val_fraction`` of the training images. Every image needs a mask and every mask an image.

    Args:
        root: the KolektorSDD2 folder (holding ``train/`` and ``test/``).
        **kwargs: options of :class:`CrackDataModule` (batch size, crops, seed, ...).
    """

    mask_suffix = "_GT.png"

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        folder = self.root / split
        if not folder.is_dir():
            raise DataError(f"KolektorSDD2 layout not found under {self.root}: expected train/ and test/ "
                            f"({folder} is missing)")
        images = [(path, -1, True) for path in folder_images(folder, mask_suffix=self.mask_suffix)]
        return attach_masks(images, folder, mask_suffix=self.mask_suffix)
