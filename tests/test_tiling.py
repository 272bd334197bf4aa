"""Tiled full-resolution prediction: grid, blending, equality with whole-image maps, memory, ``crackseg predict``."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from crackseg.cli import main
from crackseg.datamodules import CrackDataModule
from crackseg.inference.progress import inner_progress
from crackseg.inference.tiling import TileSettings, axis_windows, predict_tiled, tile_count, tile_starts
from crackseg.lightning_modules.base import CrackSegModule

REPO = Path(__file__).resolve().parents[1]


class LocalNet(nn.Module):
    """Three 3x3 convolutions with zero padding: receptive-field radius 3 (outputs within 3 px of an edge
    see padding)."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.body(x)}


class LocalModule(CrackSegModule):
    def configure_models(self) -> None:
        self.net = LocalNet()

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"loss": outputs["logits"].mean()}


class OutputScoreModule(LocalModule):
    """An image score read from the network outputs (as the classifier, VAE and MSFlow do), declared so."""

    score_reads_map_only = False

    def image_score(self, maps: Tensor, outputs: dict[str, Any]) -> Tensor:
        return outputs["logits"].flatten(1).mean(1)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(700, 128, 32), (500, 128, 64), (129, 128, 16),
                                                         (90, 128, 32), (1000, 100, 0)])
def test_grid_covers_the_axis_and_weights_sum_to_one(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlap >= asked
    _, windows, total = axis_windows(length, tile, overlap)
    assert all(float(w.min()) >= 0 for w in windows)
    assert torch.allclose(total, torch.ones(length), atol=1e-5)  # a partition of unity: no bright / dark bands


def test_settings_name_the_option() -> None:
    with pytest.raises(ValueError, match="predict_tile_overlap"):
        TileSettings(128, overlap=100)
    with pytest.raises(ValueError, match="predict_scale"):
        TileSettings(128, scale=0)
    with pytest.raises(ValueError, match="predict_tile_size"):
        LocalModule(predict_tile_size=4)


def test_tiled_map_equals_whole_image_map(single_thread: None) -> None:
    """Overlap 16 = 4 x the receptive-field radius: every weighted pixel saw its full context."""
    torch.manual_seed(1)
    image = torch.rand(3, 150, 230)  # non-square, not a multiple of the tile
    net = LocalNet().eval()
    with torch.no_grad():
        whole = torch.sigmoid(net(image[None])["logits"])[0]
        for batch_size in (1, 5):
            tiled = predict_tiled(image, lambda t: torch.sigmoid(net(t)["logits"]),
                                  TileSettings(64, overlap=16, batch_size=batch_size))
            assert tiled.shape == whole.shape
            torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
        # too little overlap for the receptive field: close, but not equal, and still no NaN / gap
        rough = predict_tiled(image, lambda t: torch.sigmoid(net(t)["logits"]), TileSettings(64, overlap=4))
        assert torch.isfinite(rough).all() and 0 < float((rough - whole).abs().max()) < 0.5


def test_no_seam_when_tiles_disagree() -> None:
    """Every tile gets its own random offset (a tile-dependent prediction): hard stitching would jump by up to
    the offsets' spread at tile borders; the blend changes by at most spread x the cosine ramp's slope."""
    rng = torch.Generator().manual_seed(0)
    offsets: list[float] = []

    def predict(tiles: Tensor) -> Tensor:
        shift = torch.rand(len(tiles), 1, 1, 1, generator=rng)
        offsets.extend(shift.flatten().tolist())
        return tiles.mean(1, keepdim=True) + shift

    settings = TileSettings(64, overlap=32)
    stitched = predict_tiled(torch.full((3, 200, 300), 0.5), predict, settings)[0]
    spread = max(offsets) - min(offsets)
    assert len(offsets) == tile_count(200, 300, settings) > 4 and spread > 0.5
    ramp = 32 - 2 * (32 // 4)  # the cross-fade spans the middle half of the shared band
    largest_step = max(float(stitched.diff(dim=0).abs().max()), float(stitched.diff(dim=1).abs().max()))
    assert largest_step <= spread * np.pi / (2 * ramp) + 1e-5
    assert largest_step < spread / 3  # far from a seam
    assert float(stitched[5, 5]) == pytest.approx(0.5 + offsets[0], abs=1e-6)  # a tile's own part is its own


def test_scale_runs_the_model_on_resized_tiles() -> None:
    """``scale`` 0.5: tiles are halved before the model and the map comes back at the image's size."""
    seen: list[tuple[int, ...]] = []
    y, x = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 200), indexing="ij")
    image = torch.stack([x, y, x * y])  # smooth: resampling changes it little

    def predict(tiles: Tensor) -> Tensor:
        seen.append(tuple(tiles.shape[-2:]))
        return tiles[:, :1]

    out = predict_tiled(image, predict, TileSettings(32, overlap=8, scale=0.5))
    assert out.shape == (1, 120, 200)
    assert set(seen) == {(32, 32)}  # 64-px source tiles resized to the 32-px network tile
    torch.testing.assert_close(out[0, 2:-2, 2:-2], image[0, 2:-2, 2:-2], atol=0.02, rtol=0)


