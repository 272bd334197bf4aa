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
    report = (folder / "report.html").read_text()
    assert all(f'data-v="{name}"' in report for name in good) and "truncated" not in report.split("<h2>Images")[1]
    assert "skipped (unreadable, see skipped.csv)</th><td>3" in report and "<svg" in report
    assert all((folder / "thumbs" / f"{name}.jpg").is_file() for name in good)
    assert "https://" not in report.replace("http://www.w3.org/2000/svg", "")  # offline: nothing fetched

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


def test_test_report_has_ground_truth_and_per_image_f1(workdir: Path, checkpoint) -> None:
    common, ckpt = checkpoint
    out = workdir / "out"
    main(["test", *common, "--trainer.callbacks+=PredictionWriter", f"--trainer.callbacks.output_dir={out}",
          "--trainer.callbacks.stages=[test]", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
          "--trainer.enable_progress_bar", "false", "--ckpt_path", str(ckpt)])
    folder = out / "test"
    scores = _rows(folder / "scores.csv")
    assert scores and all(0.0 <= float(r["f1"]) <= 1.0 for r in scores)
    report = (folder / "report.html").read_text()
    assert "ground truth" in report and "<th data-col" in report and ">F1</th>" in report
    assert all((folder / "ground_truth" / f"{r['name']}.jpg").is_file() for r in scores)


CHROMIUM = next((Path(p) for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package chromium) not installed")
def test_report_renders_in_headless_chromium(workdir: Path, checkpoint) -> None:
    import subprocess

    common, ckpt = checkpoint
    _messy_folder(workdir / "photos")
    out = workdir / "out"
    _predict(common, ckpt, workdir / "photos", out, "--trainer.callbacks.mm_per_pixel=0.5")
    shot = workdir / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
                    f"--screenshot={shot}", (out / "predict" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "predict" / "report.html").as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-ready="1"' in dom  # the sort / filter script parsed and ran to its end
    picture = np.asarray(Image.open(shot).convert("RGB"))
    assert picture.shape[:2] == (900, 1200)
    assert (picture < 128).mean() > 0.01 and (picture > 200).mean() > 0.3  # text and images on a light page
