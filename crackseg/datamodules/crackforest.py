"""CrackForest (CFD, Shi et al., IEEE T-ITS 2016): 118 labelled 480x320 road images, Beijing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crackseg.data.dataset import Sample
from crackseg.data.io import DataError
from crackseg.datamodules.base import CrackDataModule, Split, hold_out
from crackseg.datamodules.folder import attach_masks, check_fraction, folder_images


class CrackForestDataModule(CrackDataModule):
    """CrackForest in its distributed layout, with a seeded train / test hold-out.

    Layout::

        root/
          image/NNN.jpg         155 images, 480x320 (328 and 329 are 320x480)
          groundTruth/NNN.mat   MATLAB struct ``groundTruth`` with ``Segmentation`` (2 = crack)

    Only images with a ground-truth file are used (001-118 in the real set); unlabelled ones
    (201-208, 301-329) are skipped. A ``.mat`` file without image is an error. The dataset has no
    official split: a seeded ``test_fraction`` of the labelled images is held out for testing. The
    default 0.4 gives 71 training / 47 test images, the size of the 71-image training set of König
    et al. and close to the usual 72 / 46 protocol; validation is then a seeded ``val_fraction`` of the
    71. The few portrait images are kept as they are (evaluation runs with ``eval_batch_size`` 1).

    Args:
        root: the CrackForest folder (holding ``image/`` and ``groundTruth/``).
        test_fraction: fraction of the labelled images held out for testing (seeded by ``seed``).
        **kwargs: options of :class:`CrackDataModule` (batch size, crops, seed, ...).
    """

    def __init__(self, root: str | Path, test_fraction: float = 0.4, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        check_fraction("test_fraction", test_fraction)
        self.test_fraction = test_fraction

    def labelled_samples(self) -> list[Sample]:
        """Every image with a ground-truth file, sorted by name."""
        image_dir, mask_dir = self.root / "image", self.root / "groundTruth"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise DataError(f"CrackForest layout not found under {self.root}: "
                            "expected image/ and groundTruth/")
        images = [(path, -1, False) for path in folder_images(image_dir)]
        samples = attach_masks(images, mask_dir, mask_suffix=".mat")
        return [s for s in samples if s.mask is not None]

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        train, test = hold_out(self.labelled_samples(), self.test_fraction, self.seed)
        return train if split == "train" else test