def test_predict_step_tiles_and_scores(single_thread: None) -> None:
    """The module's one predict step: tiled maps equal whole-image maps; the image score comes from the stitched
    map when the hook reads only maps, else it is the largest tile score."""
    torch.manual_seed(2)
    batch = {"image": torch.rand(1, 3, 100, 140), "path": ["x.png"]}
    whole_module = LocalModule().eval()
    tiled_module = LocalModule(predict_tile_size=48, predict_tile_overlap=16, predict_tile_batch_size=3).eval()
    tiled_module.load_state_dict(whole_module.state_dict())
    assert tiled_module.predict_full_resolution and not whole_module.predict_full_resolution
    with torch.no_grad():
        whole = whole_module.predict_step(batch, 0)
        tiled = tiled_module.predict_step(batch, 0)
    torch.testing.assert_close(tiled["map"], whole["map"], atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled["score"], whole["score"], atol=1e-5, rtol=0)
    assert torch.equal(tiled["pred_mask"], whole["pred_mask"])

    module = OutputScoreModule(predict_tile_size=48, predict_tile_overlap=16).eval()
    module.load_state_dict(whole_module.state_dict())
    tile_means = []
    with torch.no_grad():
        for top in tile_starts(100, 48, 16):
            for left in tile_starts(140, 48, 16):
                tile = batch["image"][..., top:top + 48, left:left + 48]
                tile_means.append(float(module(tile)["logits"].mean()))
        score = float(module.predict_step(batch, 0)["score"][0])
    assert score == pytest.approx(max(tile_means), abs=1e-5)


def test_full_resolution_predict_image_stays_on_the_cpu(workdir: Path) -> None:
    """The datamodule moves a batch to the device but a full-resolution predict image (tiles go later)."""
    module = LocalModule(predict_tile_size=128)
    datamodule = CrackDataModule(root=workdir)
    batch = {"image": torch.rand(1, 3, 8, 8), "label": torch.zeros(1)}
    datamodule.trainer = SimpleNamespace(predicting=True, lightning_module=module)
    moved = datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["image"].device.type == "cpu" and moved["label"].device.type == "meta"
    datamodule.trainer = SimpleNamespace(predicting=True, lightning_module=LocalModule())  # tiling off
    assert datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)["image"].device.type == "meta"


def test_inner_progress_is_quiet_without_a_bar() -> None:
    with inner_progress(None, 10, "tiles") as advance:
        advance(3)
    assert advance.__name__ == "_noop"

    class Bar:  # a trainer that shows a (non-rich) progress bar: a transient rich bar of its own
        is_enabled = True

    class Trainer:
        progress_bar_callback = Bar()

    with inner_progress(Trainer(), 4, "tiles") as advance:
        advance(4)
    assert advance.__name__ != "_noop"


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from torch import nn
    from crackseg.inference.tiling import TileSettings, predict_tiled
    torch.set_num_threads(1)
    height, width = int(sys.argv[1]), int(sys.argv[2])
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1)).eval()
    image = torch.rand(3, height, width)
    with torch.no_grad():
        net(image[:, :64, :64][None])  # warm up allocator and kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = predict_tiled(image, net, TileSettings(256, overlap=32, batch_size=4))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (after - before) / 1024, "shape": list(out.shape)}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in kB on Linux")
