"""``crackseg export``: ONNX graphs with normalisation, maps, scores and thresholds; parity with PyTorch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch

from crackseg.cli import main
from crackseg.export import ExportError, ExportWrapper, export_onnx, verify_onnx
from crackseg.lightning_modules import (
    DFR,
    OED,
    CrackClassifier,
    CrackSegModule,
    DeepCrackLiu,
    DeepCrackZou,
    MSFlow,
    SCNet,
    SkipAE,
    UNet,
    VAEGradCAM,
)
from crackseg.models.scnet import (
    _hysteresis,
    _hysteresis_while_loop,
)

pytest.importorskip("onnx")


def cli_checkpoint(module: CrackSegModule, path: Path) -> Path:
    """A checkpoint whose hyper-parameters name the class, as ``crackseg fit`` (LightningCLI) writes them."""
    fakes.save_lightning_checkpoint(module, path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"] = {"_class_path": f"{type(module).__module__}.{type(module).__name__}",
                                      **checkpoint["hyper_parameters"],
                                      "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save(checkpoint, path)
    return path


def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=4, depth=2)


def test_cli_export_dynamic_with_stored_thresholds(workdir: Path, single_thread: None) -> None:
    """The stored thresholds are in the graph; a dynamic graph gives the module's outputs at another batch and size."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    module = tiny_unet()
    module.pixel_threshold.fill_(0.45)
    module.image_threshold.fill_(0.6)
    ckpt = cli_checkpoint(module, workdir / "unet.ckpt")
    report = main(["export", "--ckpt_path", str(ckpt), "--out", str(workdir / "out/unet.onnx"),
                   "--image_size", "32", "32", "--dynamic", "--progress", "false"])
    assert report["model"] == "UNet" and report["exporter"] == "dynamo"
    assert report["dynamic"] == ["batch", "height (a multiple of 4)", "width (a multiple of 4)"]
    assert report["verification"]["ok"], report["verification"]
    assert report["verification"]["images"] == [3, 3, 36, 40]  # checked away from the traced shape
    assert report["pixel_threshold"] == pytest.approx(0.45)

    # batch 5 at another multiple of the stride (4)
    images = torch.rand(5, 3, 28, 44, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(workdir / "out/unet.onnx"), providers=["CPUExecutionProvider"])
    maps, masks, scores, labels = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = module.eval().evaluate_batch({"image": images})
    assert maps.shape == (5, 1, 28, 44) and masks.dtype == np.bool_ and scores.shape == (5,)
    np.testing.assert_allclose(maps, want["map"].numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, want["score"].numpy(), atol=1e-5)
    away = np.abs(maps - 0.45) > 1e-4
    assert np.array_equal(masks[away], (maps >= 0.45)[away])
    assert np.array_equal(masks[away], want["pred_mask"].numpy()[away])
    assert np.array_equal(labels, scores >= 0.6)


#: (factory, image side, exporter): "torchscript" where the tracing exporter works (fast), "auto" (dynamo) where
#: only torch.export gets through (SCNet's Canny loop, MSFlow's adaptive pooling)
METHODS: dict[str, tuple[Callable[[], CrackSegModule], int, str]] = {
    "DeepCrackLiu": (lambda: DeepCrackLiu(width_multiplier=0.0625), 40, "torchscript"),
    "DeepCrackZou": (lambda: DeepCrackZou(width_multiplier=0.0625), 64, "torchscript"),
    "OED": (lambda: OED(weights=None, decoder_channels=(16, 8, 8, 8, 8), input_channels=4), 64, "auto"),
    "SCNet": (lambda: SCNet(width_multiplier=0.0625), 64, "auto"),
    "SkipAE": (lambda: SkipAE(backbone="resnet18", blocks=(1, 2), weights=None, base_channels=8, depth=3), 64,
               "torchscript"),
    "DFR": (lambda: DFR(backbone="resnet18", blocks=(1, 2), layers=None, weights=None, latent_dim=8), 64,
            "torchscript"),
    "MSFlow": (lambda: MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8), 64, "auto"),
    "VAEGradCAM": (lambda: VAEGradCAM(image_size=(32, 32), latent_dim=4, width_multiplier=0.125,
                                      attention="activation_mean"), 32, "torchscript"),
    "CrackClassifier": (lambda: CrackClassifier(backbone="resnet18", weights=None, hidden_features=8), 32,
                        "torchscript"),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_parity_onnxruntime_vs_pytorch(name: str, tmp_path: Path, single_thread: None) -> None:
    """Map and score within 1e-4 × max(1, range); masks and labels agree except within that of the threshold."""
    pytest.importorskip("onnxruntime")
    factory, side, exporter = METHODS[name]
    if exporter == "auto":
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = factory().eval()
    module.pixel_threshold.fill_(0.5 if module.maps_are_probabilities else 0.1)
    path, used = export_onnx(module, tmp_path / f"{name}.onnx", (side, side), exporter=exporter, batch_size=2)
    assert path.is_file()
    if name == "OED":  # its encoder taps are forward hooks that stop the network early: torch.export fails
        assert used == "torchscript"
    report = verify_onnx(path, module, (side, side), batch_size=2, progress=False)
    assert report is not None and report["ok"], report
    assert report["max_abs_map"] <= report["map_tolerance"]


