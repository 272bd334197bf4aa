"""SCNet (issue 3): network shapes, eq. 1, loss, ablation configs, edge priors, maps and the CLI."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from fakes import crack_pair
from PIL import Image

from crackseg.cli import main
from crackseg.lightning_modules import SCNet
from crackseg.losses import lovasz_hinge_loss, parse_loss
from crackseg.models.scnet import (
    HED,
    PAPER_PARAMETERS,
    CannyEdges,
    ScaleSpaceAttention,
    SCNetModel,
    count_parameters,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "scnet"
ABLATIONS = sorted(p.stem for p in (CONFIGS / "ablations").glob("*.yaml"))
TINY = 1 / 16  # 64 … 512 channels → 4 … 32


pytestmark = pytest.mark.usefixtures("single_thread")


def crack_batch(n: int = 2, size: tuple[int, int] = (64, 64), seed: int = 0) -> dict:
    """A batch like the datamodules' (RGB in [0, 1], {0, 1} masks) of fake cracks."""
    rng = np.random.default_rng(seed)
    pairs = [crack_pair(rng, size) for _ in range(n)]
    images = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i, _ in pairs])
    masks = torch.stack([torch.from_numpy(m > 0).float()[None] for _, m in pairs])
    return {"image": images, "mask": masks, "has_mask": torch.ones(n, dtype=torch.bool),
            "label": torch.ones(n, dtype=torch.long)}


