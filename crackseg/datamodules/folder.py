"""A user's own images in plain folders, plus the folder helpers the layout datamodules share.

The helpers (:func:`folder_images`, :func:`attach_masks`, :func:`hold_out`) are used by the
dataset-specific datamodules whose images and masks live in one folder (Crack500, KolektorSDD2,
magnetic tile) or that have no official test split (CrackForest, Özgenel, magnetic tile).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crackseg.data.dataset import Sample
from crackseg.data.io import IMAGE_EXTENSIONS, DataError, list_images
from crackseg.datamodules.base import CrackDataModule, Split, hold_out


def check_fraction(name: str, value: float) -> None:
    """Raise a ValueError unless ``0 < value < 1`` (a hold-out fraction)."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"data.{name} must be in (0, 1), got {value}")


def resolve_dir(root: Path, folder: str | os.PathLike | None) -> Path | None:
    """``folder`` relative to ``root`` (absolute and ``~`` paths are kept); None stays None."""
    if folder is None:
        return None
    path = Path(folder).expanduser()
    return path if path.is_absolute() else root / path


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`DataError` naming it and ``what`` it should hold."""
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")
    return path


def _mask_suffix_of(name: str, mask_suffix: str) -> bool:
    return name.lower().endswith(mask_suffix.lower()) and len(name) > len(mask_suffix)


def folder_images(folder: Path, suffixes: Sequence[str] = IMAGE_EXTENSIONS,
                  mask_suffix: str | None = None) -> list[Path]:
    """Sorted images of ``folder`` with one of ``suffixes``, leaving out masks stored beside them.

    Args:
        folder: the folder (not searched recursively).
        suffixes: image suffixes to keep (lower case), e.g. ``(".jpg",)`` where masks are ``.png``.
        mask_suffix: names ending with it are masks, not images (e.g. ``"_GT.png"``), when masks share
            the images' folder.

    Raises:
        DataError: the folder does not exist.
    """
    images = [p for p in list_images(folder) if p.suffix.lower() in suffixes]
    if mask_suffix is not None:
        images = [p for p in images if not _mask_suffix_of(p.name, mask_suffix)]
    return images


def attach_masks(images: Iterable[tuple[Path, int, bool]], mask_dir: Path | None,
                 mask_suffix: str = ".png") -> list[Sample]:
    """Samples pairing each image with the mask ``mask_dir/<image stem><mask_suffix>``.

    Args:
        images: ``(image path, label, mask required)`` triples.
        mask_dir: folder of the masks (may be the images' folder); None gives every sample no mask.
        mask_suffix: what follows the image stem in a mask's name (``".png"``, ``"_GT.png"``,
            ``"_mask.png"``; case-insensitive).

    Raises:
        DataError: ``mask_dir`` is missing, an image whose mask is required has none, or a mask of
            ``mask_dir`` matches no image (so a typo in a name is never silently ignored).
    """
    images = list(images)
    if mask_dir is None:
        return [Sample(path, None, label) for path, label, _ in images]
    require_dir(mask_dir, "mask folder")
    masks = {p.name[:-len(mask_suffix)]: p for p in sorted(mask_dir.iterdir())
             if p.is_file() and not p.name.startswith(".") and _mask_suffix_of(p.name, mask_suffix)}
    samples = []
    used: set[str] = set()
    for path, label, required in images:
        mask = masks.get(path.stem)
        if mask is None and required:
            raise DataError(f"image {path} has no mask {mask_dir / (path.stem + mask_suffix)}")
        if mask is not None:
            used.add(path.stem)
        samples.append(Sample(path, mask, label))
    orphans = sorted(set(masks) - used)
    if orphans:
        folders = sorted({str(path.parent) for path, _, _ in images}) or ["(no images)"]
        raise DataError(f"mask {masks[orphans[0]]} has no image {orphans[0]}.* in {', '.join(folders)}"
                        + (f" (and {len(orphans) - 1} more masks without image)" if len(orphans) > 1 else ""))
    return samples


class FolderDataModule(CrackDataModule):
    """Your own images and masks in plain folders.

    Layout (folders relative to ``root``, or absolute)::

        root/
          images/          image_dir: any image files (.jpg, .png, .tif, ...)
          masks/           mask_dir: <image stem><mask_suffix>, e.g. images/a.jpg -> masks/a.png
          normal/          normal_dir (optional): defect-free images, label 0
          abnormal/        abnormal_dir (optional): defective images, label 1
          test/images/     test_image_dir (optional), masks in test_mask_dir (default: mask_dir)

    Masks are binary images (crack > ``mask_threshold``, or 0/1). Image labels come from the masks
    (1 if any crack pixel) for ``image_dir``, and from the folder for ``normal_dir`` / ``abnormal_dir``
    (their masks are optional, looked up by stem in ``mask_dir``). ``mask_dir`` may be the image
    folder itself when the masks carry a distinct suffix such as ``"_mask.png"``. Without
    ``test_image_dir``, a seeded ``test_fraction`` of the images (per label) is held out for testing;
    validation is then held out from the rest (``val_fraction``). Non-image files are ignored; a mask
    matching no image is an error.

    Args:
        root: base folder the other folders are relative to.
        image_dir: folder of images; at least one of ``image_dir``, ``normal_dir``, ``abnormal_dir``
            is required.
        mask_dir: folder of masks, or None for images without masks.
        mask_suffix: what follows the image stem in a mask's file name.
        require_masks: every image of ``image_dir`` / ``test_image_dir`` must have a mask when
            ``mask_dir`` is given (False lets some have none).
        normal_dir: folder of defect-free images (label 0).
        abnormal_dir: folder of defective images (label 1).
        test_image_dir: folder of test images; None holds out ``test_fraction`` instead.
        test_mask_dir: folder of test masks; None looks for them in ``mask_dir``.
        test_fraction: fraction of the images held out for testing when there is no ``test_image_dir``.
        **kwargs: options of :class:`CrackDataModule` (batch size, crops, seed, ...).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        mask_dir: str | os.PathLike | None = None,
        mask_suffix: str = ".png",
        require_masks: bool = True,
        normal_dir: str | os.PathLike | None = None,
        abnormal_dir: str | os.PathLike | None = None,
        test_image_dir: str | os.PathLike | None = None,
        test_mask_dir: str | os.PathLike | None = None,
        test_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        if image_dir is None and normal_dir is None and abnormal_dir is None:
            raise ValueError("FolderDataModule needs data.image_dir (or data.normal_dir / data.abnormal_dir)")
        if test_mask_dir is not None and test_image_dir is None:
            raise ValueError("data.test_mask_dir is given without data.test_image_dir")
        if not mask_suffix or "/" in mask_suffix:
            raise ValueError(f"data.mask_suffix must be a file-name ending such as '.png', "
                             f"got {mask_suffix!r}")
        if test_image_dir is None:
            check_fraction("test_fraction", test_fraction)
        self.image_dir = image_dir
        self.mask_dir = mask_dir
        self.mask_suffix = mask_suffix
        self.require_masks = require_masks
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.test_image_dir = test_image_dir
        self.test_mask_dir = test_mask_dir
        self.test_fraction = test_fraction

    def _dir(self, folder: str | os.PathLike | None, option: str) -> Path | None:
        path = resolve_dir(self.root, folder)
        if path is not None and not path.is_dir():
            raise DataError(f"data.{option} not found: {path}")
        return path

    def _images(self, folder: Path, mask_dir: Path | None) -> list[Path]:
        same = mask_dir is not None and folder.resolve() == mask_dir.resolve()
        return folder_images(folder, mask_suffix=self.mask_suffix if same else None)

    def _split_samples(self) -> tuple[list[Sample], list[Sample]]:
        """(training pool, test samples)."""
        folders = [(self._dir(getattr(self, option), option), label, required)
                   for option, label, required in (("image_dir", -1, self.require_masks),
                                                   ("normal_dir", 0, False), ("abnormal_dir", 1, False))]
        mask_dir = self._dir(self.mask_dir, "mask_dir")
        triples: list[tuple[Path, int, bool]] = []
        for folder, label, required in folders:
            if folder is not None:
                triples += [(p, label, required) for p in self._images(folder, mask_dir)]
        test_dir = self._dir(self.test_image_dir, "test_image_dir")
        if test_dir is None:
            samples = attach_masks(triples, mask_dir, self.mask_suffix)
            return hold_out(samples, self.test_fraction, self.seed, groups=[s.label for s in samples])
        test_mask_dir = self._dir(self.test_mask_dir, "test_mask_dir") or mask_dir
        test = [(p, -1, self.require_masks) for p in self._images(test_dir, test_mask_dir)]
        if test_mask_dir is not None and mask_dir is not None and test_mask_dir.samefile(mask_dir):
            samples = attach_masks(triples + test, mask_dir, self.mask_suffix)  # one pool of masks
            return samples[:len(triples)], samples[len(triples):]
        return attach_masks(triples, mask_dir, self.mask_suffix), attach_masks(test, test_mask_dir,
                                                                                self.mask_suffix)

    def find_samples(self, split: Split) -> list[Sample] | None:
        if split == "val":
            return None
        train, test = self._split_samples()
        return train if split == "train" else test