def test_vae_gradcam_map_is_refused(tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = VAEGradCAM(image_size=(32, 32), latent_dim=4, width_multiplier=0.125)  # attention: gradcam
    with pytest.raises(ExportError, match="backward pass"):
        export_onnx(module, tmp_path / "vae.onnx")
    ckpt = cli_checkpoint(module, workdir / "vae.ckpt")
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt_path", str(ckpt), "--out", str(workdir / "vae.onnx"), "--progress", "false"])
    assert exc.value.code == 2
    assert "attention='gradcam'" in capsys.readouterr().err
    assert not (workdir / "vae.onnx").exists()


def test_checkpoint_without_class_needs_model(workdir: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint that does not name its class asks for --model; with it (and no onnxruntime) it exports."""
    ckpt = fakes.save_lightning_checkpoint(tiny_unet(), workdir / "plain.ckpt")
    out = workdir / "plain.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt_path", str(ckpt), "--out", str(out), "--progress", "false"])
    assert exc.value.code == 2 and "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt_path", str(ckpt), "--out", str(out), "--model", "SCNet", "--progress", "false"])
    assert exc.value.code == 2 and "cannot be loaded as" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails: verification is skipped, not the export
    report = main(["export", "--ckpt_path", str(ckpt), "--out", str(out), "--model", "UNet", "--image_size", "16",
                   "16", "--exporter", "torchscript", "--progress", "false"])
    assert out.is_file() and report["exporter"] == "torchscript"
    assert "verification skipped" in report["verification"]
    assert "verification skipped" in capsys.readouterr().err


def test_missing_checkpoint_is_named(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--ckpt_path", str(workdir / "nowhere.ckpt"), "--out", str(workdir / "m.onnx")])
    assert exc.value.code == 2 and "nowhere.ckpt" in capsys.readouterr().err


def test_hysteresis_while_loop_matches_eager() -> None:
    """The traceable Canny hysteresis swapped in while exporting SCNet reaches the eager version's fixed point."""
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.rand(2, 1, 40, 56, generator=generator)
    strong, weak = magnitude > 0.97, magnitude > 0.4
    assert torch.equal(_hysteresis_while_loop(strong, weak), _hysteresis(strong, weak))


def test_wrapper_matches_evaluate_batch() -> None:
    """The exported computation is the module's own inference (same hooks, same thresholds)."""
    module = tiny_unet().eval()
    images = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        maps, masks, scores, labels = ExportWrapper(module)(images)
        want = module.evaluate_batch({"image": images})
    assert torch.equal(maps, want["map"]) and torch.equal(masks, want["pred_mask"])
    assert torch.equal(scores, want["score"]) and torch.equal(labels, want["pred_label"])


def test_dynamic_export_of_a_chunked_model_runs_any_batch(tmp_path: Path, single_thread: None) -> None:
    """MSFlow splits CPU batches above ``inference_chunk`` in eager mode; the exported graph takes the whole batch
    (no branch on the batch size) and gives the same maps for a batch larger than the chunk."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8, inference_chunk=2).eval()
    path, _ = export_onnx(module, tmp_path / "msflow.onnx", (64, 64), exporter="auto", dynamic=True)
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps, _, scores, _ = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want = module.evaluate_batch({"image": images})  # chunks of 2, 2, 1
    np.testing.assert_allclose(maps, want["map"].numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(scores, want["score"].numpy(), rtol=1e-3, atol=1e-4)
