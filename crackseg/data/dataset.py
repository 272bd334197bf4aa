"""The one ``Dataset`` every datamodule builds: a list of samples and an albumentations pipeline.

A batch is a dict:

- ``image``: float32 (B, 3, H, W) in [0, 1], RGB (normalisation belongs to the model, so it is
  exported with it);
- ``mask``: float32 (B, 1, H, W) in {0, 1}, zeros where the sample has no mask;
- ``has_mask``: bool (B,): the mask is ground truth: read from the sample's mask file, or all zeros for a
  crack-free sample (label 0: METU / Özgenel negatives, MVTec ``good``, a folder's normal images). Such an
  image counts in every pixel metric, in threshold calibration and in the loss, as MVTec's evaluation and
  anomalib count it: a model that paints cracks on clean surfaces is charged for them. False only for a
  defective or unlabelled image without a mask file;
- ``label``: int64 (B,), 1 = defective / crack, 0 = normal, -1 = unknown;
- ``path``: list of the sample ids: the image path, followed by ``#r<row>c<col>of<grid>`` for a tile of
  a grid-cut image (:func:`sample_id`); ``orig_size``: int64 (B, 2), (height, width) on disk (of the
  tile for a tile).

A sample may be one tile of an image cut into a ``grid`` x ``grid`` grid (:attr:`Sample.tile`): the
image and mask are cropped to it when loaded, so the rest of the pipeline sees a smaller image.
A dataset can also put synthetic anomalies (:mod:`crackseg.data.anomalies`) on its normal images.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from crackseg.data.io import DataError, read_image, read_mask
from crackseg.data.transforms import SYMMETRIES, dihedral

if TYPE_CHECKING:
    from crackseg.data.anomalies import AnomalySynthesizer

Tile = tuple[int, int, int]
"""(row, column, grid): one cell of an image cut into ``grid`` x ``grid`` tiles."""

_TILE_ID = re.compile(r"^(?P<path>.*)#r(?P<row>\d+)c(?P<col>\d+)of(?P<grid>\d+)$")


@dataclass(frozen=True)
class Sample:
    """One image on disk, or one tile of it.

    Attributes:
        image: path of the image.
        mask: path of its ground-truth mask (image or CrackForest ``.mat``), or None.
        label: 1 = defective, 0 = normal, -1 = unknown (derived from the mask when there is one).
        tile: ``(row, col, grid)`` to use only that cell of the image cut into ``grid`` x ``grid``
            equal parts (the last row and column absorb the remainder, see :func:`tile_box`); None
            uses the whole image. The label of a tile is that of the tile's part of the mask.
    """

    image: Path
    mask: Path | None = None
    label: int = -1
    tile: Tile | None = None

    def __post_init__(self) -> None:
        if self.tile is not None:
            row, col, grid = self.tile
            if grid < 1 or not (0 <= row < grid and 0 <= col < grid):
                raise ValueError(f"tile {self.tile} of {self.image} is not a (row, col, grid) cell with "
                                 "0 <= row, col < grid")


def tile_box(height: int, width: int, tile: Tile) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of a tile: ``grid`` equal parts of ``size // grid`` pixels per
    axis, the last row / column absorbing the remainder (a 50-px side cut in 3 gives 16, 16, 18)."""
    row, col, grid = tile
    step_y, step_x = height // grid, width // grid
    bottom = height if row == grid - 1 else (row + 1) * step_y
    right = width if col == grid - 1 else (col + 1) * step_x
    return row * step_y, bottom, col * step_x, right


def crop_tile(array: np.ndarray, tile: Tile | None) -> np.ndarray:
    """The tile's part of an (H, W, ...) array (the array itself when ``tile`` is None)."""
    if tile is None:
        return array
    top, bottom, left, right = tile_box(array.shape[0], array.shape[1], tile)
    return array[top:bottom, left:right]


