"""Threshold callbacks against thresholds recomputed by hand from the validation predictions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crackseg.callbacks import F1Threshold, MeanStdThreshold
from crackseg.cli import main
from crackseg.metrics import f1_optimal_threshold

TINY = ["--data", "SyntheticCracksDataModule", "--data.init_args.n_train", "4", "--data.init_args.n_val", "6",
        "--data.init_args.n_test", "2", "--data.init_args.generate_size", "[48, 48]",
        "--data.init_args.crop_size", "48", "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "3",
        "--model", "UNet", "--model.init_args.base_channels", "4", "--model.init_args.depth", "2",
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"]


def _val_outputs(cli) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps, scores, masks and labels of the whole validation split, recomputed with the trained model."""
    model = cli.model.eval()
    maps, scores, masks, labels = [], [], [], []
    with torch.no_grad():
        for batch in cli.datamodule.val_dataloader():
            result = model.evaluate_batch(batch)
            maps.append(result["map"])
            scores.append(result["score"])
            masks.append(batch["mask"])
            labels.append(batch["label"])
    return torch.cat(maps), torch.cat(scores), torch.cat(masks), torch.cat(labels)


def test_mean_std_threshold_image_and_pixel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", *TINY, "--data.init_args.root", str(tmp_path / "data"), "--data.init_args.mode", "unsupervised",
                "--trainer.callbacks+=MeanStdThreshold", "--trainer.callbacks.level=both"])
    assert any(isinstance(c, MeanStdThreshold) for c in cli.trainer.callbacks)
    maps, scores, _, labels = _val_outputs(cli)
    normal = labels == 0
    assert 0 < int(normal.sum()) < len(labels)  # the unsupervised validation split mixes both classes
    expected_image = scores[normal].mean() + scores[normal].std(correction=0)
    expected_pixel = maps[normal].mean() + maps[normal].std(correction=0)
    assert float(cli.model.image_threshold) == pytest.approx(float(expected_image), rel=1e-4)
    assert float(cli.model.pixel_threshold) == pytest.approx(float(expected_pixel), rel=1e-4)
    train_labels = {s.label for s in cli.datamodule.datasets["train"].samples}
    assert train_labels == {0}  # normal-only training in unsupervised mode


def test_f1_threshold_pixel_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", *TINY, "--data.init_args.root", str(tmp_path / "data"), "--trainer.callbacks+=F1Threshold"])
    assert any(isinstance(c, F1Threshold) for c in cli.trainer.callbacks)
    maps, _, masks, _ = _val_outputs(cli)
    expected, best_f1 = f1_optimal_threshold(maps.flatten(), masks.flatten().long())
    assert float(cli.model.pixel_threshold) == pytest.approx(expected, rel=1e-5)
    assert float(cli.trainer.callback_metrics["val/pixel_best_f1"]) == pytest.approx(best_f1, rel=1e-4)


def test_callback_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="level"):
        F1Threshold(level="pixels")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pixels_per_image"):
        MeanStdThreshold(max_pixels_per_image=0)


def test_map_logger_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    main(["fit", *TINY, "--data.init_args.root", str(tmp_path / "data"),
          "--trainer.logger=TensorBoardLogger", f"--trainer.logger.save_dir={tmp_path / 'tb'}",
          "--trainer.callbacks+=MapLogger", "--trainer.callbacks.max_images=2"])
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert {"val/maps/0", "val/maps/1"} <= set(accumulator.Tags()["images"])
