"""``crackseg predict`` on a real, messy photo folder: unreadable files are skipped and listed, an interrupted run
resumes where it stopped (issue 19)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crackseg.cli import main
from crackseg.data.io import DataError

TINY_FIT = ["--data", "SyntheticCracksDataModule", "--data.init_args.n_train", "2", "--data.init_args.n_val", "1",
            "--data.init_args.n_test", "1", "--data.init_args.generate_size", "[32, 32]",
            "--model", "UNet", "--model.init_args.base_channels", "4", "--model.init_args.depth", "2"]


def _messy_folder(folder: Path) -> list[str]:
    """Three good photos, a truncated JPEG, an empty file, a text file named .jpg and a note; the good stems."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"good_{i}.jpg")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture")
    (folder / "notes.txt").write_text("flight log")
    return [f"good_{i}" for i in range(3)]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def checkpoint(workdir: Path) -> tuple[list[str], Path]:
    common = ["--data.init_args.root", str(workdir / "data"), *TINY_FIT]
    cli = main(["fit", *common, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    ckpt = workdir / "tiny.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    return common, ckpt


def _predict(common: list[str], ckpt: Path, photos: Path, out: Path, *extra: str):
    return main(["predict", *common, "--trainer.callbacks+=PredictionWriter", f"--trainer.callbacks.output_dir={out}",
                 *extra, "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                 "--trainer.enable_progress_bar", "false", "--data.init_args.predict_path", str(photos),
                 "--ckpt_path", str(ckpt)])


def test_unreadable_files_are_skipped_and_listed_then_predict_resumes(workdir: Path, checkpoint) -> None:
    common, ckpt = checkpoint
    good = _messy_folder(workdir / "photos")
    out = workdir / "out"
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        _predict(common, ckpt, workdir / "photos", out)
    folder = out / "predict"
    skipped = _rows(folder / "skipped.csv")
    assert sorted(Path(r["path"]).name for r in skipped) == ["empty.jpg", "text.jpg", "truncated.jpg"]
    assert all(r["reason"] for r in skipped)
    scores = _rows(folder / "scores.csv")
    assert [r["name"] for r in scores] == good
    assert sorted(p.stem for p in (folder / "masks").glob("*.png")) == good
    first = {r["name"]: r for r in scores}

    # an interrupted run: one image's outputs never finished
    (folder / ".records" / "good_1.json").unlink()
    (folder / "scores.csv").unlink()
    cli = _predict(common, ckpt, workdir / "photos", out)
    writer = next(c for c in cli.trainer.callbacks if type(c).__name__ == "PredictionWriter")
    assert writer.resumed == 2
    assert len(cli.datamodule.datasets["predict"]) == 1  # only good_1 predicted again
    again = _rows(folder / "scores.csv")
    assert [r["name"] for r in again] == good and again[1]["score"] == first["good_1"]["score"]
    assert {r["name"] for r in _rows(folder / "cracks.csv")} <= set(good)  # rebuilt from every image's record

    # everything finished: nothing is predicted, the CSVs stay complete; resume false redoes all
    cli = _predict(common, ckpt, workdir / "photos", out)
    assert len(cli.datamodule.datasets["predict"]) == 0 and [r["name"] for r in _rows(folder / "scores.csv")] == good
    cli = _predict(common, ckpt, workdir / "photos", out, "--trainer.callbacks.resume=false")
    assert len(cli.datamodule.datasets["predict"]) == 3


def test_on_unreadable_error_and_no_readable_image(workdir: Path, checkpoint) -> None:
    common, ckpt = checkpoint
    _messy_folder(workdir / "photos")
    with pytest.raises(DataError, match=r"(truncated|empty|text)\.jpg.*on_unreadable=error"):
        _predict(common, ckpt, workdir / "photos", workdir / "out", "--data.init_args.on_unreadable", "error")
    broken = workdir / "broken"
    broken.mkdir()
    (broken / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="none of the 1 predict images is readable"):
        _predict(common, ckpt, broken, workdir / "out2")
