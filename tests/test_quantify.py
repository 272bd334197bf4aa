"""Crack quantification on drawn shapes of known geometry, and its CSV from the prediction writer."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from crackseg.callbacks import PredictionWriter
from crackseg.inference.quantify import crack_fields, quantify_cracks, skeleton_length


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8])
def test_straight_crack_length_and_width(width: int) -> None:
    mask = np.zeros((60, 300), np.uint8)
    mask[30:30 + width, 40:240] = 1  # 200 px long, ``width`` px wide
    (row,) = quantify_cracks(mask)
    assert row["length_px"] == pytest.approx(200, abs=1.0)
    assert row["max_width_px"] == pytest.approx(width)
    assert row["mean_width_px"] == pytest.approx(width, abs=0.05 * width)
    assert row["area_px"] == 200 * width
    assert (row["bbox_x"], row["bbox_y"], row["bbox_width"], row["bbox_height"]) == (40, 30, 200, width)


def test_vertical_crack_measures_like_a_horizontal_one() -> None:
    mask = np.zeros((300, 60), np.uint8)
    mask[40:240, 30:35] = 1
    (row,) = quantify_cracks(mask)
    assert row["length_px"] == pytest.approx(200, abs=1.0) and row["max_width_px"] == pytest.approx(5)


def test_diagonal_steps_count_sqrt2() -> None:
    mask = np.zeros((160, 160), np.uint8)
    cv2.line(mask, (10, 10), (130, 130), 1, 1)  # 121 pixels, 120 diagonal steps
    (row,) = quantify_cracks(mask)
    # 120 √2 between the end pixels' centres, plus half a pixel beyond each end
    assert row["length_px"] == pytest.approx(120 * math.sqrt(2) + 1, abs=1e-3)
    assert row["area_px"] == 121 and row["max_width_px"] == pytest.approx(1)
    # an L corner is two orthogonal steps, not two plus a diagonal one
    assert skeleton_length(np.array([[1, 1], [0, 1]], bool)) == pytest.approx(2)


def test_two_cracks_two_rows_and_mm_scale() -> None:
    mask = np.zeros((100, 200), np.uint8)
    mask[10:13, 20:120] = 1  # 100 x 3
    mask[60:100, 150:157] = 255  # 40 x 7, touches the bottom border; any non-zero value is crack
    rows = quantify_cracks(mask, mm_per_pixel=0.25)
    assert [r["crack_id"] for r in rows] == [1, 2]
    assert set(rows[0]) == set(crack_fields(0.25))
    first, second = rows
    assert first["length_px"] == pytest.approx(100, abs=1) and first["max_width_px"] == pytest.approx(3)
    assert second["max_width_px"] == pytest.approx(7) and second["area_px"] == 280
    for row in rows:
        assert row["length_mm"] == pytest.approx(0.25 * row["length_px"], abs=1e-3)
        assert row["max_width_mm"] == pytest.approx(0.25 * row["max_width_px"], abs=1e-3)
        assert row["mean_width_mm"] == pytest.approx(0.25 * row["mean_width_px"], abs=1e-3)
        assert row["area_mm2"] == pytest.approx(0.0625 * row["area_px"], abs=1e-3)
    assert "length_mm" not in quantify_cracks(mask)[0]


def test_min_area_drops_specks_and_keeps_ids() -> None:
    mask = np.zeros((50, 50), np.uint8)
    mask[5, 5] = 1  # a one-pixel speck: length 1, width 1
    mask[20:23, 10:40] = 1
    speck, crack = quantify_cracks(mask)
    assert speck["length_px"] == pytest.approx(1) and speck["max_width_px"] == pytest.approx(1)
    kept = quantify_cracks(mask, min_area=2)
    assert [r["crack_id"] for r in kept] == [crack["crack_id"]] == [2]
    assert quantify_cracks(np.zeros((10, 10), np.uint8)) == []


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="mm_per_pixel"):
        quantify_cracks(np.zeros((4, 4), np.uint8), mm_per_pixel=0)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        quantify_cracks(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="mm_per_pixel"):
        PredictionWriter(mm_per_pixel=-1.0)


@pytest.mark.parametrize("quantify", [True, False])
def test_writer_writes_cracks_csv_beside_the_masks(quantify: bool, tmp_path: Path) -> None:
    image = tmp_path / "wall photo.png"
    Image.fromarray(np.full((40, 90, 3), 200, np.uint8)).save(image)
    map_ = torch.zeros(1, 1, 40, 90)
    map_[..., 10:13, 5:85] = 0.9  # one crack, 80 x 3
    map_[..., 30:32, 5:15] = 0.9  # another, 10 x 2
    outputs = {"map": map_, "score": torch.tensor([0.9]), "pred_label": torch.tensor([True])}
    batch = {"path": [str(image)], "orig_size": torch.tensor([[40, 90]])}
    module = SimpleNamespace(pixel_threshold=torch.tensor(0.5), image_threshold=torch.tensor(0.5),
                             maps_are_probabilities=True)
    trainer = SimpleNamespace(is_global_zero=True)
    writer = PredictionWriter(tmp_path / "out", quantify=quantify, mm_per_pixel=2.0)
    writer.on_predict_start(trainer, module)
    writer.on_predict_batch_end(trainer, module, outputs, batch, 0)
    writer.on_predict_end(trainer, module)
    folder = tmp_path / "out/predict"
    assert (folder / "masks/wall_photo.png").is_file()
    assert not list(folder.glob(".*tmp"))
    if not quantify:
        assert not (folder / "cracks.csv").exists()
        return
    with open(folder / "cracks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["name"], r["crack_id"]) for r in rows] == [("wall_photo", "1"), ("wall_photo", "2")]
    assert float(rows[0]["length_px"]) == pytest.approx(80, abs=1) and float(rows[0]["max_width_mm"]) == 6.0
    with open(folder / "scores.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["cracks"] == "2"
