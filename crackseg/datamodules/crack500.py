"""Crack500 (Yang et al., 2019): 640x360 pavement crops with an official train / val / test split, or
the full-size training images cut into tiles (the MSFlow pre-training paper's unsupervised protocol)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from crackseg.data.dataset import Sample, crop_tile
from crackseg.data.io import DataError, read_mask
from crackseg.datamodules.base import CrackDataModule, Split
from crackseg.datamodules.folder import attach_masks, folder_images


class Crack500DataModule(CrackDataModule):
    """Crack500 in its distributed layout: the official split of the crops, or tiles of full images.

    Layout::

        root/
          traincrop/<id>.jpg   image
          traincrop/<id>.png   its mask, same folder and stem (crack > mask_threshold)
          valcrop/ ...
          testcrop/ ...
          train.txt            optional list files, one "image mask" pair of paths relative to
          val.txt              root per line; when a split's list file exists it is used instead
          test.txt             of the split's folder
          traindata/           the 250 full-size training images, <id>.jpg with <id>_mask.png or
                               <id>.png (protocol "grid"; a traindata/traindata/ folder is also found)

    ``protocol="official"`` uses the crops of ``traincrop`` / ``valcrop`` / ``testcrop`` (1896 / 348 /
    1124). Images are the ``.jpg`` / ``.jpeg`` files of a split folder and masks its ``.png`` files;
    every image needs a mask and every mask an image.

    ``protocol="grid"`` is the unsupervised protocol of the MSFlow pre-training paper (§III-A2): the
    images of ``grid_folder`` sorted by name, the first ``grid_train_images`` (150) forming the
    training pool and the rest (100) the test set, each cut into ``grid`` x ``grid`` (9) tiles: equal
    parts, the last row and column absorbing the remainder. A tile is normal when its part of the mask
    is empty. Validation is a seeded ``val_fraction`` of the training pool's tiles (tiles of one image
    may fall on both sides); ``train_on_normal_only`` keeps the crack-free training tiles, for the
    unsupervised model. The paper reports 613 normal + 744 crack training tiles and 321 + 527 test
    tiles (1357 and 848, not the 1350 and 900 that 150 and 100 images give, so its exact cut is
    unknown). A batch's ``path`` names the tile (``<image>#r<row>c<col>of<grid>``) and written
    predictions get an ``_r<row>c<col>`` suffix.

    Args:
        root: the Crack500 folder.
        protocol: ``"official"`` crop split, or ``"grid"`` tiles of full images (see above).
        grid: tiles per side in the grid protocol.
        grid_folder: folder of the full-size images (relative to ``root``), or a list file of
            "image mask" lines (paths relative to ``root``; the list's order is kept instead of
            sorting by name).
        grid_train_images: images (in order) whose tiles form the training pool; the rest are tested.
        **kwargs: options of :class:`CrackDataModule` (batch size, crops, seed, ...).
    """

    def __init__(self, root: str | os.PathLike, protocol: Literal["official", "grid"] = "official", grid: int = 3,
                 grid_folder: str = "traindata", grid_train_images: int = 150, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if protocol not in ("official", "grid"):
            raise ValueError(f"data.init_args.protocol must be 'official' or 'grid', got {protocol!r}")
        if grid < 1:
            raise ValueError(f"data.init_args.grid must be >= 1, got {grid}")
        if grid_train_images < 1:
            raise ValueError(f"data.init_args.grid_train_images must be >= 1, got {grid_train_images}")
        self.protocol = protocol
        self.grid = grid
        self.grid_folder = grid_folder
        self.grid_train_images = grid_train_images
        self._grid_images: list[Sample] | None = None

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

    def grid_images(self) -> list[Sample]:
        """The full-size images of ``grid_folder`` with their masks, in protocol order (cached)."""
        if self._grid_images is not None:
            return self._grid_images
        source = Path(self.grid_folder).expanduser()
        source = source if source.is_absolute() else self.root / source
        if source.is_file():
            samples = self.list_file_samples(source)
        else:
            if not source.is_dir():
                raise DataError(f"Crack500 grid protocol: data.init_args.grid_folder not found: {source} "
                                "(expected the full-size images, e.g. traindata/, or a list file)")
            nested = source / source.name  # archives unpack to traindata/traindata/
            if not folder_images(source, suffixes=(".jpg", ".jpeg")) and nested.is_dir():
                source = nested
            mask_suffix = "_mask.png" if any(p.name.lower().endswith("_mask.png") for p in source.iterdir()) \
                else ".png"
            images = [(path, -1, True) for path in folder_images(source, suffixes=(".jpg", ".jpeg"))]
            samples = attach_masks(images, source, mask_suffix=mask_suffix)
        if not samples:
            raise DataError(f"Crack500 grid protocol: no image found in {source}")
        self._grid_images = samples
        return samples

    def tiles(self, samples: Sequence[Sample]) -> list[Sample]:
        """The ``grid`` x ``grid`` tiles of each sample (row by row), labelled from the mask."""
        tiles = []
        for sample in samples:
            assert sample.mask is not None
            mask = read_mask(sample.mask, self.mask_threshold)
            if min(mask.shape) < self.grid:
                raise DataError(f"mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]}, too small to cut into a "
                                f"{self.grid}x{self.grid} grid")
            for row in range(self.grid):
                for col in range(self.grid):
                    tile = (row, col, self.grid)
                    tiles.append(Sample(sample.image, sample.mask, int(crop_tile(mask, tile).any()), tile))
        return tiles

    def find_samples(self, split: Split) -> list[Sample] | None:
        if self.protocol == "grid":
            if split == "val":
                return None
            images = self.grid_images()
            part = images[:self.grid_train_images] if split == "train" else images[self.grid_train_images:]
            return self.tiles(part)
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            return self.list_file_samples(list_file)
        folder = self.root / f"{split}crop"
        if not folder.is_dir():
            raise DataError(f"Crack500 layout not found under {self.root}: expected {split}crop/ "
                            f"(or a list file {split}.txt)")
        images = [(path, -1, True) for path in folder_images(folder, suffixes=(".jpg", ".jpeg"))]
        return attach_masks(images, folder, mask_suffix=".png")

    def check_samples(self, samples: Sequence[Sample], split: str) -> None:
        if not samples and self.protocol == "grid" and split == "test":
            raise DataError(f"the test split of Crack500DataModule under {self.root} is empty: "
                            f"data.init_args.grid_train_images={self.grid_train_images} takes all "
                            f"{len(self.grid_images())} images of {self.grid_folder}")
        super().check_samples(samples, split)
