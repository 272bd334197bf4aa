"""End-to-end tests of the ``crackseg`` command through ``main([...])`` on tiny synthetic data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import crackseg
from crackseg.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Tiny synthetic data: 64 px images, a handful of each split.
TINY_DATA = [
    "--data", "SyntheticCracksDataModule",
    "--data.init_args.n_train", "6", "--data.init_args.n_val", "4", "--data.init_args.n_test", "4",
    "--data.init_args.generate_size", "[64, 64]", "--data.init_args.crop_size", "64",
    "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
]
TINY_TRAINER = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
]


def tiny_model(name: str) -> list[str]:
    if name == "UNet":
        return ["--model", "UNet", "--model.init_args.base_channels", "4", "--model.init_args.depth", "2"]
    return ["--model", name, "--model.init_args.width_multiplier", "0.0625"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert crackseg.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")
                                          if p.parent.name not in ("trainer", "logger", "predict")))
def test_every_config_parses(config: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each method config, composed with the trainer and logger fragments, resolves to known classes (a fragment
    without a data class: after the first dataset config of its method folder)."""
    base = []
    if "class_path" not in ((yaml.safe_load((CONFIGS / config).read_text()) or {}).get("data") or {}):
        folder = CONFIGS / config.split("/")[0]
        base = ["--config", str(next(p for p in sorted(folder.glob("*.yaml"))
                                     if "class_path" in (yaml.safe_load(p.read_text()).get("data") or {})))]
    args = ["fit", "--config", str(CONFIGS / "trainer/cpu.yaml"), *base, "--config", str(CONFIGS / config),
            "--config", str(CONFIGS / "logger/csv.yaml"), "--print_config"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: crackseg." in printed
    assert "accelerator: cpu" in printed


@pytest.mark.parametrize("model", ["UNet", "DeepCrackLiu"])
def test_fast_dev_run(model: str, workdir: Path) -> None:
    cli = main(["fit", "--data.init_args.root", str(workdir / "data"), *TINY_DATA, *tiny_model(model),
                "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


def test_fit_test_predict_with_calibrated_threshold(workdir: Path) -> None:
    """fit → checkpoint with the F1-calibrated threshold → test and predict use it; CLI value overrides it."""
    ckpt_dir = workdir / "ckpt"
    common = ["--data.init_args.root", str(workdir / "data"), *TINY_DATA, *tiny_model("DeepCrackLiu")]
    callbacks = ["--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={ckpt_dir}",
                 "--trainer.callbacks.filename=best", "--trainer.callbacks+=F1Threshold"]
    cli = main(["fit", *common, *TINY_TRAINER, *callbacks])
    calibrated = float(cli.model.pixel_threshold)
    assert calibrated != 0.5
    state = torch.load(ckpt_dir / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert float(state["pixel_threshold"]) == pytest.approx(calibrated)

    writer = ["--trainer.callbacks+=PredictionWriter", f"--trainer.callbacks.output_dir={workdir / 'out'}",
              "--trainer.callbacks.stages=[test, predict]"]
    cli = main(["test", *common, *TINY_TRAINER, *writer, "--ckpt_path", str(ckpt_dir / "best.ckpt")])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/pixel_threshold"]) == pytest.approx(calibrated)
    for key in ("test/ods", "test/ois", "test/ap", "test/ods_dataset", "test/ap_dataset", "test/iou", "test/region_f1",
                "test/image_f1"):
        assert 0.0 <= float(metrics[key]) <= 1.0
    masks = sorted((workdir / "out/test/masks").glob("*.png"))
    assert len(masks) == 4
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}

    # predict on a folder of new images, threshold overridden on the command line
    images = workdir / "new_images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a b.png", "c.jpg"):  # a space in the name: outputs use sanitised names
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / name)
    cli = main(["predict", *common, *writer, "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                "--data.init_args.predict_path", str(images), "--model.init_args.threshold", "0.25",
                "--ckpt_path", str(ckpt_dir / "best.ckpt")])
    assert float(cli.model.pixel_threshold) == pytest.approx(0.25)
    with open(workdir / "out/predict/scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["a_b", "c"]
    assert all(float(r["pixel_threshold"]) == pytest.approx(0.25) for r in rows)
    mask = np.asarray(Image.open(workdir / "out/predict/masks/a_b.png"))
    assert mask.shape == (50, 70)  # written at the input's own size, not padded
    assert (workdir / "out/predict/overlays/c.png").is_file()


def test_map_logger_writes_panels_without_logger_backend(workdir: Path) -> None:
    main(["fit", "--data.init_args.root", str(workdir / "data"), *TINY_DATA, *tiny_model("DeepCrackLiu"),
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
          "--trainer.accelerator", "cpu", "--trainer.enable_checkpointing", "false",
          "--trainer.logger+=CSVLogger", f"--trainer.logger.save_dir={workdir / 'logs'}",
          "--trainer.callbacks+=MapLogger", "--trainer.callbacks.max_images=2"])
    panels = sorted((workdir / "logs").rglob("maps/val_maps_*.png"))
    assert len(panels) == 2
    panel = np.asarray(Image.open(panels[0]))
    # input | ground truth | map | mask | 5 side maps, 64 px each, separated by 4 px
    assert panel.shape == (64, 9 * 64 + 8 * 4, 3)


def test_wandb_logger_offline(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cli = main(["fit", "--config", str(CONFIGS / "logger/wandb.yaml"), "--data.init_args.root", str(workdir / "data"),
                *TINY_DATA, *tiny_model("UNet"), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
                "--trainer.enable_checkpointing", "false", f"--trainer.logger.init_args.save_dir={workdir / 'wb'}",
                "--trainer.callbacks+=MapLogger"])
    import wandb

    wandb.finish()  # as the end of the process would: a later in-process run must not reuse this one
    assert cli.trainer.state.finished
    assert list((workdir / "wb").rglob("offline-run-*")), "no offline W&B run was written"


def test_unknown_config_key_is_named(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY_DATA, *tiny_model("UNet"), "--model.init_args.learning_rate_typo", "0.1"])
    assert exc.value.code != 0
    assert "learning_rate_typo" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--model.init_args.lr", "-0.1", "model.lr"),
    ("--data.init_args.batch_size", "0", "data.batch_size"),
])
def test_bad_values_are_named(option: str, value: str, message: str, workdir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises((SystemExit, ValueError)) as exc:
        main(["fit", "--data.init_args.root", str(workdir / "data"), *TINY_DATA, *tiny_model("UNet"), option, value,
              "--trainer.fast_dev_run", "true"])
    assert message in str(exc.value) + capsys.readouterr().err


def test_missing_root_fails_before_training(workdir: Path) -> None:
    from crackseg.data.io import DataError

    with pytest.raises(DataError, match="nowhere"):
        main(["fit", "--data", "DeepCrackDataModule", "--data.init_args.root", str(workdir / "nowhere"),
              *tiny_model("UNet"), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert not (workdir / "lightning_logs").exists() or not list((workdir / "lightning_logs").rglob("*.ckpt"))


def test_anomaly_maps_get_unbounded_metrics() -> None:
    """A module declaring unbounded anomaly maps is scored without the [0, 1] sweep, with AUPRO at test."""
    from crackseg.lightning_modules import UNet

    class ScoreUNet(UNet):
        maps_are_probabilities = False

        def anomaly_map(self, outputs):  # an unbounded, monotone score
            return torch.exp(outputs["logits"]) * 10.0

    model = ScoreUNet(base_channels=4, depth=2, threshold=12.0)
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": torch.zeros(2, 1, 32, 32),
             "has_mask": torch.ones(2, dtype=torch.bool), "label": torch.tensor([0, 1])}
    batch["mask"][1, 0, 10:14, :] = 1
    with torch.no_grad():
        model._eval_step(batch, 0, "test")
    values = model.pixel_metrics["test"].compute()
    assert "ods" not in values and {"auroc", "auprc", "aupro", "f1"} <= set(values)


def _callback_types(cli: object) -> list[str]:
    return sorted(type(c).__name__ for c in cli.trainer.callbacks)  # type: ignore[attr-defined]


def test_method_default_callbacks_are_added_unless_configured(workdir: Path) -> None:
    """A config that names no callbacks runs with the method's own (checkpoint by its monitor, threshold
    calibration, map panels, prediction files); a configured callback replaces only the default of its kind;
    ``--default_callbacks false`` keeps only the configured ones."""
    common = ["fit", "--data.init_args.root", str(workdir / "data"), *TINY_DATA, *tiny_model("DeepCrackLiu"),
              *TINY_TRAINER, "--print_config=skip_null"]
    cli = main(common[:-1] + ["--trainer.default_root_dir", str(workdir / "run")])
    names = _callback_types(cli)
    assert {"LastModelCheckpoint", "F1Threshold", "MapLogger", "PredictionWriter"} <= set(names)
    checkpoint = cli.trainer.checkpoint_callback
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.filename) == ("val/ods_dataset", "max", "best")
    assert (workdir / "run" / "checkpoints" / "best.ckpt").is_file()
    assert float(cli.model.pixel_threshold) != 0.5  # F1Threshold calibrated it

    cli = main(common[:-1] + ["--trainer.callbacks+=MeanStdThreshold", "--trainer.callbacks+=OtsuBaseline"])
    names = _callback_types(cli)
    assert "MeanStdThreshold" in names and "F1Threshold" not in names  # same kind: the configured one
    assert {"OtsuBaseline", "MapLogger", "PredictionWriter", "LastModelCheckpoint"} <= set(names)

    cli = main(common[:-1] + ["--default_callbacks", "false", "--trainer.callbacks+=OtsuBaseline"])
    names = _callback_types(cli)
    assert "OtsuBaseline" in names
    assert not {"F1Threshold", "MapLogger", "PredictionWriter", "LastModelCheckpoint"} & set(names)


def test_classifier_declares_its_own_callbacks() -> None:
    from crackseg.callbacks import MeanStdThreshold, PredictionWriter
    from crackseg.lightning_modules import CrackClassifier, MSFlow

    classifier = dict(CrackClassifier.default_callbacks())
    assert PredictionWriter not in classifier  # its outputs are pseudo labels
    msflow = dict(MSFlow.default_callbacks())
    assert msflow[MeanStdThreshold] == {"level": "both"}


def test_run_name_follows_the_composed_configs() -> None:
    from crackseg.cli import run_name

    assert run_name([CONFIGS / "trainer/cpu.yaml", CONFIGS / "scnet/deepcrack.yaml",
                     CONFIGS / "scnet/ablations/hcnn_baseline.yaml", CONFIGS / "logger/csv.yaml"]) \
        == "scnet_deepcrack_hcnn_baseline"
    assert run_name([CONFIGS / "quickstart.yaml"]) == "quickstart"
    assert run_name([CONFIGS / "trainer/cpu.yaml"]) is None


def test_run_folder_is_derived_and_saved_with_the_config(workdir: Path) -> None:
    """No ``default_root_dir`` in the config: checkpoints land in ``runs/<name>``, whose saved config re-runs
    in the same folder."""
    cli = main(["fit", "--config", str(CONFIGS / "unet/synthetic.yaml"), "--data.init_args.root",
                str(workdir / "data"), *TINY_DATA[2:], "--model.init_args.base_channels", "4",
                "--model.init_args.depth", "2", *TINY_TRAINER])
    assert Path(cli.trainer.default_root_dir) == Path("runs/unet_synthetic")
    assert (workdir / "runs/unet_synthetic/checkpoints/best.ckpt").is_file()
    saved = next((workdir / "runs/unet_synthetic").rglob("config.yaml"))
    assert "default_root_dir: runs/unet_synthetic" in saved.read_text()


def test_any_network_by_class_path_trains_and_reloads(workdir: Path) -> None:
    """``SupervisedSegmentation`` builds the network its ``net`` names, like every method builds its own in
    ``configure_models``; the spec is a hyper-parameter, so ``test`` rebuilds it from the checkpoint."""
    net = "{class_path: crackseg.models.UNetModel, init_args: {in_channels: 3, base_channels: 4, depth: 2}}"
    common = ["--model", "SupervisedSegmentation", "--model.init_args.net", net, "--data.init_args.root",
              str(workdir / "data"), *TINY_DATA, *TINY_TRAINER, "--trainer.default_root_dir", str(workdir / "run")]
    cli = main(["fit", *common])
    assert type(cli.model.net).__name__ == "UNetModel"
    checkpoint = torch.load(workdir / "run/checkpoints/best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["net"]["class_path"] == "crackseg.models.UNetModel"
    cli = main(["test", *common, "--ckpt_path", str(workdir / "run/checkpoints/best.ckpt")])
    assert "test/ods_dataset" in cli.trainer.callback_metrics
    with pytest.raises(ValueError, match="model.init_args.net"):
        main(["fit", "--model", "SupervisedSegmentation", "--data.init_args.root", str(workdir / "data"),
              *TINY_DATA, *TINY_TRAINER])