def sample_id(sample: Sample) -> str:
    """The batch ``path`` of a sample: the image path, plus ``#r<row>c<col>of<grid>`` for a tile."""
    if sample.tile is None:
        return str(sample.image)
    row, col, grid = sample.tile
    return f"{sample.image}#r{row}c{col}of{grid}"


def parse_sample_id(name: str) -> tuple[str, Tile | None]:
    """Inverse of :func:`sample_id`: (image path, tile or None)."""
    match = _TILE_ID.match(name)
    if match is None:
        return name, None
    return match["path"], (int(match["row"]), int(match["col"]), int(match["grid"]))


def seed_transform(transform: Any) -> None:
    """Reseed a random albumentations pipeline from torch's generator, before each item.

    Albumentations 2 draws its own seed from the operating system, out of reach of ``seed_everything``, so
    training augmentations would differ between two seeded runs; drawing the seed from torch's generator
    (seeded by ``seed_everything``, per DataLoader worker by torch, stored in checkpoints by
    :class:`~crackseg.checkpoint.RandomStateCheckpoint`) makes them reproducible. One generator is shared by
    all operations (``Compose.set_random_seed`` would give each the same seed, coupling e.g. the two flips).
    """
    if transform is None or not hasattr(transform, "set_random_state"):
        return
    seed = int(torch.randint(0, 2**63 - 1, (1,)).item())
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _check_tile_fits(sample: Sample, height: int, width: int) -> None:
    if sample.tile is not None and min(height, width) < sample.tile[2]:
        raise DataError(f"image {sample.image} is {width}x{height}, too small to cut into a "
                        f"{sample.tile[2]}x{sample.tile[2]} grid")


def read_sample_mask(sample: Sample, threshold: int = 127) -> np.ndarray:
    """The {0, 1} mask of a sample with a mask, cropped to its tile.

    Raises:
        DataError: the sample has no mask, or the mask file is missing / unreadable / too small.
    """
    if sample.mask is None:
        raise DataError(f"image {sample.image} has no mask")
    mask = read_mask(sample.mask, threshold)
    _check_tile_fits(sample, *mask.shape)
    return crop_tile(mask, sample.tile)


def load_sample(sample: Sample, mask_threshold: int = 127) -> tuple[np.ndarray, np.ndarray | None]:
    """The RGB image and {0, 1} mask (None without mask) of a sample, cropped to its tile.

    Raises:
        DataError: a file is missing or unreadable, the mask's size differs from the image's, or the
            image is smaller than the tile grid.
    """
    image = read_image(sample.image)
    mask = None
    if sample.mask is not None:
        mask = read_mask(sample.mask, mask_threshold)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]} but image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]} (width x height)")
        mask = np.ascontiguousarray(crop_tile(mask, sample.tile))
    _check_tile_fits(sample, *image.shape[:2])
    return np.ascontiguousarray(crop_tile(image, sample.tile)), mask