def train_steps(model: SCNet, batch: dict, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.compute_loss(model(batch["image"]), batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("levels", [5, 4])
def test_output_shapes(levels: int) -> None:
    net = SCNetModel(4, TINY, levels)
    assert net.stride == 2**levels
    with torch.no_grad():
        out = net(torch.randn(2, 4, 64, 64))
    assert out["logits"].shape == (2, 1, 64, 64)
    assert [tuple(s.shape) for s in out["side_logits"]] == [(2, 1, 64, 64)] * levels
    expected = [(2, 1, 64 // 2**i, 64 // 2**i) for i in range(levels)]
    assert [tuple(a.shape) for a in out["encoder_attention"]] == expected
    assert [tuple(a.shape) for a in out["decoder_attention"]] == expected
    assert all(float(a.min()) >= 0 and float(a.max()) <= 1 for a in out["encoder_attention"])
    # eq. 2: the fused convolutions of scale i take i enhancement channels + 1 decoder channel
    assert [conv.in_channels for conv in net.fuse] == list(range(2, levels + 2))
    assert net.final.in_channels == levels

    # through the LightningModule: any input size (padded to the stride), maps at the input size
    model = SCNet(width_multiplier=TINY, levels=levels)
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 50, 70))
    assert outputs["logits"].shape == (1, 1, 50, 70)
    maps = model.extra_maps(outputs, {}, None)
    assert sorted(maps) == sorted([f"P{i + 1}" for i in range(levels)] + [f"attention_{i + 1}" for i in range(levels)])
    assert all(m.shape == (1, 1, 50, 70) for m in maps.values())


def test_attention_module_is_eq1() -> None:
    """F_a = σ(Conv¹_{C→1}(F)) ⊙ F, F_r = Conv²_{C→1}(F_a), with hand-set 1×1 weights."""
    module = ScaleSpaceAttention(2, 1, "conv")
    with torch.no_grad():
        module.gate.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
        module.gate.bias.fill_(0.5)
        module.refine.weight.copy_(torch.tensor([2.0, 3.0]).view(1, 2, 1, 1))
        module.refine.bias.fill_(-1.0)
    features = torch.tensor([[[[1.0, 0.0], [2.0, -1.0]], [[0.0, 1.0], [0.5, 3.0]]]])  # (1, 2, 2, 2)
    with torch.no_grad():
        refined, attended, attention = module(features)
    for y in range(2):
        for x in range(2):
            f0, f1 = float(features[0, 0, y, x]), float(features[0, 1, y, x])
            a = 1 / (1 + math.exp(-(f0 - f1 + 0.5)))
            assert float(attention[0, 0, y, x]) == pytest.approx(a, abs=1e-6)
            assert attended[0, :, y, x].tolist() == pytest.approx([a * f0, a * f1], abs=1e-6)
            assert float(refined[0, 0, y, x]) == pytest.approx(2 * a * f0 + 3 * a * f1 - 1, abs=1e-5)

    scalar = ScaleSpaceAttention(2, 1, "scalar")
    with torch.no_grad():
        scalar.scalar.fill_(1.0)
    _, attended, attention = scalar(features)
    assert attention is None
    assert torch.allclose(attended, torch.sigmoid(torch.tensor(1.0)) * features)
    _, attended, attention = ScaleSpaceAttention(2, 1, "none")(features)
    assert attention is None and torch.equal(attended, features)


def test_loss_decreases() -> None:
    torch.manual_seed(0)
    model = SCNet(width_multiplier=TINY)
    assert model.loss_terms == ("focal", "soft_iou") and model.side_loss_terms == ("focal",)
    assert model.side_weights == (0.5, 0.75, 1.0, 0.75, 0.5)
    losses = train_steps(model, crack_batch(), 10)
    assert all(math.isfinite(v) for v in losses)
    assert all(b < a for a, b in zip(losses[:-1], losses[1:], strict=True)), losses
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_config_trains_one_step(name: str) -> None:
    """Each ablation fragment's model arguments build a network that runs a training step."""
    config = yaml.safe_load((CONFIGS / "ablations" / f"{name}.yaml").read_text())
    assert config["model"]["class_path"] == "SCNet"
    args = config["model"]["init_args"]
    model = SCNet(width_multiplier=TINY, **args)
    batch = crack_batch(size=(32, 32))
    losses = model.compute_loss(model(batch["image"]), batch)
    losses["loss"].backward()
    assert math.isfinite(losses["loss"].item())
    assert all(p.grad is not None for p in model.net.parameters())
    net = model.net
    assert net.in_channels == (4 if args.get("edges", True) else 3)
    assert net.levels == args.get("levels", 5) == len(model.side_weights)
    assert model.loss_terms == parse_loss(args.get("loss", "focal+soft_iou"))
    assert not set(model.side_loss_terms) & {"soft_iou", "lovasz"}  # IoU terms only on the fused map
    attention = args.get("attention", "both")
    assert net.encoder_attention[0].mode == {"both": "conv", "encoder": "conv"}.get(attention, attention)
    assert net.decoder_attention[0].mode == {"both": "conv", "encoder": "none"}.get(attention, attention)
    assert net.stride == (1 if args.get("downsampling") == "dilated" else 2**net.levels)


def test_fuse_init_mean_starts_the_fused_logit_at_the_side_mean() -> None:
    """``fuse_init="mean"`` (HED's fusion layer): weights 1/levels, bias 0; the default stays Xavier (random)."""
    default, mean = SCNet(width_multiplier=TINY), SCNet(width_multiplier=TINY, fuse_init="mean")
    assert default.net.final.weight.unique().numel() == 5  # Xavier: five different weights
    assert torch.equal(mean.net.final.weight.flatten(), torch.full((5,), 0.2)) and float(mean.net.final.bias) == 0
    outputs = mean(crack_batch(size=(32, 32))["image"])
    assert torch.allclose(outputs["logits"], torch.stack(outputs["side_logits"]).mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="fuse_init"):
        SCNet(width_multiplier=TINY, fuse_init="ones")


def test_edge_channel_switch() -> None:
    with_edges, without = SCNet(width_multiplier=TINY), SCNet(width_multiplier=TINY, edges=False)
    assert with_edges.net.in_channels == 4 and with_edges.net.encoder[0][0].in_channels == 4
    assert without.net.in_channels == 3 and without.net.encoder[0][0].in_channels == 3
    assert isinstance(with_edges.edge_detector, CannyEdges) and without.edge_detector is None
    images = crack_batch()["image"]
    x = with_edges.normalize(images)
    assert x.shape[1] == 4
    assert set(x[:, 3].unique().tolist()) <= {0.0, 1.0} and float(x[:, 3].sum()) > 0
    assert torch.allclose(x[:, :3], images * 2 - 1)  # RGB in [-1, 1]
    assert without.normalize(images).shape[1] == 3


@pytest.mark.parametrize("levels", [5, 4])
def test_parameter_count_matches_paper(levels: int) -> None:
    with torch.device("meta"):
        count = count_parameters(SCNetModel(4, 1.0, levels))
        vgg_c = count_parameters(SCNetModel(4, 1.0, levels, vgg_config="C"))
    paper = PAPER_PARAMETERS[levels]
    print(f"SCNet {levels} levels: {count / 1e6:.3f} M parameters (paper {paper} M); VGG-C reading {vgg_c / 1e6:.2f} M")
    assert abs(count / 1e6 - paper) / paper < 0.01
    assert abs(vgg_c / 1e6 - paper) / paper > 0.1  # the documented reason for VGG-D widths


def test_canny_matches_opencv() -> None:
    image, _ = crack_pair(np.random.default_rng(3), (64, 96))
    edges = CannyEdges()(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy() > 0
    gray = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (3, 3), 0)
    median = float(np.median(gray))
    reference = cv2.Canny(gray, 0.67 * median, min(255.0, 1.33 * median), L2gradient=True) > 0
    assert reference.any()
    assert (edges & reference).sum() / (edges | reference).sum() > 0.8


def test_hed_weight_file(tmp_path: Path) -> None:
    """A sniklaus/pytorch-hed weight file is loaded, frozen, used for the 4th channel and kept in the state."""
    names = ("One", "Two", "Thr", "Fou", "Fiv")
    source = HED()
    state = {}
    for key, value in source.state_dict().items():
        kind, rest = key.split(".", 1)
        if kind in ("vgg", "score"):
            stage, rest = rest.split(".", 1)
            key = f"module{'Vgg' if kind == 'vgg' else 'Score'}{names[int(stage)]}.{rest}"
        else:
            key = f"moduleCombine.0.{rest}"
        state[key] = value
    path = tmp_path / "network-bsds500.pytorch"
    torch.save(state, path)
    model = SCNet(width_multiplier=TINY, hed_weights=str(path), hed_threshold=0.5)
    assert isinstance(model.edge_detector, HED)
    assert torch.equal(model.edge_detector.combine.weight, source.combine.weight)
    assert not any(p.requires_grad for p in model.edge_detector.parameters())
    assert "edge_detector.vgg.0.0.weight" in model.state_dict()  # travels with the checkpoint
    x = model.normalize(torch.rand(1, 3, 32, 32))
    assert x.shape == (1, 4, 32, 32) and set(x[:, 3].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(FileNotFoundError, match="nowhere.pytorch"):
        SCNet(width_multiplier=TINY, hed_weights=str(tmp_path / "nowhere.pytorch"))


def test_lovasz_hinge() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 3] = 1
    assert float(lovasz_hinge_loss(torch.zeros(2, 1, 8, 8), target)) == pytest.approx(1.0)  # every hinge is 1
    assert float(lovasz_hinge_loss(3 * (2 * target - 1), target)) == pytest.approx(0.0)  # margins beyond 1
    # one false positive at margin m: errors sorted (1 + m, 0, ...) → weight ΔJ = 1 − 8/9
    logits = -2 * torch.ones(1, 1, 8, 8) + 4 * target[:1]
    logits[0, 0, 0, 0] = 0.5
    assert float(lovasz_hinge_loss(logits, target[:1])) == pytest.approx(1.5 * (1 - 8 / 9))
    logits.requires_grad_(True)
    lovasz_hinge_loss(logits, target[:1]).backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad[0, 0, 0, 0]) > 0
    assert parse_loss("focal+lovasz") == ("focal", "lovasz")


def test_gradcam_inside_inference_mode() -> None:
    model = SCNet(width_multiplier=TINY).eval()
    images = crack_batch(size=(40, 56))["image"]
    with torch.inference_mode():
        cam = model.gradcam(images)
    assert cam.shape == (2, 1, 40, 56)
    assert float(cam.min()) >= 0 and float(cam.max()) <= 1 and float(cam.amax()) > 0
    assert not any(p.grad is not None for p in model.parameters())


def test_images_without_mask_are_left_out_of_the_loss() -> None:
    torch.manual_seed(0)
    model = SCNet(width_multiplier=TINY)
    batch = crack_batch()
    with torch.no_grad():
        outputs = model(batch["image"])
    first = {"mask": batch["mask"][:1], "has_mask": batch["has_mask"][:1], "label": batch["label"][:1]}
    first_outputs = {"logits": outputs["logits"][:1], "side_logits": [s[:1] for s in outputs["side_logits"]]}
    alone = model.compute_loss(first_outputs, first)["loss"]
    batch["has_mask"][1] = False  # a positive image without mask
    assert float(model.compute_loss(outputs, batch)["loss"]) == pytest.approx(float(alone), rel=1e-5)
    batch["label"][1], batch["has_mask"][1] = 0, True  # a crack-free image: its zero mask is a real target
    assert float(model.compute_loss(outputs, batch)["loss"]) != pytest.approx(float(alone), rel=1e-5)


def test_cli_fast_dev_run_with_maps(workdir: Path) -> None:
    """configs/scnet/synthetic.yaml, shrunk; the map logger receives P^i, attention and Grad-CAM panels."""
    cli = main(["fit", "--config", str(CONFIGS / "synthetic.yaml"), "--data.init_args.root", str(workdir / "data"),
                "--data.init_args.n_train", "4", "--data.init_args.n_val", "2", "--data.init_args.n_test", "2",
                "--data.init_args.generate_size", "[64, 64]", "--data.init_args.crop_size", "64",
                "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
                "--model.init_args.width_multiplier", str(TINY), "--model.init_args.gradcam_maps", "true",
                "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
                "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.state.finished
    assert isinstance(cli.model, SCNet)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    panels = sorted(workdir.rglob("val_maps_*.png"))
    assert panels
    # input | ground truth | P^fused | mask | P1..P5 | attention_1..5 | gradcam: 15 tiles of 64 px, 4 px apart
    assert np.asarray(Image.open(panels[0])).shape == (64, 15 * 64 + 14 * 4, 3)


def test_fit_and_test_on_real_cfd(workdir: Path, shared_data: Callable[..., Path]) -> None:
    common = ["--config", str(CONFIGS / "crackforest.yaml"), "--data.init_args.root", str(shared_data("cfd")),
              "--model.init_args.width_multiplier", str(TINY), "--data.init_args.crop_size", "64",
              "--data.init_args.batch_size", "2", "--trainer.accelerator", "cpu",
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    cli = main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "2"])
    checkpoint = workdir / "runs/scnet_crackforest/checkpoints/best.ckpt"
    assert checkpoint.is_file()
    calibrated = float(cli.model.pixel_threshold)
    cli = main(["test", *common, "--trainer.limit_test_batches", "2", "--ckpt_path", str(checkpoint)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["test/pixel_threshold"] == pytest.approx(calibrated)
    for key in ("ods", "ap", "auprc", "iou", "f1", "region_f1"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    masks = sorted((workdir / "runs/scnet_crackforest/predictions/test/masks").glob("*.png"))
    assert len(masks) == 2
    assert np.asarray(Image.open(masks[0])).shape in ((320, 480), (480, 320))


def test_side_weights_must_match_levels() -> None:
    with pytest.raises(ValueError, match="side_weights"):
        SCNet(width_multiplier=TINY, levels=4, side_weights=[0.5, 0.75, 1.0, 0.75, 0.5])
