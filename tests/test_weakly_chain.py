"""The weakly supervised chain from the CLI: classifier → ``crackseg pseudo-label`` → segmentation on pseudo labels."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fakes import offline_or_random_weights

from crackseg.cli import main
from crackseg.datamodules import DeepCrackDataModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "weakly"
TINY_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                "--trainer.max_epochs", "1"]

pytestmark = pytest.mark.usefixtures("single_thread")


def _config(name: str, workdir: Path, model: dict, data: dict, source: dict | None = None) -> Path:
    """A copy of ``configs/weakly/<name>.yaml`` with the given model / data / source arguments."""
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    cfg["model"]["init_args"].update(model)
    cfg["data"]["init_args"].update(data)
    if source is not None:
        cfg["data"]["init_args"]["source"]["init_args"].update(source)
    path = workdir / "configs" / "weakly" / f"{name}.yaml"  # named as the original: runs/weakly_<name>
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _chain(workdir: Path, dataset: str, source: dict, pseudo_data: list[str], limits: list[str]) -> dict[str, float]:
    classifier = _config(f"classifier_{dataset}", workdir, {"weights": offline_or_random_weights()},
                         {"batch_size": 4, "eval_batch_size": 16}, source)
    main(["fit", "--config", str(classifier), *TINY_TRAINER, *limits])
    checkpoint = workdir / f"runs/weakly_classifier_{dataset}/checkpoints/last.ckpt"
    assert checkpoint.is_file()

    out = workdir / f"runs/pseudo_labels_{dataset}"
    # an untrained classifier labels few pixels: keep every image (empty labels allowed) so the chain always runs
    report = main(["pseudo-label", "--ckpt_path", str(checkpoint), *pseudo_data, "--out", str(out), "--device", "cpu",
                   "--progress", "false", "--params.below_min", "empty"])
    assert report["images"] == report["labelled"] > 0
    assert len(list((out / "train_lab").glob("*.png"))) == report["labelled"]
    assert (out / "quality.json").is_file()

    segmentation = _config(f"unet_wsv_{dataset}", workdir, {"base_channels": 8, "depth": 2},
                           {"root": str(out), "crop_size": 64, "batch_size": 2})
    common = ["--config", str(segmentation), *TINY_TRAINER, *limits]
    main(["fit", *common])
    cli = main(["test", *common, "--ckpt_path", str(workdir / f"runs/weakly_unet_wsv_{dataset}/checkpoints/last.ckpt")])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("ods", "ois", "ap"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0 and not math.isnan(metrics[f"test/{key}"]), key
    return metrics


def test_chain_on_synthetic(workdir: Path) -> None:
    root = workdir / "data"
    source = {"root": str(root), "n_train": 4, "n_val": 2, "n_test": 2, "generate_size": [192, 192]}
    pseudo = ["--data.class_path", "SyntheticCracksDataModule", "--data.init_args.root", str(root),
              "--data.init_args.mode", "supervised", "--data.init_args.generate_size", "[192, 192]",
              "--data.init_args.n_train", "4", "--data.init_args.n_val", "2", "--data.init_args.n_test", "2"]
    _chain(workdir, "synthetic", source, pseudo, [])


def test_chain_on_real_deepcrack(workdir: Path, shared_data: Callable[..., Path]) -> None:
    """Four real training and two real test images (linked into a DeepCrack layout in tmp_path)."""
    root = workdir / "deepcrack"
    real = DeepCrackDataModule(shared_data("deepcrack", "DeepCrack"), val_fraction=0.0).split_samples()
    for split, samples in (("train", real["train"][:4]), ("test", real["test"][:2])):
        for sample in samples:
            for path, folder in ((sample.image, f"{split}_img"), (sample.mask, f"{split}_lab")):
                (root / folder).mkdir(parents=True, exist_ok=True)
                (root / folder / path.name).symlink_to(path)
    limits = ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"]
    _chain(workdir, "deepcrack", {"root": str(root), "val_fraction": 0.25},
           ["--data.class_path", "DeepCrackDataModule", "--data.init_args.root", str(root)], limits)


def test_fast_cpu_classifier_config_trains_and_pseudo_labels(workdir: Path) -> None:
    """configs/weakly/classifier_fast_deepcrack.yaml (narrow ResNet-10-T from random weights) on a fake DeepCrack:
    it builds the small network its header promises, trains, and its checkpoint makes pseudo labels."""
    from fakes import make_deepcrack

    from crackseg.lightning_modules import CrackClassifier

    root = make_deepcrack(workdir / "deepcrack", n_train=4, n_test=2, size=(128, 160))
    config = _config("classifier_fast_deepcrack", workdir, {}, {"batch_size": 4, "eval_batch_size": 16},
                     {"root": str(root)})
    main(["fit", "--config", str(config), *TINY_TRAINER, "--trainer.limit_train_batches", "3"])
    checkpoint = workdir / "runs/weakly_classifier_fast_deepcrack/checkpoints/last.ckpt"
    model = CrackClassifier.load_from_checkpoint(checkpoint, weights_only=True)
    assert model.net.weights_source == "random" and model.net.channels == 128
    assert sum(p.numel() for p in model.net.backbone.parameters()) < 350_000  # ResNet50's backbone: 23.5 M
    report = main(["pseudo-label", "--ckpt_path", str(checkpoint), "--data.class_path", "DeepCrackDataModule",
                   "--data.init_args.root", str(root), "--data.init_args.val_fraction", "0", "--out",
                   str(workdir / "labels"), "--device", "cpu", "--progress", "false", "--params.below_min", "empty"])
    assert report["images"] == report["labelled"] == 4
    assert len(list((workdir / "labels" / "train_lab").glob("*.png"))) == 4
