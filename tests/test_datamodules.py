"""Datamodules on tiny fake datasets (tests/fakes.py) and, when present, on the real samples."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from crackseg.data.dataset import (
    Sample,
    parse_sample_id,
    read_sample_mask,
    sample_id,
    tile_box,
)
from crackseg.data.io import DataError, read_image, read_mask
from crackseg.datamodules import (
    Crack500DataModule,
    CrackDataModule,
    CrackForestDataModule,
    DeepCrackDataModule,
    FolderDataModule,
    KolektorSDD2DataModule,
    MagneticTileDataModule,
    MVTecADDataModule,
    OzgenelDataModule,
)

BATCH_KEYS = {"image", "mask", "has_mask", "label", "path", "orig_size"}


# -- one case per datamodule: (make the data, build the datamodule, expected sizes) ----------------
def _deepcrack(tmp: Path, **kw) -> DeepCrackDataModule:
    return DeepCrackDataModule(fakes.make_deepcrack(tmp / "dc", n_train=5, n_test=2), crop_size=32, **kw)


def _crackforest(tmp: Path, **kw) -> CrackForestDataModule:
    return CrackForestDataModule(fakes.make_crackforest(tmp / "cfd"), crop_size=32, **kw)


def _crack500(tmp: Path, **kw) -> Crack500DataModule:
    return Crack500DataModule(fakes.make_crack500(tmp / "c500"), crop_size=32, **kw)


def _ozgenel(tmp: Path, **kw) -> OzgenelDataModule:
    return OzgenelDataModule(fakes.make_ozgenel(tmp / "oz", with_masks=True), mask_dir="Masks", **kw)


def _mvtec(tmp: Path, **kw) -> MVTecADDataModule:
    return MVTecADDataModule(fakes.make_mvtec(tmp / "mvtec"), category="tile", image_size=(64, 64), **kw)


def _kolektor(tmp: Path, **kw) -> KolektorSDD2DataModule:
    return KolektorSDD2DataModule(fakes.make_kolektor(tmp / "ksdd2"), crop_size=32, **kw)


def _magnetic(tmp: Path, **kw) -> MagneticTileDataModule:
    return MagneticTileDataModule(fakes.make_magnetic_tile(tmp / "mt"), image_size=(48, 64), **kw)


def _folder(tmp: Path, **kw) -> FolderDataModule:
    return FolderDataModule(fakes.make_folder(tmp / "folder"), image_dir="images", mask_dir="masks",
                            crop_size=32, **kw)


# name -> (factory, (train, val, test) sizes, training crop / size, test image size or None when it varies)
CASES: dict[str, tuple[Callable[..., CrackDataModule], tuple[int, int, int], tuple[int, int],
                       tuple[int, int] | None]] = {
    "deepcrack": (_deepcrack, (4, 1, 2), (32, 32), (64, 96)),
    "crackforest": (_crackforest, (3, 1, 2), (32, 32), (48, 72)),
    "crack500": (_crack500, (4, 2, 2), (32, 32), (48, 80)),
    "ozgenel": (_ozgenel, (5, 1, 2), (32, 32), (32, 32)),
    "mvtec": (_mvtec, (3, 1, 6), (64, 64), (64, 64)),
    "kolektor": (_kolektor, (3, 1, 3), (32, 32), (80, 32)),
    "magnetic_tile": (_magnetic, (3, 1, 5), (48, 64), (48, 64)),
    "folder": (_folder, (4, 1, 1), (32, 32), (48, 64)),
}


def check_batch(batch: dict, size: int, shape: tuple[int, int] | None) -> None:
    assert set(batch) == BATCH_KEYS
    image, mask = batch["image"], batch["mask"]
    assert image.dtype == torch.float32 and mask.dtype == torch.float32
    assert image.shape[:2] == (size, 3) and mask.shape[:2] == (size, 1)
    assert image.shape[-2:] == mask.shape[-2:]
    if shape is not None:
        assert tuple(image.shape[-2:]) == shape
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert batch["has_mask"].dtype == torch.bool and batch["label"].dtype == torch.int64
    assert set(batch["label"].tolist()) <= {-1, 0, 1}
    assert len(batch["path"]) == size and batch["orig_size"].shape == (size, 2)
    for has_mask, m in zip(batch["has_mask"], mask, strict=True):  # no mask: zeros
        if not has_mask:
            assert m.sum() == 0


@pytest.mark.parametrize("name", list(CASES))
def test_splits_and_batches(name: str, tmp_path: Path) -> None:
    factory, (n_train, n_val, n_test), train_shape, test_shape = CASES[name]
    dm = factory(tmp_path, batch_size=2)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.datasets["train"]), len(dm.datasets["val"]), len(dm.datasets["test"])) == (
        n_train, n_val, n_test)
    check_batch(next(iter(dm.train_dataloader())), 2, train_shape)
    check_batch(next(iter(dm.val_dataloader())), 1, None)
    test_batches = list(dm.test_dataloader())
    assert len(test_batches) == n_test
    for batch in test_batches:
        check_batch(batch, 1, test_shape)
        if dm.image_size is None:  # evaluation keeps the size on disk
            assert tuple(batch["orig_size"][0].tolist()) == tuple(batch["image"].shape[-2:])
    paths = [s.image for split in ("train", "val", "test") for s in dm.datasets[split].samples]
    assert len(paths) == len(set(paths)), "splits overlap"


def test_labels_and_masks_per_dataset(tmp_path: Path) -> None:
    # MVTec: train normal only, test good = 0 without mask, defects = 1 with mask
    dm = _mvtec(tmp_path)
    splits = dm.split_samples()
    assert {s.label for s in splits["train"] + splits["val"]} == {0}
    assert all(s.mask is None for s in splits["train"] + splits["val"])
    good = [s for s in splits["test"] if s.image.parent.name == "good"]
    bad = [s for s in splits["test"] if s.image.parent.name != "good"]
    assert len(good) == 2 and all(s.label == 0 and s.mask is None for s in good)
    assert len(bad) == 4 and all(s.label == 1 and s.mask.name == f"{s.image.stem}_mask.png" for s in bad)
    # magnetic tile: train / val only MT_Free, every defect in test
    splits = _magnetic(tmp_path).split_samples()
    assert {s.image.parent.parent.name for s in splits["train"] + splits["val"]} == {"MT_Free"}
    assert sum(s.label == 1 for s in splits["test"]) == 4 and sum(s.label == 0 for s in splits["test"]) == 1
    # Özgenel: positives 1 (half with masks), negatives 0 without masks
    samples = _ozgenel(tmp_path).all_samples()
    assert [s.label for s in samples] == [1] * 4 + [0] * 4
    assert [s.mask is not None for s in samples] == [True, True] + [False] * 6
    # CrackForest: unlabelled 201 skipped, region id 3 of 002 is not crack
    dm = _crackforest(tmp_path)
    names = sorted(s.image.name for split in dm.split_samples().values() for s in split)
    assert names == [f"{i:03d}.jpg" for i in range(1, 7)]
    mask = read_mask(tmp_path / "cfd" / "groundTruth" / "002.mat")
    assert mask.shape == (48, 72) and mask[:12, :18].sum() == 0 and 0 < mask.mean() < 0.2
    # KolektorSDD2: label from the (RGB) mask
    dm = _kolektor(tmp_path)
    dm.setup("test")
    labels = [int(b["label"]) for b in dm.test_dataloader()]
    assert labels == [1, 0, 1]


def test_cfd_mat_wrapped_in_cell(tmp_path: Path) -> None:
    """A BSDS-style file (1x1 cell holding the struct) reads like the real struct files."""
    mask = np.zeros((8, 10), np.uint8)
    mask[3, 2:8] = 255
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = fakes.cfd_ground_truth(mask)
    savemat(tmp_path / "cell.mat", {"groundTruth": cell})
    savemat(tmp_path / "struct.mat", {"groundTruth": fakes.cfd_ground_truth(mask)})
    for name in ("cell.mat", "struct.mat"):
        assert np.array_equal(read_mask(tmp_path / name), mask > 0)
    savemat(tmp_path / "bad.mat", {"other": 1})
    with pytest.raises(DataError, match="bad.mat"):
        read_mask(tmp_path / "bad.mat")


def test_deepcrack_parent_root_and_crack500_lists(tmp_path: Path) -> None:
    fakes.make_deepcrack(tmp_path / "parent" / "DeepCrack")
    dm = DeepCrackDataModule(tmp_path / "parent")
    assert len(dm.find_samples("train")) == 4 and len(dm.find_samples("test")) == 2
    root = fakes.make_crack500(tmp_path / "c500", list_files=True)
    dm = Crack500DataModule(root)
    assert [len(dm.find_samples(s)) for s in ("train", "val", "test")] == [3, 1, 1]
    assert all(s.image.suffix == ".jpg" and s.mask.suffix == ".png" for s in dm.find_samples("train"))
    (root / "val.txt").write_text("valcrop/nothere.jpg valcrop/nothere.png\n")
    with pytest.raises(DataError, match=r"val.txt, line 1: file not found: .*nothere.jpg"):
        dm.find_samples("val")
    (root / "val.txt").write_text("valcrop/only_one.jpg\n")
    with pytest.raises(DataError, match="expected 'image mask'"):
        dm.find_samples("val")


@pytest.mark.parametrize("name", ["crackforest", "ozgenel", "magnetic_tile", "folder"])
def test_seeded_hold_out(name: str, tmp_path: Path) -> None:
    factory = CASES[name][0]

    def split(seed: int) -> dict[str, list[str]]:
        return {k: [str(s.image) for s in v] for k, v in factory(tmp_path, seed=seed).split_samples().items()}

    first = split(0)
    assert first == split(0)  # reproducible (the data is rewritten identically)
    assert not (set(first["train"]) & set(first["val"]) or set(first["train"]) & set(first["test"])
                or set(first["val"]) & set(first["test"]))
    assert any(split(seed)["test"] != first["test"] for seed in range(1, 6))


def test_hold_out_is_stratified(tmp_path: Path) -> None:
    root = fakes.make_ozgenel(tmp_path / "oz", n_positive=10, n_negative=10)
    dm = OzgenelDataModule(root, test_fraction=0.2, seed=3)
    splits = dm.split_samples()
    assert sorted(s.label for s in splits["test"]) == [0, 0, 1, 1]
    # supervised magnetic tile: every class is split
    dm = MagneticTileDataModule(fakes.make_magnetic_tile(tmp_path / "mt", n_free=5, n_defect=5),
                                supervised=True, test_fraction=0.2)
    splits = dm.split_samples()
    classes = [s.image.parent.parent.name for s in splits["test"]]
    assert sorted(classes) == ["MT_Blowhole", "MT_Crack", "MT_Free"]
    assert {s.label for s in splits["train"] + splits["val"]} == {0, 1}


def test_train_on_normal_only(tmp_path: Path) -> None:
    root = fakes.make_ozgenel(tmp_path / "oz", n_positive=10, n_negative=10)
    dm = OzgenelDataModule(root, train_on_normal_only=True, val_fraction=0.3)
    dm.setup("fit")
    dm.setup("test")
    assert {s.label for s in dm.datasets["train"].samples} == {0}
    assert {s.label for s in dm.datasets["val"].samples} == {0, 1}  # held out before the filter
    assert {s.label for s in dm.datasets["test"].samples} == {0, 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].tolist() == [0] * 4 and batch["image"].shape[-2:] == (32, 32)  # whole images
    # labels derived from masks (KolektorSDD2: empty GT = normal)
    dm = _kolektor(tmp_path, train_on_normal_only=True)
    dm.setup("fit")
    assert all(read_mask(s.mask).sum() == 0 for s in dm.datasets["train"].samples)
    # nothing left: the base reports the empty split
    dm = FolderDataModule(fakes.make_folder(tmp_path / "f"), abnormal_dir="images", train_on_normal_only=True)
    with pytest.raises(DataError, match="train split of FolderDataModule .* is empty"):
        dm.setup("fit")


def test_predict_path(tmp_path: Path) -> None:
    root = fakes.make_folder(tmp_path / "f")
    (root / "images" / "notes.txt").write_text("not an image")
    dm = FolderDataModule(root, image_dir="images", mask_dir="masks", predict_path=root / "images")
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert len(batches) == 6 and not any(bool(b["has_mask"]) for b in batches)
    assert batches[0]["image"].shape == (1, 3, 48, 64)
    dm = FolderDataModule(root, image_dir="images", predict_path=root / "images" / "img_1.jpg")
    dm.setup("predict")
    (batch,) = list(dm.predict_dataloader())
    assert batch["path"] == [str(root / "images" / "img_1.jpg")]
    with pytest.raises(DataError, match="not an image file: .*notes.txt"):
        FolderDataModule(root, image_dir="images",
                         predict_path=root / "images" / "notes.txt").setup("predict")
    # without predict_path the test split is predicted
    dm = FolderDataModule(root, image_dir="images", mask_dir="masks")
    dm.setup("predict")
    assert len(dm.datasets["predict"]) == 1


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name, message", [
    ("deepcrack", "DeepCrack layout not found under .*: expected train_img/ and train_lab/"),
    ("crackforest", "CrackForest layout not found under .*: expected image/ and groundTruth/"),
    ("crack500", "Crack500 layout not found under .*: expected traincrop/"),
    ("ozgenel", "Özgenel layout not found under .*: expected Positive/ and Negative/"),
    ("mvtec", "MVTec AD category 'tile' not found under .*categories found: none"),
    ("kolektor", "KolektorSDD2 layout not found under .*: expected train/ and test/"),
    ("magnetic_tile", "magnetic tile layout not found under .*: expected MT_Free/Imgs/"),
    ("folder", "data.image_dir not found: .*images"),
])
def test_missing_layout(name: str, message: str, tmp_path: Path) -> None:
    factory = CASES[name][0]
    dm = factory(tmp_path)
    dm.root = tmp_path / "empty"
    dm.root.mkdir()
    with pytest.raises(DataError, match=message):
        dm.setup("fit")
    dm.root = tmp_path / "does_not_exist"
    with pytest.raises(DataError, match="dataset root not found: .*does_not_exist"):
        dm.setup("fit")


def test_unmatched_files(tmp_path: Path) -> None:
    root = fakes.make_deepcrack(tmp_path / "a")
    (root / "train_lab" / "train001.png").unlink()
    with pytest.raises(DataError, match=r"image .*train001.jpg has no mask .*train001.png"):
        DeepCrackDataModule(root).setup("fit")
    root = fakes.make_deepcrack(tmp_path / "b")
    (root / "test_img" / "test001.jpg").unlink()
    with pytest.raises(DataError, match=r"mask .*test_lab/test001.png has no image"):
        DeepCrackDataModule(root).setup("test")
    root = fakes.make_crack500(tmp_path / "c")
    (root / "valcrop" / "2016_val_0.jpg").unlink()
    with pytest.raises(DataError, match=r"mask .*valcrop/2016_val_0.png has no image"):
        Crack500DataModule(root).setup("fit")
    root = fakes.make_ozgenel(tmp_path / "d", with_masks=True)
    Image.new("L", (32, 32)).save(root / "Masks" / "99999.png")
    with pytest.raises(DataError, match=r"mask .*Masks/99999.png has no image"):
        OzgenelDataModule(root, mask_dir="Masks").setup("fit")
    with pytest.raises(DataError, match=r"data.mask_dir not found: .*nope"):
        OzgenelDataModule(root, mask_dir="nope").setup("fit")
    root = fakes.make_mvtec(tmp_path / "e")
    (root / "tile" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"image .*test/crack/001.png has no mask .*001_mask.png"):
        MVTecADDataModule(root, "tile").setup("test")
    root = fakes.make_kolektor(tmp_path / "f")
    (root / "train" / "10001_GT.png").unlink()
    with pytest.raises(DataError, match=r"image .*train/10001.png has no mask .*10001_GT.png"):
        KolektorSDD2DataModule(root).setup("fit")
    root = fakes.make_crackforest(tmp_path / "g")
    (root / "image" / "003.jpg").unlink()
    with pytest.raises(DataError, match=r"mask .*groundTruth/003.mat has no image"):
        CrackForestDataModule(root).setup("fit")
    root = fakes.make_magnetic_tile(tmp_path / "h")
    next((root / "MT_Crack" / "Imgs").glob("*.png")).unlink()
    with pytest.raises(DataError, match=r"image .*MT_Crack/Imgs/.*\.jpg has no mask"):
        MagneticTileDataModule(root).setup("test")
    root = fakes.make_folder(tmp_path / "i")
    (root / "masks" / "img_0.png").unlink()
    with pytest.raises(DataError, match=r"image .*img_0.jpg has no mask .*masks/img_0.png"):
        FolderDataModule(root, image_dir="images", mask_dir="masks").setup("fit")
    dm = FolderDataModule(root, image_dir="images", mask_dir="masks", require_masks=False, test_fraction=0.5)
    dm.setup("fit")
    dm.setup("test")
    samples = [s for d in dm.datasets.values() for s in d.samples]
    assert sum(s.mask is None for s in samples) == 1


def test_mask_of_another_size(tmp_path: Path) -> None:
    root = fakes.make_deepcrack(tmp_path / "dc")
    Image.new("L", (50, 40)).save(root / "test_lab" / "test001.png")
    with pytest.raises(DataError, match=r"mask .*test001.png is 50x40 but image .*test001.jpg is 96x64"):
        DeepCrackDataModule(root).setup("test")
    # the same check when files are decoded in full
    with pytest.raises(DataError, match=r"mask .*test001.png is 50x40"):
        DeepCrackDataModule(root, check_files="full").setup("test")


def test_corrupt_image(tmp_path: Path) -> None:
    root = fakes.make_folder(tmp_path / "f", n=3)
    path = root / "images" / "img_1.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(path)
    (root / "images" / "img_1.jpg").unlink()
    path.write_bytes(path.read_bytes()[:60])  # truncated PNG: header intact, data cut
    dm = FolderDataModule(root, image_dir="images", mask_dir="masks", test_image_dir="images",
                          check_files="full")
    with pytest.raises(DataError, match=r"cannot read image .*img_1.png"):
        dm.setup("test")
    # the header is intact: a header-only check passes, and loading the image names it
    dm = FolderDataModule(root, image_dir="images", mask_dir="masks", test_image_dir="images",
                          check_files="header")
    dm.setup("test")
    with pytest.raises(DataError, match=r"cannot read image .*img_1.png"):
        list(dm.test_dataloader())


def test_empty_split(tmp_path: Path) -> None:
    root = fakes.make_deepcrack(tmp_path / "dc")
    for path in [*(root / "test_img").iterdir(), *(root / "test_lab").iterdir()]:
        path.unlink()
    dm = DeepCrackDataModule(root)
    dm.setup("fit")
    with pytest.raises(DataError, match="the test split of DeepCrackDataModule under .* is empty"):
        dm.setup("test")


def test_non_image_files_ignored(tmp_path: Path) -> None:
    root = fakes.make_deepcrack(tmp_path / "dc")
    for folder in ("train_img", "train_lab"):
        (root / folder / "notes.txt").write_text("hello")
        (root / folder / "Thumbs.db").write_bytes(b"\0")
        (root / folder / ".hidden.png").write_bytes(b"")
    dm = DeepCrackDataModule(root)
    dm.setup("fit")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 4
    root = fakes.make_magnetic_tile(tmp_path / "mt")
    (root / "MT_Free" / "Imgs" / "readme.txt").write_text("x")
    (root / "README.md").write_text("x")
    assert len(MagneticTileDataModule(root).find_samples("train")) == 4


def test_image_modes_are_three_channel(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    gray = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (40, 1))  # 40 x 48
    Image.fromarray(gray).save(root / "images" / "gray.png")
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    Image.fromarray(rgba, "RGBA").save(root / "images" / "rgba.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(root / "images" / "deep16.png")
    Image.fromarray(np.dstack([gray] * 3)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "images" / "palette.png")
    Image.fromarray(gray).save(root / "images" / "tif.tif")
    mask = np.zeros((40, 48), np.uint8)
    mask[10, :] = 255
    for stem in ("gray", "rgba", "deep16", "palette", "tif"):
        Image.fromarray(mask).save(root / "masks" / f"{stem}_mask.png")
    dm = FolderDataModule(root, image_dir="images", mask_dir="masks", mask_suffix="_mask.png",
                          test_image_dir="images", check_files="full", val_fraction=0.0)
    dm.setup("test")
    for batch in dm.test_dataloader():
        image = batch["image"]
        assert image.shape == (1, 3, 40, 48), batch["path"]
        assert torch.allclose(image[:, 0], image[:, 1], atol=2 / 255), batch["path"]
        assert abs(float(image[0, 0, 0, 5]) - 25 / 255) < 3 / 255, batch["path"]
        assert batch["mask"][0, 0, 10].all() and batch["mask"].sum() == 48


def test_masks_beside_images(tmp_path: Path) -> None:
    root = tmp_path / "same"
    rng = np.random.default_rng(0)
    for i in range(4):
        image, mask = fakes.crack_pair(rng, (32, 32))
        fakes.write_image(root / f"{i}.png", image)
        fakes.write_image(root / f"{i}_mask.png", mask)
    dm = FolderDataModule(root, image_dir=".", mask_dir=".", mask_suffix="_mask.png", test_fraction=0.25)
    samples = [s for split in dm.split_samples().values() for s in split]
    assert sorted(s.image.name for s in samples) == [f"{i}.png" for i in range(4)]
    assert all(s.mask.name == f"{s.image.stem}_mask.png" for s in samples)


def test_invalid_options(tmp_path: Path) -> None:
    root = fakes.make_folder(tmp_path / "f", n=3)
    with pytest.raises(ValueError, match="data.batch_size must be >= 1, got 0"):
        FolderDataModule(root, image_dir="images", batch_size=0)
    with pytest.raises(ValueError, match="data.eval_batch_size must be >= 1"):
        DeepCrackDataModule(root, eval_batch_size=0)
    for cls in (CrackForestDataModule, OzgenelDataModule, MagneticTileDataModule):
        with pytest.raises(ValueError, match="data.test_fraction must be in"):
            cls(root, test_fraction=1.0)
    with pytest.raises(ValueError, match="data.image_dir"):
        FolderDataModule(root)
    with pytest.raises(ValueError, match="test_mask_dir is given without"):
        FolderDataModule(root, image_dir="images", test_mask_dir="masks")


def test_defaults_for_whole_images() -> None:
    assert MVTecADDataModule("x", "tile").crop_size is None
    assert MVTecADDataModule("x", "tile").image_size == (256, 256)
    assert MagneticTileDataModule("x").image_size == (256, 256)
    assert MagneticTileDataModule("x").crop_size is None
    assert OzgenelDataModule("x").crop_size is None
    assert CrackForestDataModule("x").test_fraction == 0.4
    dm = MVTecADDataModule("x", "tile", batch_size=3, seed=7, crop_size=64)
    assert (dm.batch_size, dm.seed, dm.crop_size) == (3, 7, 64)


# -- real samples in ../shared/data -------------------------------------------------------------
def first_batches(loader, n: int) -> list[dict]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


def test_real_crackforest(shared_data: Callable[..., Path]) -> None:
    root = shared_data("cfd")
    dm = CrackForestDataModule(root, batch_size=4, crop_size=256)
    dm.setup("fit")
    dm.setup("test")
    sizes = [len(dm.datasets[s]) for s in ("train", "val", "test")]
    assert sizes[0] + sizes[1] == 71 and sizes[2] == 47
    names = {s.image.stem for d in dm.datasets.values() for s in d.samples}
    assert len(names) == 118 and max(names) == "118"
    fractions = [read_mask(s.mask).mean() for s in dm.datasets["test"].samples]
    assert 0.01 < np.mean(fractions) < 0.03
    for batch in first_batches(dm.test_dataloader(), 3):
        assert batch["image"].shape == (1, 3, 320, 480) and batch["mask"].shape == (1, 1, 320, 480)
        assert 0 < batch["mask"].mean() < 0.1
    check_batch(next(iter(dm.train_dataloader())), 4, (256, 256))


def test_real_deepcrack(shared_data: Callable[..., Path]) -> None:
    root = shared_data("deepcrack")
    dm = DeepCrackDataModule(root, batch_size=2, crop_size=256)  # the parent of DeepCrack/
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 300 and len(dm.datasets["val"]) == 60
    assert len(dm.datasets["test"]) == 237
    for batch in first_batches(dm.test_dataloader(), 3):
        check_batch(batch, 1, None)
        assert tuple(batch["orig_size"][0].tolist()) == tuple(batch["image"].shape[-2:])
        assert sorted(batch["image"].shape[-2:]) == [384, 544]
        assert 0 < batch["mask"].mean() < 0.2
    check_batch(next(iter(dm.train_dataloader())), 2, (256, 256))


def test_real_magnetic_tile(shared_data: Callable[..., Path]) -> None:
    root = shared_data("magnetic_tile")
    dm = MagneticTileDataModule(root, batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = (dm.datasets[s].samples for s in ("train", "val", "test"))
    assert len(train) + len(val) == 952 - 190 and len(test) == 190 + 392
    assert {s.label for s in train + val} == {0}
    assert sum(s.label for s in test) == 392
    batch = next(iter(dm.train_dataloader()))
    check_batch(batch, 4, (256, 256))
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 2])  # grayscale expanded
    assert batch["mask"].sum() == 0  # MT_Free masks are empty
    defective = [i for i, s in enumerate(test) if s.label == 1][:2]
    for index in defective:
        item = dm.datasets["test"][index]
        assert item["mask"].sum() > 0 and item["image"].shape == (3, 256, 256)


# -- Crack500 grid protocol (tiles) -------------------------------------------------------------
def test_tile_ids_and_boxes() -> None:
    sample = Sample(Path("/data/a#b/img.jpg"), Path("/data/a#b/img.png"), tile=(1, 2, 3))
    assert sample_id(sample) == "/data/a#b/img.jpg#r1c2of3"
    assert parse_sample_id(sample_id(sample)) == ("/data/a#b/img.jpg", (1, 2, 3))
    assert parse_sample_id("/data/a#b/img.jpg") == ("/data/a#b/img.jpg", None)
    assert [tile_box(50, 80, (r, r, 3)) for r in range(3)] == [(0, 16, 0, 26), (16, 32, 26, 52), (32, 50, 52, 80)]
    with pytest.raises(ValueError, match="not a .row, col, grid. cell"):
        Sample(Path("x.jpg"), tile=(3, 0, 3))


def _grid(root: Path, **kw) -> Crack500DataModule:
    return Crack500DataModule(root, protocol="grid", grid_train_images=3, **kw)


def test_crack500_grid_protocol(tmp_path: Path) -> None:
    root = fakes.make_crack500_full(tmp_path / "c500", n=5)
    stems = [f"2016_{i:02d}" for i in range(5)]
    dm = _grid(root, val_fraction=0.2, crop_size=32)
    splits = dm.split_samples()
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (22, 5, 18)
    # the first grid_train_images images (sorted by name) form the training pool, the rest the test set
    assert {s.image.stem for s in splits["train"] + splits["val"]} == set(stems[:3])
    assert {s.image.stem for s in splits["test"]} == set(stems[3:])
    tiles = splits["train"] + splits["val"] + splits["test"]
    for stem in stems:
        assert sorted(s.tile[:2] for s in tiles if s.image.stem == stem) == [(r, c) for r in range(3) for c in range(3)]
    for s in tiles:  # labels from the tile's part of the mask
        assert s.label == int(s.tile[:2] in fakes.crack500_full_crack_tiles(stems.index(s.image.stem))), s
        assert s.mask.name == f"{s.image.stem}_mask.png"
    # tiles crop the image and the mask; batch paths and sizes name the tile
    dm.setup("fit")
    dm.setup("test")
    dataset = dm.datasets["test"]
    for index, s in enumerate(dataset.samples):
        image, mask = dataset.load(index)
        top, bottom, left, right = tile_box(50, 80, s.tile)
        assert np.array_equal(image, read_image(s.image)[top:bottom, left:right])
        assert np.array_equal(mask, read_mask(s.mask)[top:bottom, left:right])
        assert int(mask.any()) == s.label
    batches = list(dm.test_dataloader())
    paths = [b["path"][0] for b in batches]
    assert len(set(paths)) == 18 and all(re.search(r"2016_0[34]\.jpg#r\dc\dof3$", p) for p in paths)
    corner = next(b for b in batches if b["path"][0].endswith("#r2c2of3"))
    assert corner["image"].shape[-2:] == (18, 28) and corner["orig_size"][0].tolist() == [18, 28]
    assert [int(b["label"]) for b in batches] == [s.label for s in dataset.samples]
    check_batch(next(iter(dm.train_dataloader())), 4, (32, 32))  # crops of tiles, reflect-padded


def test_crack500_grid_normal_only_lists_and_errors(tmp_path: Path) -> None:
    root = fakes.make_crack500_full(tmp_path / "c500", n=5, mask_suffix=".png")
    train = _grid(root, train_on_normal_only=True, val_fraction=0.0).split_samples()["train"]
    expected = sum(9 - len(fakes.crack500_full_crack_tiles(i)) for i in range(3))
    assert len(train) == expected and {s.label for s in train} == {0}
    assert all(read_sample_mask(s).sum() == 0 for s in train) and all(s.mask.suffix == ".png" for s in train)
    # a list file keeps its own order: its first images are the training pool
    lines = [f"traindata/2016_{i:02d}.jpg traindata/2016_{i:02d}.png" for i in (4, 3, 2, 1, 0)]
    (root / "grid.txt").write_text("\n".join(lines) + "\n")
    splits = _grid(root, grid_folder="grid.txt", val_fraction=0.0).split_samples()
    assert {s.image.stem for s in splits["train"]} == {"2016_04", "2016_03", "2016_02"}
    # archives unpack to traindata/traindata/
    nested = tmp_path / "nested"
    fakes.make_crack500_full(nested, n=4, folder="traindata/traindata")
    assert len(_grid(nested).find_samples("test")) == 9
    # errors name the option
    with pytest.raises(DataError, match=r"grid_train_images=5 takes all 5 images of traindata"):
        Crack500DataModule(root, protocol="grid", grid_train_images=5).setup("test")
    with pytest.raises(DataError, match=r"grid_folder not found: .*nothere"):
        _grid(root, grid_folder="nothere").setup("fit")
    with pytest.raises(ValueError, match="data.init_args.protocol must be 'official' or 'grid'"):
        Crack500DataModule(root, protocol="tiles")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="data.init_args.grid must be >= 1"):
        Crack500DataModule(root, protocol="grid", grid=0)
    small = tmp_path / "small"
    fakes.make_crack500_full(small, n=4, size=(2, 40))
    with pytest.raises(DataError, match=r"2016_00_mask.png is 40x2, too small to cut into a 3x3 grid"):
        _grid(small).setup("fit")


def test_prediction_names_of_tiles(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from crackseg.callbacks.writer import PredictionWriter
    from crackseg.data.dataset import collate

    dm = _grid(fakes.make_crack500_full(tmp_path / "c500", n=4))
    dm.setup("test")
    dataset = dm.datasets["test"]
    batch = collate([dataset[0], dataset[1]])  # tiles r0c0 and r0c1 of one image (both 16x26)
    outputs = {"map": torch.rand(2, 1, 16, 26), "score": torch.zeros(2), "pred_label": torch.zeros(2)}
    module = SimpleNamespace(pixel_threshold=torch.tensor(0.5), image_threshold=torch.tensor(0.5),
                             maps_are_probabilities=True)
    writer = PredictionWriter(tmp_path / "out", stages=("test",))
    writer._start()
    writer._write_batch(module, outputs, batch, "test")  # type: ignore[arg-type]
    names = sorted(p.name for p in (tmp_path / "out" / "test" / "overlays").iterdir())
    assert names == ["2016_03_r0c0.png", "2016_03_r0c1.png"]
    overlay = read_image(tmp_path / "out" / "test" / "overlays" / "2016_03_r0c1.png")
    assert overlay.shape == (16, 26, 3)
    folder = tmp_path / "out" / "test"
    records = [json.loads(writer._record_path(folder, name[:-4]).read_text()) for name in names]
    assert [record["row"]["source"] for record in records] == batch["path"]
    assert all(0.0 <= record["row"]["f1"] <= 1.0 for record in records)  # per-image F1 against the tile's mask