class CrackDataset(Dataset):
    """Reads samples, applies an albumentations transform, returns tensors (see module docstring).

    With a ``synthesizer`` the dataset serves a synthetic-anomaly segmentation task on normal
    images: after the transform (so anomaly sizes are relative to the network input), with
    probability ``synthetic_probability`` the synthesizer puts an anomaly on the image and the
    sample's mask becomes the anomaly mask (label 1); otherwise the mask is all zeros (label 0). Either
    way ``has_mask`` is True. A sample known to be defective (label 1, or a non-empty mask) raises a
    :class:`DataError`: its real defect would be labelled normal.

    Args:
        samples: the samples.
        transform: an albumentations ``Compose`` taking ``image=`` and ``mask=``, or None.
        mask_threshold: grey level above which an image mask pixel is a crack.
        synthesizer: a :class:`~crackseg.data.anomalies.AnomalySynthesizer`, or None for real labels.
        synthetic_probability: probability that a sample receives a synthetic anomaly.
        synthetic_seed: None draws fresh randomness per call from torch's RNG (so it differs between
            epochs and between DataLoader workers, which torch seeds apart); an int makes the anomaly
            of each index the same on every call (validation).
        random_transform: the transform is random (training augmentation): reseed it from torch's RNG
            before each item (:func:`seed_transform`), so seeded runs augment identically.
        variants: 1, or 8 for the 8-fold enlargement (König et al. §IV-A): item ``8 i + v`` is sample ``i``
            in symmetry ``v`` (:func:`~crackseg.data.transforms.dihedral`), applied before ``transform``.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[..., dict[str, Any]] | None = None,
                 mask_threshold: int = 127, synthesizer: AnomalySynthesizer | None = None,
                 synthetic_probability: float = 0.5, synthetic_seed: int | None = None,
                 random_transform: bool = False, variants: int = 1) -> None:
        if variants not in (1, SYMMETRIES):
            raise ValueError(f"variants must be 1 or {SYMMETRIES}, got {variants}")
        if not 0.0 <= synthetic_probability <= 1.0:
            raise ValueError(f"synthetic_probability must be in [0, 1], got {synthetic_probability}")
        self.samples = list(samples)
        self.transform = transform
        self.mask_threshold = mask_threshold
        self.synthesizer = synthesizer
        self.synthetic_probability = synthetic_probability
        self.synthetic_seed = synthetic_seed
        self.random_transform = random_transform
        self.variants = variants

    def __len__(self) -> int:
        return len(self.samples) * self.variants

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw RGB image and {0, 1} mask (None without mask) of sample ``index``, cropped to its tile."""
        return load_sample(self.samples[index], self.mask_threshold)

    def synthetic_rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index``'s synthetic anomaly (see ``synthetic_seed``)."""
        if self.synthetic_seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,)).item()))
        return np.random.default_rng([self.synthetic_seed % 2**64, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        index, variant = divmod(index, self.variants)
        sample = self.samples[index]
        image, mask = self.load(index)
        if variant:
            image, mask = dihedral(image, variant), None if mask is None else dihedral(mask, variant)
        orig_size = image.shape[:2]
        label = sample.label
        has_mask = mask is not None or label == 0  # a crack-free image's mask is known: all zeros
        if mask is None:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        if label < 0 and has_mask:
            label = int(mask.any())
        if self.synthesizer is not None and label == 1:
            raise DataError(f"synthetic anomalies are put on normal images only, but {sample_id(sample)} is "
                            "defective (label 1 or a non-empty mask)")
        if self.transform is not None:
            if self.random_transform:
                seed_transform(self.transform)
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.synthesizer is not None:
            rng = self.synthetic_rng(index)
            if rng.random() < self.synthetic_probability:
                image, mask = self.synthesizer(np.ascontiguousarray(image), rng)
            else:
                mask = np.zeros(image.shape[:2], dtype=np.uint8)
            has_mask, label = True, int(mask.any())
        image_t = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
        mask_t = torch.from_numpy(np.require(mask, requirements=["C", "W"])).float()[None]
        return {
            "image": image_t,
            "mask": mask_t,
            "has_mask": torch.tensor(has_mask),
            "label": torch.tensor(label, dtype=torch.long),
            "path": sample_id(sample),
            "orig_size": torch.tensor(orig_size, dtype=torch.long),
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` with a clear message when images of one batch differ in size."""
    sizes = {tuple(item["image"].shape[-2:]) for item in batch}
    if len(sizes) > 1:
        raise DataError(
            f"images of one batch differ in size {sorted(sizes)} ({batch[0]['path']}, ...): set the "
            "datamodule's eval_batch_size to 1 or give an image_size to resize them")
    if len(batch) == 1:  # no copy: a full-resolution predict image (288 MB at 6000 x 4000) is not duplicated
        return {key: value.unsqueeze(0) if isinstance(value, torch.Tensor) else default_collate([value])
                for key, value in batch[0].items()}
    return default_collate(batch)
