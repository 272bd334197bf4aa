"""VAE + Grad-CAM (issue 4A): eq. 5's log-barrier, eq. 4's weights, the constraint, numerics, shapes, CLI."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from crackseg.cli import main
from crackseg.lightning_modules import VAEGradCAM
from crackseg.lightning_modules.vae import extended_log_barrier, kl_divergence
from crackseg.metrics import mean_std_threshold
from crackseg.models.vae import ConvVAE, count_parameters, gradcam_attention

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "vae_gradcam"
TINY = 0.125  # ResNet-18 widths 64 … 512 → 8 … 64


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(**kwargs: object) -> VAEGradCAM:
    torch.manual_seed(0)
    kwargs.setdefault("image_size", (32, 32))
    kwargs.setdefault("width_multiplier", TINY)
    kwargs.setdefault("warmup_epochs", 0)
    return VAEGradCAM(**kwargs)  # type: ignore[arg-type]


# -- eq. 5 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [20.0, 10.0, 2.0])
def test_log_barrier_is_eq5_on_both_branches(t: float) -> None:
    switch = -1 / t**2
    z = torch.tensor([-5.0, -0.5, -0.01, switch * 1.5, switch, switch / 2, 0.0, 0.3, 1.0, 50.0])
    expected = [(-math.log(-v) / t) if v <= switch else (t * v - math.log(1 / t**2) / t + 1 / t)
                for v in z.tolist()]
    assert extended_log_barrier(z, t).tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # continuous, with a continuous first derivative (= t), at the switch point
    eps = 1e-4
    left, at, right = extended_log_barrier(torch.tensor([switch - eps, switch, switch + eps], dtype=torch.float64), t)
    assert float(left) == pytest.approx(float(at), abs=2 * t * eps)
    assert float(right) == pytest.approx(float(at), abs=2 * t * eps)
    points = torch.tensor([switch - 1e-7, switch, switch + 1e-7], dtype=torch.float64, requires_grad=True)
    extended_log_barrier(points, t).sum().backward()
    assert points.grad.tolist() == pytest.approx([t, t, t], rel=1e-3)


def test_log_barrier_never_nan() -> None:
    z = torch.tensor([-1e30, -1.0, -1e-30, 0.0, 1e-30, 1.0, 1e30], requires_grad=True)
    values = extended_log_barrier(z, 20.0)
    values.sum().backward()
    assert torch.isfinite(values).all() and torch.isfinite(z.grad).all()
    assert values.dtype == torch.float32
    assert extended_log_barrier(torch.tensor([0.5], dtype=torch.bfloat16)).dtype == torch.float32
    with pytest.raises(ValueError, match="t must be"):
        extended_log_barrier(z, 0.0)


def test_kl_divergence() -> None:
    assert kl_divergence(torch.zeros(2, 4), torch.zeros(2, 4)).tolist() == [0.0, 0.0]
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    # ½ Σ (σ² + μ² − 1 − log σ²)
    assert float(kl_divergence(mu, logvar)) == pytest.approx(0.5 * (1 + 0 + 4 - 1 - math.log(4.0)))


# -- eq. 4 ---------------------------------------------------------------------------------------
def test_gradcam_weights_match_finite_differences() -> None:
    """α_k = spatial mean of ∂(Σ z_μ)/∂A_k, checked per image and channel by central differences."""
    torch.manual_seed(0)
    net = ConvVAE(3, (32, 32), latent_dim=4, width=0.0625).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    z_mu, _, features = net.encoder(x)
    activation = features["layer1"]
    cam, alpha = gradcam_attention(activation, z_mu)
    assert alpha is not None and alpha.shape == activation.shape[:2]
    assert torch.allclose(cam, (alpha.double()[:, :, None, None] * activation).sum(1, keepdim=True).float(),
                          atol=1e-5)
    area = activation.shape[-2] * activation.shape[-1]
    eps = 1e-6
    with torch.no_grad():
        for b in range(activation.shape[0]):
            for k in range(activation.shape[1]):
                step = torch.zeros_like(activation)
                step[b, k] = eps
                plus = net.encoder.forward_from("layer1", activation + step)[0].sum()
                minus = net.encoder.forward_from("layer1", activation - step)[0].sum()
                numeric = float(plus - minus) / (2 * eps) / area
                assert float(alpha[b, k]) == pytest.approx(numeric, rel=1e-4, abs=1e-7), (b, k)


@pytest.mark.parametrize("attention", ["gradcam", "activation_mean"])
def test_coverage_constraint_raises_mean_attention(attention: str) -> None:
    """A few optimiser steps on the constraint alone raise the mean attention; with Grad-CAM the
    gradient also reaches the layers after the attention layer (through α: create_graph)."""
    model = tiny_model(attention=attention)
    model.train()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    coverages = []
    for step in range(8):
        outputs = model(images)
        coverage = outputs["attention"].flatten(1).mean(1)
        coverages.append(float(coverage.detach().mean()))
        loss = extended_log_barrier(model.target_coverage - coverage, model.t).mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            after = model.net.encoder.mu.weight.grad
            if attention == "gradcam":
                assert after is not None and float(after.abs().sum()) > 0
            else:
                assert after is None or float(after.abs().sum()) == 0
        optimizer.step()
    assert coverages[-1] > coverages[0] + 0.1, coverages


def test_warmup_leaves_the_constraint_out_of_training_only() -> None:
    model = tiny_model(warmup_epochs=5)
    batch = {"image": torch.rand(2, 3, 32, 32)}
    model.train()
    outputs = model(batch["image"])
    assert not outputs["attention"].requires_grad  # no create_graph during the warm-up
    losses = model.compute_loss(outputs, batch)
    assert float(losses["loss"].detach()) == pytest.approx(float(losses["reconstruction"] + losses["kl"]), rel=1e-6)
    model.eval()
    losses = model.compute_loss(model(batch["image"]), batch)
    expected = losses["reconstruction"] + losses["kl"] + model.constraint_weight * losses["constraint"]
    assert float(losses["loss"]) == pytest.approx(float(expected), rel=1e-6)


# -- numerics --------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("target_coverage", [1.0, 0.99])
def test_constant_and_black_images_stay_finite(value: float, target_coverage: float) -> None:
    model = tiny_model(target_coverage=target_coverage)
    batch = {"image": torch.full((2, 3, 32, 32), value)}
    model.train()
    losses = model.compute_loss(model(batch["image"]), batch)
    losses["loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.inference_mode():
        result = model.evaluate_batch(batch, 0)
    for key in ("map", "score"):
        assert torch.isfinite(result[key]).all()
    assert float(result["map"].min()) >= 0 and float(result["map"].max()) <= 1
    assert all(torch.isfinite(m).all() for m in result["extra_maps"].values())


def test_saturated_attention_stays_finite() -> None:
    """Attention of exactly 1 (saturated sigmoid) on both branches of ψ_t."""
    for target in (1.0, 0.99):
        coverage = torch.ones(3, requires_grad=True)
        value = extended_log_barrier(target - coverage, 20.0).mean()
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(coverage.grad).all()


def test_loss_is_fp32_under_autocast() -> None:
    model = tiny_model()
    model.train()
    images = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images)
        losses = model.compute_loss(outputs, {"image": images})
    assert outputs["attention"].dtype == torch.float32
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()


# -- shapes ----------------------------------------------------------------------------------------
def test_vae_shapes_and_resnet18_stages() -> None:
    net = ConvVAE(3, (64, 96), latent_dim=32, width=TINY)
    out = net(torch.rand(2, 3, 64, 96))
    assert out["logits"].shape == (2, 3, 64, 96)
    assert out["z"].shape == out["z_mu"].shape == out["z_logvar"].shape == (2, 32)
    shapes = {k: tuple(v.shape) for k, v in out["features"].items()}
    assert shapes == {"stem": (2, 8, 32, 48), "layer1": (2, 8, 32, 48), "layer2": (2, 16, 16, 24),
                      "layer3": (2, 32, 8, 12), "layer4": (2, 64, 4, 6)}
    net.eval()
    first, second = net(torch.ones(1, 3, 64, 96)), net(torch.ones(1, 3, 64, 96))
    assert torch.equal(first["z"], first["z_mu"]) and torch.equal(first["logits"], second["logits"])
    with pytest.raises(ValueError, match="multiples of 16"):
        ConvVAE(3, (227, 227))
    with pytest.raises(ValueError, match="64x96"):
        net(torch.rand(1, 3, 64, 64))

    # width 1: the stages are torchvision's resnet18 layer1..4 (same modules and parameter shapes)
    with torch.device("meta"):
        full, reference = ConvVAE(), resnet18(weights=None)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            ours = [(n, tuple(p.shape)) for n, p in getattr(full.encoder, name).named_parameters()]
            theirs = [(n, tuple(p.shape)) for n, p in getattr(reference, name).named_parameters()]
            assert ours == theirs, name
        assert full.encoder.stem.weight.shape == (64, 3, 7, 7) and full.encoder.stem.stride == (2, 2)
        assert full.encoder.mu.in_features == 512 * 14 * 14 and full.decoder.dense.out_features == 256 * 14 * 14
        print(f"ConvVAE 224x224, latent 32: {count_parameters(full) / 1e6:.2f} M parameters")


def test_module_maps_at_input_size() -> None:
    model = tiny_model().eval()
    images = torch.rand(2, 3, 40, 56)  # not the model's 32x32: resized in and out
    with torch.inference_mode():
        result = model.evaluate_batch({"image": images}, 0)
    assert result["map"].shape == (2, 1, 40, 56) and result["score"].shape == (2,)
    assert sorted(result["extra_maps"]) == ["attention", "reconstruction", "residual"]
    assert all(m.shape == (2, 1, 40, 56) for m in result["extra_maps"].values())
    outputs = result["outputs"]
    assert outputs["logits"].shape == (2, 3, 32, 32) and outputs["target"].shape == (2, 3, 32, 32)
    reconstruction = torch.sigmoid(outputs["logits"])
    assert result["score"].tolist() == pytest.approx(
        (reconstruction - outputs["target"]).pow(2).flatten(1).mean(1).tolist(), rel=1e-5)
    # min-max maps span [0, 1] per image; the sigmoid reading returns eq. 4's map
    flat = result["map"].flatten(1)
    assert flat.amin(1).tolist() == pytest.approx([0.0, 0.0], abs=1e-3)
    assert flat.amax(1).tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    sigmoid = tiny_model(map_normalization="sigmoid").eval()
    with torch.inference_mode():
        result = sigmoid.evaluate_batch({"image": images[:, :, :32, :32]}, 0)
    assert torch.equal(result["map"], result["outputs"]["attention"])
    for bad in ({"image_size": (30, 30)}, {"attention": "gradcampp"}, {"attention_layer": "layer9"},
                {"target_coverage": 1.5}, {"t": 0.0}):
        with pytest.raises(ValueError):
            tiny_model(**bad)


def test_predict_step_enables_gradients_locally() -> None:
    model = tiny_model().eval()
    with torch.inference_mode():
        result = model.predict_step({"image": torch.rand(2, 3, 32, 32)}, 0)
    assert result["map"].shape == (2, 1, 32, 32) and not result["map"].requires_grad
    assert float(result["map"].std()) > 0
    assert all(p.grad is None for p in model.parameters())
    model.freeze()  # parameters without requires_grad: ∂z_μ/∂A is still available
    with torch.inference_mode():
        frozen = model.predict_step({"image": torch.rand(2, 3, 32, 32)}, 0)
    assert float(frozen["map"].std()) > 0


# -- command line ----------------------------------------------------------------------------------
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def test_cli_fit_test_predict_on_unsupervised_synthetic(workdir: Path) -> None:
    """configs/vae_gradcam/synthetic.yaml, shrunk: normal-only training, the image threshold from normal
    validation scores (mean + std), test metrics, predictions with maps and scores."""
    common = ["--config", str(CONFIGS / "synthetic.yaml"), "--data.init_args.root", str(workdir / "data"),
              "--data.init_args.n_train", "4", "--data.init_args.n_val", "4", "--data.init_args.n_test", "4",
              "--data.init_args.generate_size", "[32, 32]", "--data.init_args.batch_size", "2",
              "--data.init_args.eval_batch_size", "2", "--model.init_args.image_size", "[32, 32]",
              "--model.init_args.width_multiplier", str(TINY), "--model.init_args.warmup_epochs", "0", *QUIET]
    cli = main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "2"])
    assert isinstance(cli.model, VAEGradCAM)
    assert all(int(label) == 0 for label in (cli.datamodule.datasets["train"][i]["label"] for i in range(4)))
    checkpoint = workdir / "runs/vae_gradcam_synthetic/checkpoints/best.ckpt"
    assert checkpoint.is_file()
    calibrated = float(cli.model.image_threshold)
    # mean + 1 std of the normal validation images' reconstruction errors
    model = cli.model.eval()
    normal_scores = []
    for batch in cli.datamodule.val_dataloader():
        with torch.inference_mode():
            result = model.evaluate_batch(batch)
        normal_scores.append(result["score"][batch["label"] == 0])
    assert calibrated == pytest.approx(mean_std_threshold(torch.cat(normal_scores), 1.0), rel=1e-4)
    assert torch.isfinite(cli.trainer.callback_metrics["train/constraint"])

    cli = main(["test", *common, "--ckpt_path", str(checkpoint)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["test/image_threshold"] == pytest.approx(calibrated)
    for key in ("auroc", "auprc", "dice", "iou", "image_accuracy", "image_precision", "image_recall", "image_f1"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    assert sum(metrics[f"test/image_{k}"] for k in ("tn", "fp", "fn", "tp")) == 4
    with open(workdir / "runs/vae_gradcam_synthetic/predictions/test/scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(float(r["image_threshold"]) == pytest.approx(calibrated) for r in rows)
    assert len(list((workdir / "runs/vae_gradcam_synthetic/maps").glob("test_maps_*.png"))) == 2

    images = workdir / "new_images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "a.png")
    main(["predict", *common, "--data.init_args.predict_path", str(images), "--ckpt_path", str(checkpoint)])
    out = workdir / "runs/vae_gradcam_synthetic/predictions/predict"
    assert np.asarray(Image.open(out / "maps/a.png")).shape == (50, 70)
    with open(out / "scores.csv", newline="") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == ["a"]


def test_fit_and_test_on_real_magnetic_tile(workdir: Path, shared_data: Callable[..., Path]) -> None:
    """MT_Free-only training; a test set mixing held-out MT_Free and defective images with masks."""
    root = shared_data("magnetic_tile")
    common = ["--config", str(CONFIGS / "magnetic_tile.yaml"), "--data.init_args.root", str(root),
              "--data.init_args.image_size", "[32, 32]", "--model.init_args.image_size", "[32, 32]",
              "--data.init_args.test_fraction", "0.01", "--data.init_args.check_files", "header",
              "--data.init_args.batch_size", "4", "--data.init_args.eval_batch_size", "8",
              "--model.init_args.width_multiplier", str(TINY), "--model.init_args.warmup_epochs", "0", *QUIET]
    cli = main(["fit", *common, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "2"])
    assert {int(s.label) for s in cli.datamodule.datasets["train"].samples} == {0}
    calibrated = float(cli.model.image_threshold)
    assert calibrated != 0.5
    checkpoint = workdir / "runs/vae_gradcam_magnetic_tile/checkpoints/best.ckpt"
    cli = main(["test", *common, "--trainer.limit_test_batches", "3", "--ckpt_path", str(checkpoint)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["test/image_threshold"] == pytest.approx(calibrated)
    assert metrics["test/image_tn"] + metrics["test/image_fp"] > 0  # held-out MT_Free images
    assert metrics["test/image_fn"] + metrics["test/image_tp"] > 0  # defective images
    for key in ("auroc", "auprc", "dice", "iou", "image_f1", "image_accuracy"):
        assert 0.0 <= metrics[f"test/{key}"] <= 1.0, key
    masks = sorted((workdir / "runs/vae_gradcam_magnetic_tile/predictions/test/masks").glob("*.png"))
    assert len(masks) == 24
