"""The one ``Dataset`` every datamodule builds: a list of samples and an albumentations pipeline.

A batch is a dict:

- ``image``: float32 (B, 3, H, W) in [0, 1], RGB (normalisation belongs to the model, so it is
  exported with it);
- ``mask``: float32 (B, 1, H, W) in {0, 1}, zeros where the sample has no mask;
- ``has_mask``: bool (B,);
- ``label``: int64 (B,), 1 = defective / crack, 0 = normal, -1 = unknown;
- ``path``: list of the image paths; ``orig_size``: int64 (B, 2), (height, width) on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from crackseg.data.io import DataError, read_image, read_mask


@dataclass(frozen=True)
class Sample:
    """One image on disk.

    Attributes:
        image: path of the image.
        mask: path of its ground-truth mask (image or CrackForest ``.mat``), or None.
        label: 1 = defective, 0 = normal, -1 = unknown (derived from the mask when there is one).
    """

    image: Path
    mask: Path | None = None
    label: int = -1


class CrackDataset(Dataset):
    """Reads samples, applies an albumentations transform, returns tensors (see module docstring).

    Args:
        samples: the samples.
        transform: an albumentations ``Compose`` taking ``image=`` and ``mask=``, or None.
        mask_threshold: grey level above which an image mask pixel is a crack.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[..., dict[str, Any]] | None = None,
                 mask_threshold: int = 127) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.mask_threshold = mask_threshold

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw RGB image and {0, 1} mask (None without mask) of sample ``index``."""
        sample = self.samples[index]
        image = read_image(sample.image)
        mask = None
        if sample.mask is not None:
            mask = read_mask(sample.mask, self.mask_threshold)
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but image {sample.image} is "
                    f"{image.shape[1]}x{image.shape[0]} (width x height)")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image, mask = self.load(index)
        orig_size = image.shape[:2]
        has_mask = mask is not None
        if mask is None:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        label = sample.label
        if label < 0 and has_mask:
            label = int(mask.any())
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image_t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
        mask_t = torch.from_numpy(np.require(mask, requirements=["C", "W"])).float()[None]
        return {
            "image": image_t,
            "mask": mask_t,
            "has_mask": torch.tensor(has_mask),
            "label": torch.tensor(label, dtype=torch.long),
            "path": str(sample.image),
            "orig_size": torch.tensor(orig_size, dtype=torch.long),
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` with a clear message when images of one batch differ in size."""
    sizes = {tuple(item["image"].shape[-2:]) for item in batch}
    if len(sizes) > 1:
        raise DataError(
            f"images of one batch differ in size {sorted(sizes)} ({batch[0]['path']}, ...): set the "
            "datamodule's eval_batch_size to 1 or give an image_size to resize them")
    return default_collate(batch)
