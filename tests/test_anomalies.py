"""Synthetic anomalies (crackseg.data.anomalies) and their use by datasets, datamodules and the CLI."""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import fakes
import numpy as np
import pytest
import torch

from crackseg.data.anomalies import AnomalySynthesizer, CutPaste, poisson_clone
from crackseg.data.dataset import CrackDataset, Sample
from crackseg.data.io import DataError, read_image, read_mask
from crackseg.datamodules import (
    CrackDataModule,
    DeepCrackDataModule,
    MVTecADDataModule,
    PoissonBlend,
    SyntheticCracksDataModule,
)


def texture(size: tuple[int, int] = (64, 64), seed: int = 0) -> np.ndarray:
    """A noisy RGB uint8 surface (every pasted or cloned pixel differs from it)."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.normal(150, 25, (*size, 3)), (0, 0), 2)
    return np.clip(base + rng.normal(0, 6, (*size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def source(tmp_path: Path) -> DeepCrackDataModule:
    """A fake DeepCrack dataset (1-2 px cracks on 64x96 images) as the Poisson source."""
    return DeepCrackDataModule(fakes.make_deepcrack(tmp_path / "dc", n_train=2, n_test=3))


def all_ops(source: CrackDataModule) -> dict[str, AnomalySynthesizer]:
    return {
        "cutpaste": CutPaste(),
        "poisson": PoissonBlend(source),
        "poisson_mixed_component": PoissonBlend(source, guidance="mixed", region="component", dilate=1),
        "poisson_opencv": PoissonBlend(source, solver="opencv", dilate=5),
    }


# -- the operations ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cutpaste", "poisson", "poisson_mixed_component", "poisson_opencv"])
def test_mask_is_exactly_the_changed_region(name: str, source: DeepCrackDataModule) -> None:
    op = all_ops(source)[name]
    for seed in range(12):
        image = texture((64, 64) if seed % 2 else (48, 80), seed)
        before = image.copy()
        out, mask = op(image, np.random.default_rng(seed))
        assert np.array_equal(image, before), "the input was modified"
        assert out.shape == image.shape and out.dtype == np.uint8
        assert mask.shape == image.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        changed = (out != image).any(axis=2)
        assert not (changed & (mask == 0)).any(), "a pixel outside the mask changed"
        assert changed[mask > 0].mean() > 0.5, "most of the mask should be changed"
        if name != "cutpaste":  # the Poisson region keeps off a 2-px frame
            assert not (mask[:2].any() or mask[-2:].any() or mask[:, :2].any() or mask[:, -2:].any())


def test_cutpaste_box_sizes_follow_the_ranges() -> None:
    op = CutPaste(area_ratio=(0.02, 0.15), aspect_ratio=(0.3, 1 / 0.3))
    image = texture((120, 120))
    areas, aspects = [], []
    for seed in range(300):
        _, mask = op(image, np.random.default_rng(seed))
        x, y, w, h = cv2.boundingRect(mask)
        assert mask.sum() == w * h, "the mask is the paste box"
        areas.append(w * h / mask.size)
        aspects.append(w / h)
    tol = 0.12  # sides are rounded to whole pixels (the smallest side here is 10 px)
    assert 0.02 * (1 - tol) <= min(areas) and max(areas) <= 0.15 * (1 + tol)
    assert 0.3 * (1 - tol) <= min(aspects) and max(aspects) <= (1 / 0.3) * (1 + tol)
    assert min(areas) < 0.03 and max(areas) > 0.13  # the whole range is drawn
    assert min(aspects) < 0.4 and max(aspects) > 2.5
    assert 0.7 < np.median(aspects) < 1.4  # log-uniform: centred on 1


@pytest.mark.parametrize("name", ["cutpaste", "poisson", "poisson_mixed_component"])
def test_seeded_generator_gives_identical_output(name: str, source: DeepCrackDataModule) -> None:
    op = all_ops(source)[name]
    image = texture()
    first = op(image, np.random.default_rng(7))
    again = op(image, np.random.default_rng(7))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    others = [op(image, np.random.default_rng(seed))[1] for seed in range(8)]
    assert any(not np.array_equal(first[1], m) for m in others)


def test_poisson_clone_is_the_dirichlet_solution() -> None:
    """Pérez et al.'s discrete equation: a source differing from the target only inside Ω by ``d`` (plus
    any constant offset) is cloned as target + d exactly; nothing outside Ω changes."""
    target = texture((40, 40)).astype(np.int16)
    omega = np.zeros((40, 40), bool)
    omega[8:30, 5:33] = True
    d = np.zeros_like(target)
    d[12:26, 9:28] = -60
    d[15:20, 12:20] = -20
    source = np.clip(target + d + 37, 0, 255).astype(np.uint8)  # an offset the gradients ignore
    expected = (target + d).astype(np.uint8)
    assert np.array_equal(poisson_clone(source, target.astype(np.uint8), omega), expected)
    assert np.array_equal(poisson_clone(source, target.astype(np.uint8), omega, mixed=True)[~omega],
                          target.astype(np.uint8)[~omega])
    with pytest.raises(ValueError, match="must not touch the image border"):
        poisson_clone(source, target.astype(np.uint8), np.ones((40, 40), bool))


def test_opencv_seamless_clone_changes_pixels_outside_its_mask() -> None:
    """The measurement behind PoissonBlend's design: cv2.seamlessClone solves on the mask's bounding box,
    so it changes pixels outside the mask (but none outside the box); PoissonBlend(solver="opencv")
    copies them back."""
    target = texture((96, 96), 1)
    source = texture((96, 96), 2)
    source = np.clip(source.astype(np.int16) - 40, 0, 255).astype(np.uint8)
    line = np.zeros((96, 96), np.uint8)
    cv2.line(line, (15, 20), (80, 70), 1, 2)
    mask = cv2.dilate(line, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)))
    x, y, w, h = cv2.boundingRect(mask)
    out = cv2.seamlessClone(source, target, mask * 255, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    changed = (out != target).any(axis=2)
    box = np.zeros_like(changed)
    box[y:y + h, x:x + w] = True
    assert (changed & (mask == 0)).sum() > 100
    assert not (changed & ~box).any()


def test_poisson_blend_errors(tmp_path: Path, source: DeepCrackDataModule) -> None:
    root = fakes.make_deepcrack(tmp_path / "empty_masks", n_train=2, n_test=2)
    for path in (root / "test_lab").iterdir():
        fakes.write_image(path, np.zeros((64, 96), np.uint8))
    op = PoissonBlend(DeepCrackDataModule(root))
    message = r"no test image of DeepCrackDataModule under .*empty_masks has a non-empty anomaly mask"
    with pytest.raises(DataError, match=message):
        op.prepare()
    with pytest.raises(DataError, match=message):  # or lazily, on first use
        op(texture(), np.random.default_rng(0))
    mvtec = MVTecADDataModule(fakes.make_mvtec(tmp_path / "mvtec"), "tile")  # train/good: no masks
    with pytest.raises(DataError, match="no train image of MVTecADDataModule"):
        PoissonBlend(mvtec, split="train").prepare()
    with pytest.raises(ValueError, match="PoissonBlend source must be a crackseg datamodule"):
        PoissonBlend("data/DeepCrack")  # type: ignore[arg-type]
    for kwargs, option in (({"guidance": "seamless"}, "guidance"), ({"dilate": -1}, "dilate"),
                           ({"split": "predict"}, "split"), ({"solver": "pyamg"}, "solver")):
        with pytest.raises(ValueError, match=f"PoissonBlend {option}"):
            PoissonBlend(source, **kwargs)
    for kwargs, option in (({"area_ratio": (0.2, 0.1)}, "area_ratio"), ({"area_ratio": (0.1, 1.0)}, "area_ratio"),
                           ({"aspect_ratio": (0.0, 2.0)}, "aspect_ratio"), ({"color_jitter": -0.1}, "color_jitter")):
        with pytest.raises(ValueError, match=f"CutPaste {option}"):
            CutPaste(**kwargs)
    with pytest.raises(ValueError, match=r"RGB uint8 \(H, W, 3\) image, got a float64"):
        CutPaste()(texture().astype(float), np.random.default_rng(0))


def test_ops_are_picklable(source: DeepCrackDataModule) -> None:
    image = texture()
    for op in all_ops(source).values():
        expected = op(image, np.random.default_rng(3))  # resolves the Poisson pool
        clone = pickle.loads(pickle.dumps(op))
        assert all(np.array_equal(a, b) for a, b in zip(clone(image, np.random.default_rng(3)), expected, strict=True))
    fresh = PoissonBlend(source)  # not prepared yet: the datamodule travels along
    assert pickle.loads(pickle.dumps(fresh)).source is not None
    fresh.prepare()
    assert pickle.loads(pickle.dumps(fresh)).source is None  # prepared: only the sample list travels
    assert len(fresh.pool) == 3 and all(isinstance(s, Sample) for s in fresh.pool)


# -- datasets and datamodules ------------------------------------------------------------------
def test_dataset_applies_the_synthesizer(tmp_path: Path) -> None:
    root = fakes.make_mvtec(tmp_path / "mvtec", n_train=6)
    samples = [Sample(p, None, 0) for p in sorted((root / "tile" / "train" / "good").iterdir())]
    plain = CrackDataset(samples)
    always = CrackDataset(samples, synthesizer=CutPaste(), synthetic_probability=1.0, synthetic_seed=0)
    never = CrackDataset(samples, synthesizer=CutPaste(), synthetic_probability=0.0, synthetic_seed=0)
    for index in range(len(samples)):
        item = always[index]
        assert item["mask"].sum() > 0 and item["label"] == 1 and bool(item["has_mask"])
        again = always[index]
        assert torch.equal(item["image"], again["image"]) and torch.equal(item["mask"], again["mask"])
        normal = never[index]
        assert normal["mask"].sum() == 0 and normal["label"] == 0 and bool(normal["has_mask"])
        assert torch.equal(normal["image"], plain[index]["image"])
        assert bool(plain[index]["has_mask"]) and plain[index]["mask"].sum() == 0  # crack-free: known-empty mask
    half = CrackDataset(samples * 5, synthesizer=CutPaste(), synthetic_probability=0.5, synthetic_seed=1)
    assert {int(half[i]["label"]) for i in range(len(half))} == {0, 1}
    # unseeded: drawn from torch's RNG (seeded per worker and epoch by the DataLoader)
    random = CrackDataset(samples, synthesizer=CutPaste(), synthetic_probability=1.0)
    torch.manual_seed(0)
    first = [random[0]["mask"] for _ in range(4)]
    assert any(not torch.equal(first[0], m) for m in first[1:])
    torch.manual_seed(0)
    assert torch.equal(random[0]["mask"], first[0])
    with pytest.raises(ValueError, match="synthetic_probability must be in"):
        CrackDataset(samples, synthesizer=CutPaste(), synthetic_probability=2.0)
    # a real defect would be labelled normal: refused
    dc = fakes.make_deepcrack(tmp_path / "dc", n_train=1, n_test=1)
    defective = CrackDataset([Sample(dc / "test_img" / "test000.jpg", dc / "test_lab" / "test000.png")],
                             synthesizer=CutPaste())
    with pytest.raises(DataError, match="normal images only, but .*test000.jpg is defective"):
        defective[0]


def test_training_anomalies_differ_across_workers_and_epochs(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from crackseg.data.dataset import collate

    root = fakes.make_mvtec(tmp_path / "mvtec", n_train=2)
    images = sorted((root / "tile" / "train" / "good").iterdir())
    samples = [Sample(p, None, 0) for p in images for _ in range(2)]  # a, a, b, b
    dataset = CrackDataset(samples, synthesizer=CutPaste(), synthetic_probability=1.0)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate)  # workers 0, 1, 0, 1
    torch.manual_seed(0)
    first, second = ([b["mask"] for b in loader] for _ in range(2))
    # the first draw of each worker, on the same image: equal if the workers shared a seed
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))  # epochs


def test_datamodule_synthetic_splits(tmp_path: Path) -> None:
    root = fakes.make_mvtec(tmp_path / "mvtec", n_train=6)
    dm = MVTecADDataModule(root, "tile", image_size=(64, 64), batch_size=2, synthetic_anomalies=CutPaste(),
                           synthetic_probability=1.0)
    dm.setup("fit")
    dm.setup("test")
    batch = next(iter(dm.train_dataloader()))
    assert batch["has_mask"].all() and (batch["label"] == 1).all()
    assert (batch["mask"].flatten(1).sum(1) > 0).all()
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
               for a, b in zip(first, second, strict=True)), "validation anomalies must be the same every epoch"
    assert all(bool(b["label"].all()) for b in first)
    assert dm.datasets["test"].synthesizer is None  # tests stay real
    assert sorted(int(b["label"]) for b in dm.test_dataloader()) == [0, 0, 1, 1, 1, 1]
    dm = MVTecADDataModule(root, "tile", image_size=(64, 64), synthetic_anomalies=CutPaste(),
                           synthetic_splits=["train"])
    dm.setup("fit")
    assert dm.datasets["train"].synthesizer is not None and dm.datasets["val"].synthesizer is None


def test_synthetic_anomalies_need_normal_images(tmp_path: Path) -> None:
    # every DeepCrack training image is cracked
    dm = DeepCrackDataModule(fakes.make_deepcrack(tmp_path / "dc"), synthetic_anomalies=CutPaste())
    with pytest.raises(DataError, match=r"holds defective images \(e.g. .*train00.\.jpg\): set "
                                        r"data.init_args.train_on_normal_only=true"):
        dm.setup("fit")
    # unsupervised synthetic data: normal training images; the validation split keeps its normal half
    kwargs = {"mode": "unsupervised", "n_train": 4, "n_val": 6, "n_test": 2, "generate_size": (48, 48),
              "crop_size": 48}
    plain = SyntheticCracksDataModule(tmp_path / "syn", **kwargs)
    dm = SyntheticCracksDataModule(tmp_path / "syn", synthetic_anomalies=CutPaste(), **kwargs)
    val = dm.split_samples()["val"]
    assert 0 < len(val) < len(plain.split_samples()["val"]) and {s.label for s in val} == {0}
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 4
    with pytest.raises(ValueError, match=r"data.init_args.synthetic_probability must be in \[0, 1\], got 1.5"):
        SyntheticCracksDataModule(tmp_path / "syn", synthetic_anomalies=CutPaste(), synthetic_probability=1.5)
    with pytest.raises(ValueError, match="data.init_args.synthetic_splits must be a list of 'train' and / or 'val'"):
        SyntheticCracksDataModule(tmp_path / "syn", synthetic_anomalies=CutPaste(), synthetic_splits=["test"])
    with pytest.raises(ValueError, match="data.init_args.synthetic_anomalies must be an AnomalySynthesizer"):
        SyntheticCracksDataModule(tmp_path / "syn", synthetic_anomalies="CutPaste")  # type: ignore[arg-type]


# -- configs -----------------------------------------------------------------------------------
def _config(tmp_path: Path, synthesizer: str) -> Path:
    path = tmp_path / "synthetic.yaml"
    path.write_text(f"""\
