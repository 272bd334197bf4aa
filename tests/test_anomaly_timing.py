"""benchmarks.anomaly_timing: re-timing a cpu-anomaly run's checkpoints in rounds."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest

from benchmarks import anomaly_timing
from crackseg.lightning_modules import SkipAE


def save_skipae(workdir: Path) -> None:
    model = SkipAE(backbone="resnet18", blocks=(1,), weights=None, base_channels=4, depth=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    checkpoint = workdir / "SkipAE_magnetic_tile" / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir(parents=True)
    trainer.save_checkpoint(checkpoint)


def test_rows_give_the_median_and_range_of_the_rounds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_skipae(tmp_path)
    text = anomaly_timing.main(["--workdir", str(tmp_path), "--methods", "SkipAE", "--batches", "1", "2",
                                "--rounds", "2", "--runs", "1", "--warmup", "0", "--size", "32",
                                "--anomalib-python", str(tmp_path / "no-python")])
    progress = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round ")]
    assert [line.split(":")[0] for line in progress] == ["round 1", "round 2"]
    row = next(line for line in text.splitlines() if line.startswith("| SkipAE |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["SkipAE", "ours", "32²"]
    for cell in cells[3:]:  # "median (min–max)" of the two rounds
        median, low, high = (float(v) for v in cell.replace("(", "").replace(")", "").replace("–", " ").split())
        assert 0 < low <= median <= high
    assert "anomalib peers not timed" in text  # says why the peer rows are missing


def test_missing_checkpoint_names_the_run_to_make(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cpu-anomaly"):
        anomaly_timing.main(["--workdir", str(tmp_path), "--methods", "DFR", "--anomalib-python", ""])