def test_peak_memory_is_bounded_by_the_tile_not_the_image(workdir: Path) -> None:
    """A 3000x2000 image: a whole-image forward would hold 8 x 6 M float32 activations (192 MB per layer);
    tiled, the peak grows by the output map (24 MB) plus a tile batch's activations (75 MB measured in all)."""
    script = workdir / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, str(script), "2000", "3000"], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1, 2000, 3000]
    assert result["growth_mb"] < 150, result


TINY_DATA = [
    "--data", "SyntheticCracksDataModule",
    "--data.init_args.n_train", "4", "--data.init_args.n_val", "2", "--data.init_args.n_test", "2",
    "--data.init_args.generate_size", "[64, 64]", "--data.init_args.crop_size", "64",
    "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2",
]
TINY_UNET = ["--model", "UNet", "--model.init_args.base_channels", "4", "--model.init_args.depth", "2"]


def test_crackseg_predict_tiled_writes_full_size_outputs_and_cracks(workdir: Path) -> None:
    """fit (fast_dev_run) → checkpoint → ``crackseg predict`` with tiling on a 700x500 image larger than the tile:
    mask / map / overlay at the original size, crack CSV in mm; ``data.image_size`` is not applied."""
    common = ["--data.init_args.root", str(workdir / "data"), *TINY_DATA, *TINY_UNET]
    cli = main(["fit", *common, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    ckpt = workdir / "tiny.ckpt"
    cli.trainer.save_checkpoint(ckpt)

    image = np.full((500, 700, 3), 170, np.uint8)
    image[240:246, 50:650] = 40  # a dark crack
    Image.fromarray(image).save(workdir / "drone.png")
    writer = ["--trainer.callbacks+=PredictionWriter", f"--trainer.callbacks.output_dir={workdir / 'out'}",
              "--trainer.callbacks.mm_per_pixel=0.5"]
    tiling = ["--config", str(REPO / "configs/predict/tiled.yaml"), "--model.init_args.predict_tile_size", "128",
              "--model.init_args.predict_tile_overlap", "32", "--model.init_args.predict_tile_batch_size", "3"]
    cli = main(["predict", *common, *writer, *tiling, "--data.init_args.image_size", "[64, 64]",
                "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                "--data.init_args.predict_path", str(workdir / "drone.png"), "--model.init_args.threshold", "0.5",
                "--ckpt_path", str(ckpt)])
    assert cli.model.tile_settings == TileSettings(128, 32, 3, 1.0)
    assert tuple(cli.datamodule.datasets["predict"][0]["image"].shape) == (3, 500, 700)  # not resized to 64²
    out = workdir / "out/predict"
    for folder in ("masks", "maps", "overlays"):
        assert np.asarray(Image.open(out / folder / "drone.png")).shape[:2] == (500, 700)
    with open(out / "scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    with open(out / "cracks.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        cracks = list(reader)
    assert {"name", "crack_id", "length_px", "max_width_px", "length_mm", "max_width_mm"} <= set(reader.fieldnames)
    assert [r["name"] for r in scores] == ["drone"] and int(scores[0]["cracks"]) == len(cracks)
    mask = np.asarray(Image.open(out / "masks/drone.png")) > 0
    assert int(scores[0]["crack_pixels"]) == int(mask.sum())
    assert sum(int(r["area_px"]) for r in cracks) == int(mask.sum())
    for row in cracks:
        assert float(row["length_mm"]) == pytest.approx(0.5 * float(row["length_px"]), abs=1e-3)