data:
  class_path: SyntheticCracksDataModule
  init_args:
    root: {tmp_path / 'syn'}
    mode: unsupervised
    n_train: 4
    n_val: 4
    n_test: 2
    generate_size: [48, 48]
    crop_size: 48
    batch_size: 2
    synthetic_probability: 1.0
    synthetic_anomalies:
{synthesizer}""")
    return path


POISSON_YAML = """\
      class_path: PoissonBlend
      init_args:
        source:
          class_path: DeepCrackDataModule
          init_args:
            root: {root}
        guidance: mixed
        dilate: 3
"""


def test_short_class_paths_in_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from crackseg.cli import main

    monkeypatch.chdir(tmp_path)
    root = fakes.make_deepcrack(tmp_path / "dc", n_train=2, n_test=2)
    for synthesizer, expected in (("      class_path: CutPaste\n", ["crackseg.data.anomalies.CutPaste"]),
                                  (POISSON_YAML.format(root=root), [r"crackseg\.datamodules\.(poisson\.)?PoissonBlend",
                                                                    r"crackseg\.datamodules\.(deepcrack\.)?"
                                                                    r"DeepCrackDataModule", "guidance: mixed"])):
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", str(_config(tmp_path, synthesizer)), "--model", "UNet", "--print_config"])
        assert exc.value.code == 0
        printed = capsys.readouterr().out
        for pattern in expected:
            assert re.search(pattern, printed), pattern


def test_config_builds_a_working_datamodule(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    root = fakes.make_deepcrack(tmp_path / "dc", n_train=2, n_test=2)
    parser = ArgumentParser()
    parser.add_subclass_arguments(CrackDataModule, "data")
    config = parser.parse_path(str(_config(tmp_path, POISSON_YAML.format(root=root))))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    dm = instantiate(config).data
    op = dm.synthetic_anomalies
    assert isinstance(op, PoissonBlend) and isinstance(op.source, DeepCrackDataModule)
    assert (op.guidance, op.dilate, op.source.root) == ("mixed", 3, root)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["has_mask"].all() and (batch["label"] == 1).all() and batch["mask"].sum() > 0


# -- real data in ../shared/data -----------------------------------------------------------------
def test_poisson_blend_real_deepcrack_cracks(shared_data: Callable[..., Path]) -> None:
    deepcrack = shared_data("deepcrack")
    op = PoissonBlend(DeepCrackDataModule(deepcrack))
    op.prepare()
    assert len(op.pool) == 237  # every DeepCrack test image has a crack
    tiles = sorted((deepcrack.parent / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))[:3]
    targets = [cv2.resize(read_image(p), (256, 256), interpolation=cv2.INTER_AREA) for p in tiles]
    targets = targets or [texture((256, 256), seed) for seed in range(3)]
    for seed, target in enumerate(targets):
        out, mask = op(target, np.random.default_rng(seed))
        changed = (out != target).any(axis=2)
        assert not (changed & (mask == 0)).any()
        assert 0.002 < mask.mean() < 0.5 and changed[mask > 0].mean() > 0.9
        # the crack arrives darker than the surface it replaces
        assert out[mask > 0].mean() < target[mask > 0].mean() - 5
    source_mask = read_mask(op.pool[0].mask)
    assert source_mask.shape == (384, 544) or source_mask.shape == (544, 384)
