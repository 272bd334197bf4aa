"""Magnetic tile surface defects (Huang et al., 2018): 1344 grayscale images, MT_Free = defect-free."""

from __future__ import annotations

import os
from typing import Any

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split, hold_out
from crackseg.datamodules.folder import attach_masks, check_fraction, folder_images


class MagneticTileDataModule(CrackDataModule):
    """Magnetic tile defects in their distributed layout, with a seeded train / test hold-out.

    Layout::

        root/
          MT_Free/Imgs/<stem>.jpg       defect-free images (label 0), masks all empty
          MT_Free/Imgs/<stem>.png       the mask of each image, same folder and stem
          MT_Blowhole/Imgs/...          defect classes (label 1): Blowhole, Break, Crack, Fray, Uneven
          ...

    Images are grayscale (expanded to three channels) of varied size, so they are resized to
    ``image_size`` and used whole by default. Masks are binarised at ``mask_threshold``; every image
    needs a mask and every mask an image. Labels come from the class folder (four ``MT_Uneven``
    masks are empty but their images are still label 1).

    The default protocol is unsupervised (MVTec-like): a seeded ``test_fraction`` of ``MT_Free``
    plus every defective image form the test split, and training / validation (``val_fraction``) use
    the rest of ``MT_Free`` only. With ``supervised=True`` every class is split by ``test_fraction``
    instead and training contains all classes.

    Args:
        root: the dataset folder (holding the ``MT_*`` folders).
        supervised: hold out ``test_fraction`` of every class (True) or train on ``MT_Free`` only.
        test_fraction: fraction held out for testing, of ``MT_Free`` or of every class (seeded by ``seed``).
        crop_size: side of the random training crop; None trains on whole (resized) images.
        image_size: (height, width) all images are resized to.
        **kwargs: options of :class:`CrackDataModule` (batch size, seed, ...).
    """

    normal_class = "MT_Free"

    def __init__(self, root: str | os.PathLike, supervised: bool = False, test_fraction: float = 0.2,
                 crop_size: int | None = None, image_size: tuple[int, int] | None = (256, 256),
                 **kwargs: Any) -> None:
        super().__init__(root, crop_size=crop_size, image_size=image_size, **kwargs)
        check_fraction("test_fraction", test_fraction)
        self.supervised = supervised
        self.test_fraction = test_fraction

    def class_samples(self) -> dict[str, list[Sample]]:
        """Samples of each ``MT_<class>`` folder, by folder name."""
        classes = sorted(p for p in self.root.glob("MT_*") if p.is_dir())
        if self.normal_class not in {p.name for p in classes}:
            raise DataError(f"magnetic tile layout not found under {self.root}: expected "
                            f"{self.normal_class}/Imgs/ and MT_<defect>/Imgs/ folders")
        samples = {}
        for folder in classes:
            images = folder / "Imgs"
            if not images.is_dir():
                raise DataError(f"magnetic tile class folder {folder} has no Imgs/ folder")
            label = 0 if folder.name == self.normal_class else 1
            samples[folder.name] = attach_masks(
                [(p, label, True) for p in folder_images(images, suffixes=(".jpg", ".jpeg"))], images)
        return samples

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        classes = self.class_samples()
        if self.supervised:  # every class split by test_fraction
            pool = [(name, s) for name, samples in classes.items() for s in samples]
            train, test = hold_out([s for _, s in pool], self.test_fraction, self.seed,
                                   groups=[name for name, _ in pool])
        else:  # MT_Free split, every defective image tested
            train, test = hold_out(classes[self.normal_class], self.test_fraction, self.seed)
            test += [s for name, samples in classes.items() if name != self.normal_class for s in samples]
        return train if split == "train" else test
