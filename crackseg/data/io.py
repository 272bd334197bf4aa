"""Reading images and masks from disk, with errors that name the offending file.

Every loader of the package reads through these functions, so a corrupt JPEG, a 16-bit PNG, a
palette image or a CrackForest ``.mat`` file behave the same whatever the dataset. Images and masks
are turned upright by their EXIF orientation tag (phone and camera JPEGs), as every viewer shows them,
so training, test, predict, tiling and pseudo-labelling all see the displayed picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes treated as images (case-insensitive)."""


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image suffix (the file itself is not opened)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Sorted image files of ``folder``; hidden files and non-images are skipped.

    Raises:
        DataError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder not found: {folder}")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith(".")
                  and is_image_file(p))


_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) of an opened image; 1 when absent or unreadable."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except (ValueError, TypeError, OSError, SyntaxError):
        return 1


def _open_upright(img: Image.Image) -> Image.Image:
    """The loaded image turned by its EXIF orientation (the image itself when upright)."""
    img.load()
    if _exif_orientation(img) == 1:
        return img
    return ImageOps.exif_transpose(img)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image, reading its header only.

    Raises:
        DataError: the file is missing, not an image, or has a zero size.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return read_mask(path).shape  # type: ignore[return-value]
    try:
        with Image.open(path) as img:
            width, height = img.size
            if _exif_orientation(img) in _TRANSPOSED:
                width, height = height, width
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    if width == 0 or height == 0:
        raise DataError(f"image {path} has zero size ({width}x{height})")
    return height, width


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array / 257.0).round().astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        return np.clip(array * scale, 0, 255).round().astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as RGB ``uint8`` (H, W, 3).

    Grayscale is replicated to three channels, RGBA is composited on black (alpha dropped),
    palette images are expanded, 16-bit images are scaled to 8 bits.

    Raises:
        DataError: the file is missing, truncated, not an image, or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path}")
    try:
        with Image.open(path) as raw:
            img = _open_upright(raw)
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = _to_uint8(np.asarray(img).astype(np.uint16 if img.mode != "I" else np.int64))
            elif img.mode == "RGBA":
                rgba = np.asarray(img).astype(np.float32)
                array = (rgba[..., :3] * (rgba[..., 3:] / 255.0)).round().astype(np.uint8)
            elif img.mode in ("L", "1", "LA"):
                array = np.asarray(img.convert("L"))
            else:
                array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from None
    array = _to_uint8(np.asarray(array))
    if array.size == 0:
        raise DataError(f"image {path} is empty")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array)


def read_cfd_mat(path: str | os.PathLike) -> np.ndarray:
    """Read a CrackForest ``groundTruth/NNN.mat`` file as a {0, 1} mask.

    The struct ``groundTruth`` holds ``Segmentation`` (1 = background, 2 = crack network; ids 3 and 4
    in a few files are region ids of the labelling tool, not classes) and ``Boundaries``. The standard
    reading is ``Segmentation == 2``.
    """
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    def unwrap(value: object) -> object:
        # 1x1 cells (object arrays) and 1x1 struct arrays around the value
        while isinstance(value, np.ndarray) and value.size == 1 and (value.dtype == object or value.dtype.names):
            value = value.flat[0]
        return value

    try:
        mat = loadmat(str(path))
        # the real files hold a 1x1 struct; BSDS-style files a 1x1 cell holding the struct
        segmentation = np.asarray(unwrap(unwrap(mat["groundTruth"])["Segmentation"]))
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except (KeyError, IndexError, ValueError, TypeError, OSError, MatReadError, NotImplementedError) as err:
        # MatReadError: truncated or not a .mat file; NotImplementedError: MATLAB v7.3 (HDF5) files
        raise DataError(f"cannot read CrackForest ground truth {path}: {type(err).__name__}: {err}") from None
    if segmentation.ndim != 2 or segmentation.size == 0:
        raise DataError(f"cannot read CrackForest ground truth {path}: Segmentation has shape "
                        f"{segmentation.shape}, expected (height, width)")
    return (segmentation == 2).astype(np.uint8)


def read_mask_levels(path: str | os.PathLike) -> np.ndarray:
    """A mask file as the (H, W) values :func:`read_mask` binarises: grey levels (uint8), palette indices
    for a palette ("P") image, or the 0 / 1 reading of a CrackForest ``.mat`` file.

    Raises:
        DataError: the file is missing or unreadable.
    """
    return _mask_values(Path(path))[0]


def _mask_values(path: Path) -> tuple[np.ndarray, bool]:
    """(values, whether they are palette indices) of a mask file, see :func:`read_mask_levels`.

    A palette mask is read by index, not through its colours: a labelling tool's index 1 drawn dark red
    would otherwise become grey 38, below any sensible threshold. An RGB(A) mask is converted to grey from
    its colour channels (alpha is ignored); a grey + alpha ("LA") mask uses its grey channel.
    """
    if path.suffix.lower() == ".mat":
        return read_cfd_mat(path), False
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        with Image.open(path) as raw:
            img = _open_upright(raw)
            if img.mode == "PA":
                img = img.getchannel(0)
            palette = img.mode == "P"
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read mask {path}: {err}") from None
    if array.size == 0:
        raise DataError(f"mask {path} is empty")
    if palette:
        return array.astype(np.uint8), True
    if array.ndim == 3:
        if array.shape[2] < 3:  # grey + alpha
            array = array[..., 0]
        else:
            array = cv2.cvtColor(np.ascontiguousarray(_to_uint8(array[..., :3])), cv2.COLOR_RGB2GRAY)
    return _to_uint8(array), False


def read_mask(path: str | os.PathLike, threshold: int = 127) -> np.ndarray:
    """Read a binary mask as ``uint8`` (H, W) in {0, 1}.

    Image masks are converted to grayscale and binarised at ``> threshold`` (DeepCrack, Crack500,
    MVTec, magnetic tile: masks are 0/255, possibly anti-aliased); palette masks are read by index,
    0 = background and any other index = crack (:func:`read_mask_levels`); ``.mat`` files are read as
    CrackForest ground truth. Masks stored as 0/1 images are recognised (max value 1).

    Raises:
        DataError: the file is missing or unreadable.
    """
    array, palette = _mask_values(Path(path))
    if palette or array.max(initial=0) <= 1:
        return (array > 0).astype(np.uint8)
    return (array > threshold).astype(np.uint8)


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an RGB or grayscale ``uint8`` array as PNG, atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(tmp), array):
        raise OSError(f"could not write {path}")
    os.replace(tmp, path)
