"""Tests of the procedural synthetic crack generator (crackseg.data.synthetic)."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.morphology import skeletonize

from crackseg.data.synthetic import SURFACES, generate_sample, generate_split, split_plan

SIZE = (128, 160)


def _junctions(skeleton: np.ndarray) -> np.ndarray:
    """Skeleton pixels with more than two skeleton neighbours (forks and crossings)."""
    sk = skeleton.astype(np.uint8)
    neighbours = cv2.filter2D(sk, -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT) - sk
    return (sk > 0) & (neighbours > 2)


def _local_widths(mask: np.ndarray, exclude_radius: int = 10, border: int = 8) -> np.ndarray:
    """Crack width (2 * distance to background - 1) along the skeleton, away from forks and borders.

    Near forks and crossings the union of two cracks is legitimately wider than either crack, and at
    the image border the distance transform is truncated, so those skeleton pixels are left out.
    """
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    skeleton = skeletonize(mask > 0)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * exclude_radius + 1, 2 * exclude_radius + 1))
    excluded = cv2.dilate(_junctions(skeleton).astype(np.uint8), kernel) > 0
    excluded[:border] = excluded[-border:] = True
    excluded[:, :border] = excluded[:, -border:] = True
    return 2.0 * dist[skeleton & ~excluded] - 1.0


def _local_std(gray: np.ndarray) -> float:
    """Mean local standard deviation (5x5 window) of a grey image."""
    g = gray.astype(np.float32)
    mean = cv2.blur(g, (5, 5))
    var = cv2.blur(g * g, (5, 5)) - mean * mean
    return float(np.sqrt(np.maximum(var, 0)).mean())


def test_output_types_and_shapes() -> None:
    image, mask = generate_sample(3, size=SIZE)
    assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
    assert mask.shape == SIZE and mask.dtype == np.uint8


@pytest.mark.parametrize("surface", [*SURFACES, "mixed"])
def test_deterministic(surface: str) -> None:
    a_img, a_mask = generate_sample(11, surface=surface)
    b_img, b_mask = generate_sample(11, surface=surface)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, c_mask = generate_sample(12, surface=surface)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_mask, c_mask)


def test_no_global_rng_state() -> None:
    np.random.seed(0)
    a = generate_sample(5, size=SIZE)[0]
    np.random.seed(1)
    np.random.random(100)
    b = generate_sample(5, size=SIZE)[0]
    np.testing.assert_array_equal(a, b)


def test_parameters_change_output() -> None:
    base = generate_sample(21, surface="concrete")[0]
    assert not np.array_equal(base, generate_sample(21, surface="asphalt")[0])
    assert not np.array_equal(base, generate_sample(21, surface="concrete", crack=False)[0])


@pytest.mark.parametrize("seed", range(12))
def test_mask_binary_and_non_empty(seed: int) -> None:
    _, mask = generate_sample(seed, size=(96, 96) if seed % 2 else (256, 256))
    assert set(np.unique(mask).tolist()) == {0, 1}


@pytest.mark.parametrize("hard_negatives", [True, False])
def test_defect_free_has_empty_mask(hard_negatives: bool) -> None:
    for seed in range(6):
        image, mask = generate_sample(seed, crack=False, hard_negatives=hard_negatives)
        assert not mask.any()
        assert image.std() > 1.0  # still a textured surface


def test_crack_width() -> None:
    widths = np.concatenate(
        [_local_widths(generate_sample(seed, hard_negatives=False)[1]) for seed in range(30)]
    )
    assert len(widths) > 1000
    assert widths.max() <= 6 + 1
    assert (widths <= 2).sum() > 100  # thin (1-2 px) parts exist: tapering ends and thin cracks
    assert (widths >= 4).sum() > 100  # and wide ones too


def test_crack_width_range_is_respected() -> None:
    widths = np.concatenate(
        [_local_widths(generate_sample(seed, width_range=(1.0, 2.0))[1]) for seed in range(10)]
    )
    assert widths.max() <= 2 + 1
    with pytest.raises(ValueError):
        generate_sample(0, width_range=(0.5, 3.0))


def test_cracks_are_darker_than_surroundings() -> None:
    for seed in range(20):
        image, mask = generate_sample(seed)
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        ring = (cv2.dilate(mask, np.ones((9, 9), np.uint8)) - cv2.dilate(mask, np.ones((3, 3), np.uint8))) > 0
        assert gray[mask > 0].mean() < 0.85 * gray[ring].mean(), seed


def test_cracks_are_tortuous_not_straight() -> None:
    """A straight line fits the crack pixels poorly: the residual spread is well above zero."""
    residuals = []
    for seed in range(10):
        _, mask = generate_sample(seed, hard_negatives=False)
        ys, xs = np.nonzero(mask)
        pts = np.stack([xs, ys], axis=1).astype(np.float64)
        pts -= pts.mean(axis=0)
        residuals.append(np.linalg.svd(pts, compute_uv=False)[1] / np.sqrt(len(pts)))
    assert np.median(residuals) > 3.0


def test_surfaces_differ() -> None:
    stats = {}
    for surface in SURFACES:
        images = [
            generate_sample(seed, surface=surface, crack=False, hard_negatives=False)[0] for seed in range(8)
        ]
        grays = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in images]
        stats[surface] = (np.mean([_local_std(g) for g in grays]), np.mean([g.mean() for g in grays]))
    assert stats["asphalt"][0] > 1.5 * stats["concrete"][0]  # coarse aggregate texture
    assert stats["asphalt"][1] < stats["concrete"][1]  # darker


def test_mixed_uses_both_surfaces() -> None:
    brightness = [
        cv2.cvtColor(generate_sample(s, crack=False, hard_negatives=False)[0], cv2.COLOR_RGB2GRAY).mean()
        for s in range(20)
    ]
    assert min(brightness) < 90 < max(brightness)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        generate_sample(0, surface="wood")
    with pytest.raises(ValueError):
        generate_sample(0, size=(4, 4))


def test_split_plan() -> None:
    plan = split_plan(7, "train", 10, 0.3)
    assert sum(flag for _, flag in plan) == 3
    assert plan == split_plan(7, "train", 10, 0.3)
    other = split_plan(7, "val", 10, 0.3)
    assert not {s for s, _ in plan} & {s for s, _ in other}


def _read_labels(split_dir: Path) -> dict[str, int]:
    with open(split_dir / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["stem", "label"]
        return {row["stem"]: int(row["label"]) for row in reader}


def test_generate_split_layout(tmp_path: Path) -> None:
    out = generate_split(tmp_path, "train", 10, seed=3, size=(64, 64), crack_fraction=0.3)
    assert out == tmp_path / "train"
    labels = _read_labels(out)
    stems = [f"{i:05d}" for i in range(10)]
    assert sorted(labels) == stems
    assert sum(labels.values()) == 3
    for stem in stems:
        image = cv2.imread(str(out / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        assert bool(mask.any()) == bool(labels[stem])
    params = json.loads((out / ".complete").read_text())
    assert params["n_images"] == 10 and params["seed"] == 3
    # The files are exactly generate_sample's output (images stored as BGR PNG).
    seed, has_crack = split_plan(3, "train", 10, 0.3)[0]
    image, mask = generate_sample(seed, size=(64, 64), crack=has_crack)
    np.testing.assert_array_equal(cv2.imread(str(out / "images" / "00000.png"))[..., ::-1], image)
    np.testing.assert_array_equal(cv2.imread(str(out / "masks" / "00000.png"), 0), mask * 255)
    # No temporary folders are left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


@pytest.mark.parametrize(("n_images", "fraction"), [(9, 0.5), (20, 0.25), (5, 0.0), (4, 1.0)])
def test_split_label_counts(tmp_path: Path, n_images: int, fraction: float) -> None:
    out = generate_split(tmp_path, "val", n_images, seed=1, size=(32, 32), crack_fraction=fraction)
    assert sum(_read_labels(out).values()) == round(n_images * fraction)


def test_splits_do_not_share_images(tmp_path: Path) -> None:
    a = generate_split(tmp_path, "train", 4, seed=0, size=(48, 48))
    b = generate_split(tmp_path, "test", 4, seed=0, size=(48, 48))
    images_a = {(a / "images" / f"{i:05d}.png").read_bytes() for i in range(4)}
    images_b = {(b / "images" / f"{i:05d}.png").read_bytes() for i in range(4)}
    assert not images_a & images_b


def test_split_is_cached(tmp_path: Path) -> None:
    out = generate_split(tmp_path, "train", 4, seed=5, size=(48, 48))
    files = [out / ".complete", out / "labels.csv", out / "images" / "00000.png", out / "masks" / "00003.png"]
    old = 1_000_000_000  # push mtimes into the past so any rewrite is detectable
    for f in files:
        os.utime(f, (old, old))
    assert generate_split(tmp_path, "train", 4, seed=5, size=(48, 48)) == out
    assert all(f.stat().st_mtime == old for f in files)


def test_split_rebuilt_when_parameters_change(tmp_path: Path) -> None:
    out = generate_split(tmp_path, "train", 4, seed=5, size=(48, 48))
    before = (out / "images" / "00000.png").read_bytes()
    (out / "stale.txt").write_text("left over")
    generate_split(tmp_path, "train", 6, seed=6, size=(40, 40))
    assert json.loads((out / ".complete").read_text())["seed"] == 6
    assert len(list((out / "images").glob("*.png"))) == 6
    assert (out / "images" / "00000.png").read_bytes() != before
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]


def test_incomplete_split_is_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "train"
    (out / "images").mkdir(parents=True)
    (out / "images" / "00000.png").write_bytes(b"garbage")
    generate_split(tmp_path, "train", 3, seed=0, size=(32, 32))
    assert cv2.imread(str(out / "images" / "00000.png")) is not None
    assert (out / ".complete").exists()


def test_speed() -> None:
    generate_sample(0)  # warm-up (imports, OpenCV initialisation)
    start = time.perf_counter()
    for seed in range(10):
        generate_sample(seed)
    assert (time.perf_counter() - start) / 10 < 0.1
