"""A short real training run: the learned baseline must clearly beat the Otsu threshold of dark pixels."""

from __future__ import annotations

from pathlib import Path

import pytest

from crackseg.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_trained_deepcrack_beats_otsu_on_synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quickstart recipe, shrunk (96 px images, 10 epochs): test metrics are printed beside Otsu's."""
    monkeypatch.chdir(tmp_path)
    common = ["--config", str(REPO / "configs/quickstart.yaml"),
              "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.generate_size", "[96, 96]",
              "--data.init_args.crop_size", "96", "--data.init_args.n_train", "48",
              "--data.init_args.n_val", "8", "--data.init_args.n_test", "16",
              "--model.init_args.width_multiplier", "0.25", "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.max_epochs", "10"])
    cli = main(["test", *common, "--ckpt_path", str(tmp_path / "runs/quickstart/checkpoints/best.ckpt")])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    # threshold-free sweeps: better; at the calibrated threshold: far better (Otsu marks every dark pore)
    for key in ("ods", "ois", "ap"):
        assert metrics[f"test/{key}"] > metrics[f"otsu/{key}"], (key, metrics)
    for key in ("f1", "iou"):
        assert metrics[f"test/{key}"] > metrics[f"otsu/{key}"] + 0.15, (key, metrics)
    assert len(list((tmp_path / "runs/quickstart/predictions/test/masks").glob("*.png"))) == 16
