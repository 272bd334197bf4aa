"""Evaluation that tells the truth: crack-free images count, the papers' dataset-level F1, masks and images read
as their authors meant (issue 15)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fakes import make_deepcrack, write_image
from lightning import Trainer
from PIL import Image
from torch import Tensor, nn

from crackseg.callbacks import F1Threshold
from crackseg.data.dataset import CrackDataset, Sample
from crackseg.data.io import image_size, read_image, read_mask
from crackseg.datamodules import MVTecADDataModule
from crackseg.lightning_modules.base import CrackSegModule
from crackseg.metrics import ImageMetrics, RankCurves, SegmentationMetrics, ThresholdSweepF1
from crackseg.metrics.segmentation import sweep_thresholds


class DarknessNet(nn.Module):
    """Crack probability 1 exactly where the image is black, 0 elsewhere (an oracle on the fakes below)."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        dark = (x.amax(1, keepdim=True) <= 0).float()
        return {"logits": dark * 40 - 20}


class DarknessModule(CrackSegModule):
    def configure_models(self) -> None:
        self.net = DarknessNet()

    def compute_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"loss": outputs["logits"].mean() * 0}


def make_black_good_mvtec(root: Path, size: int = 32) -> Path:
    """An MVTec category whose defects are black strokes (the oracle finds them exactly) and whose two
    crack-free test images are black all over (the oracle paints them all crack)."""
    folder = root / "tile"
    grey = np.full((size, size, 3), 180, np.uint8)
    for i in range(3):
        write_image(folder / "train" / "good" / f"{i:03d}.png", grey)
    for i in range(2):
        write_image(folder / "test" / "good" / f"{i:03d}.png", np.zeros((size, size, 3), np.uint8))
    for i in range(2):
        image, mask = grey.copy(), np.zeros((size, size), np.uint8)
        mask[4 + i:8 + i, 2:30] = 255
        image[mask > 0] = 0
        write_image(folder / "test" / "crack" / f"{i:03d}.png", image)
        write_image(folder / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask)
    return root


def _test_metrics(root: Path, keep_good: bool) -> dict[str, float]:
    data = MVTecADDataModule(root, "tile", image_size=None, batch_size=2, eval_batch_size=2, num_workers=0)
    if not keep_good:
        find = data.find_samples
        data.find_samples = lambda split: [s for s in find(split) or [] if s.label != 0]  # type: ignore[method-assign]
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    [metrics] = trainer.test(DarknessModule(normalization="unit"), datamodule=data, verbose=False)
    return metrics


def test_crack_free_images_painted_crack_lower_pixel_precision_and_auroc(tmp_path: Path) -> None:
    root = make_black_good_mvtec(tmp_path / "mvtec")
    defects_only = _test_metrics(root, keep_good=False)
    assert defects_only["test/precision"] == pytest.approx(1.0)
    assert defects_only["test/auroc"] == pytest.approx(1.0)
    counted = _test_metrics(root, keep_good=True)
    crack_pixels, good_pixels = 2 * 4 * 28, 2 * 32 * 32
    assert counted["test/precision"] == pytest.approx(crack_pixels / (crack_pixels + good_pixels), rel=1e-4)
    assert counted["test/auroc"] < 0.9
    assert counted["test/ods_dataset"] < 0.5 < defects_only["test/ods_dataset"]
    # per-image ODS cannot see it: a crack-free image has F1 = 0 whatever is predicted
    assert counted["test/ods"] == pytest.approx(defects_only["test/ods"] * 2 / 4)


def test_crack_free_image_is_a_known_empty_mask() -> None:
    samples = [Sample(Path("unused.png"), None, label=0), Sample(Path("unused.png"), None, label=1),
               Sample(Path("unused.png"), None, label=-1)]
    dataset = CrackDataset(samples)
    dataset.load = lambda index: (np.zeros((8, 8, 3), np.uint8), None)  # type: ignore[method-assign]
    assert [bool(dataset[i]["has_mask"]) for i in range(3)] == [True, False, False]
    assert float(dataset[0]["mask"].sum()) == 0


def test_pixel_calibration_counts_crack_free_images() -> None:
    callback = F1Threshold(level="pixel")
    module = DarknessModule(normalization="unit")
    callback.on_validation_epoch_start(None, module)  # type: ignore[arg-type]
    maps = torch.tensor([[[[0.9, 0.9], [0.1, 0.1]]], [[[0.6, 0.6], [0.6, 0.6]]]])
    masks = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    batch = {"mask": masks, "has_mask": torch.tensor([True, True]), "label": torch.tensor([1, 0]),
             "path": ["a", "b"]}
    callback.collect(module.device, {"map": maps, "score": maps.flatten(1).amax(1)}, batch, 0)
    threshold, _ = callback.calibrate("pixel")
    assert 0.6 < threshold <= 0.9  # the clean image's 0.6 pixels are false positives, so the threshold clears them


# -- dataset-level sweep (DeepSegmentor prf_metrics) ---------------------------------------------------------
def _deepsegmentor_f1(preds: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """Best F1 and its threshold with TP / FP / FN summed over images (DeepSegmentor eval/prf_metrics.py)."""
    best = (-1.0, 0.0)
    for t in np.arange(1, 100) / 100:
        tp = fp = fn = 0
        for p, g in zip(preds, targets, strict=True):
            b = p > t
            tp += int((b & g).sum())
            fp += int((b & ~g).sum())
            fn += int((~b & g).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if f1 > best[0]:
            best = (f1, float(t))
    return best


def test_segmentation_metrics_report_the_dataset_level_sweep() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((5, 16, 16)) < 0.2
    targets[4] = False  # a crack-free image
    preds = np.clip(targets * 0.5 + rng.random((5, 16, 16)) * 0.6, 0, 1).astype(np.float32)
    metrics = SegmentationMetrics()
    metrics.update(torch.from_numpy(preds), torch.from_numpy(targets), 0.5)
    out = metrics.compute()
    f1, threshold = _deepsegmentor_f1(preds, targets)
    assert float(out["ods_dataset"]) == pytest.approx(f1, rel=1e-5)
    assert float(out["ods_dataset_threshold"]) == pytest.approx(threshold)
    dataset = ThresholdSweepF1(average="dataset")
    dataset.update(torch.from_numpy(preds), torch.from_numpy(targets))
    assert float(out["ap_dataset"]) == pytest.approx(float(dataset.compute()["ap"]))
    image = ThresholdSweepF1(average="image")
    image.update(torch.from_numpy(preds), torch.from_numpy(targets))
    assert float(out["ods"]) == pytest.approx(float(image.compute()["ods"]))


def test_threshold_grid_is_exact_hundredths() -> None:
    assert torch.equal(sweep_thresholds(99), torch.arange(1, 100, dtype=torch.float64) / 100)
    # a prediction of exactly 0.07 is not above the threshold 0.07
    sweep = ThresholdSweepF1()
    sweep.update(torch.full((1, 2, 2), 0.07), torch.ones(1, 2, 2))
    counts = sweep.tp[0].view(-1)
    assert counts[5] == 4 and counts[6] == 0  # 0.06 < 0.07, not 0.07 < 0.07


def test_empty_metric_states_give_nan() -> None:
    ranks = RankCurves().compute()
    assert all(torch.isnan(v) for v in ranks.values())
    image = ImageMetrics().compute()
    assert torch.isnan(image["image_auroc"]) and torch.isnan(image["image_f1"])
    assert image["confusion_matrix"].sum() == 0
    sweep = ThresholdSweepF1(average="both").compute()
    assert {"ods", "ois", "ap", "ods_dataset", "ap_dataset"} <= set(sweep)
    assert all(torch.isnan(v) for v in sweep.values())


# -- masks read as drawn ---------------------------------------------------------------------------------
def test_palette_mask_reads_by_index(tmp_path: Path) -> None:
    index = np.zeros((8, 10), np.uint8)
    index[2:4, 3:6] = 1
    mask = Image.fromarray(index, mode="P")
    mask.putpalette([0, 0, 0, 100, 0, 0] + [0] * 762)  # index 1 drawn dark red: grey 30
    mask.save(tmp_path / "p.png")
    assert np.array_equal(read_mask(tmp_path / "p.png"), index)


def test_rgba_mask_uses_colour_not_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha says nothing
    rgba[2:4, 3:6, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    grey_alpha = np.stack([rgba[..., 0], rgba[..., 3]], -1)
    Image.fromarray(grey_alpha, "LA").save(tmp_path / "la.png")
    for name in ("rgba.png", "la.png"):
        assert read_mask(tmp_path / name).sum() == 6, name


def test_all_empty_masks_warn_naming_the_option_and_grey_levels(tmp_path: Path) -> None:
    from crackseg.datamodules import DeepCrackDataModule

    root = make_deepcrack(tmp_path / "dc", n_train=3, n_test=2, size=(32, 32))
    for mask in sorted((root / "train_lab").glob("*.png")):  # cracks drawn in a dark grey
        values = np.zeros((32, 32), np.uint8)
        values[10:12] = 100  # grey 100 <= mask_threshold 127
        Image.fromarray(values).save(mask)
    data = DeepCrackDataModule(root, num_workers=0)
    with pytest.warns(UserWarning, match=r"mask_threshold=127.*\[0, 100\]"):
        data.setup("fit")
    data = DeepCrackDataModule(root, num_workers=0, mask_threshold=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.setup("fit")


# -- EXIF orientation ------------------------------------------------------------------------------------
def _oriented_jpeg(path: Path, orientation: int) -> np.ndarray:
    """A 20x30 JPEG with a bright top-left block, saved with an EXIF orientation tag; returns the raw pixels."""
    raw = np.full((20, 30, 3), 40, np.uint8)
    raw[:6, :6] = 250
    image = Image.fromarray(raw)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)
    return raw


def test_exif_orientation_is_applied_to_images_and_masks(tmp_path: Path) -> None:
    _oriented_jpeg(tmp_path / "o6.jpg", 6)  # rotate 90° clockwise to display
    image = read_image(tmp_path / "o6.jpg")
    assert image.shape == (30, 20, 3) and image_size(tmp_path / "o6.jpg") == (30, 20)
    assert image[:6, -6:].mean() > 200  # the raw top-left block is displayed top-right
    mask = Image.fromarray(np.pad(np.full((6, 6), 255, np.uint8), ((0, 14), (0, 24))))
    exif = mask.getexif()
    exif[0x0112] = 6
    mask.save(tmp_path / "m6.png", exif=exif)
    assert read_mask(tmp_path / "m6.png").shape == (30, 20)
    assert read_mask(tmp_path / "m6.png")[:6, -6:].all()


TINY_FIT = ["--data", "SyntheticCracksDataModule", "--data.init_args.n_train", "2", "--data.init_args.n_val", "1",
            "--data.init_args.n_test", "1", "--data.init_args.generate_size", "[32, 32]",
            "--model", "UNet", "--model.init_args.base_channels", "4", "--model.init_args.depth", "2"]


@pytest.mark.parametrize("tiled", [False, True])
def test_predict_of_an_oriented_jpeg_has_the_displayed_shape(workdir: Path, tiled: bool) -> None:
    from crackseg.cli import main

    common = ["--data.init_args.root", str(workdir / "data"), *TINY_FIT]
    cli = main(["fit", *common, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu"])
    ckpt = workdir / "tiny.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    _oriented_jpeg(workdir / "photo.jpg", 6)
    tiling = ["--model.init_args.predict_tile_size", "16", "--model.init_args.predict_tile_overlap", "4"]
    tiling = tiling if tiled else []
    main(["predict", *common, *tiling, "--trainer.callbacks+=PredictionWriter",
          f"--trainer.callbacks.output_dir={workdir / 'out'}", "--trainer.accelerator", "cpu",
          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
          "--data.init_args.predict_path", str(workdir / "photo.jpg"), "--ckpt_path", str(ckpt)])
    for folder in ("masks", "overlays"):
        written = np.asarray(Image.open(workdir / "out" / "predict" / folder / "photo.png"))
        assert written.shape[:2] == (30, 20), folder
    overlay = np.asarray(Image.open(workdir / "out" / "predict" / "overlays" / "photo.png"))
    assert overlay[:6, -6:].mean() > overlay[-6:, :6].mean() + 50  # the overlay shows the displayed photo


# -- DeepCrack-Liu as DeepSegmentor trains it ----------------------------------------------------------------
def test_deepcrack_liu_initialisation_and_bias_free_side_convs() -> None:
    from crackseg.lightning_modules import DeepCrackLiu

    net = DeepCrackLiu(width_multiplier=0.25).net
    assert all(side.bias is None for side in net.sides) and net.fuse.bias is None
    conv = net.blocks[2][0] if isinstance(net.blocks[2], nn.Sequential) else next(
        m for m in net.blocks[2].modules() if isinstance(m, nn.Conv2d))
    fan_in, fan_out = conv.weight.shape[1] * 9, conv.weight.shape[0] * 9
    expected = 0.02 * (2 / (fan_in + fan_out)) ** 0.5  # xavier_normal_ std with gain 0.02
    assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.15)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    weights = torch.cat([m.weight.detach() for m in norms])
    assert abs(float(weights.mean()) - 1) < 0.01 and 0.01 < float(weights.std()) < 0.03
    with_bias = DeepCrackLiu(width_multiplier=0.25, side_bias=True, init_gain=1.0).net
    assert all(side.bias is not None for side in with_bias.sides)


@pytest.mark.parametrize("dataset", ["deepcrack", "crackforest", "synthetic"])
def test_deepcrack_liu_configs_follow_deepsegmentor(dataset: str) -> None:
    import yaml

    from crackseg.lightning_modules import DeepCrackLiu

    config = Path(__file__).resolve().parents[1] / "configs" / "deepcrack_liu" / f"{dataset}.yaml"
    values = yaml.safe_load(config.read_text())
    data = values["data"]["init_args"]
    assert data["crop_size"] is None and data["rotate_limit"] == 0 and data.get("flip", True) is True
    if dataset == "deepcrack":
        assert data["image_size"] == [384, 544]  # DeepSegmentor load_height, load_width
    assert "callbacks" not in values["trainer"]  # the method's own: best.ckpt by val/ods_dataset, F1 threshold
    assert DeepCrackLiu.checkpoint_monitor == ("val/ods_dataset", "max")
    assert not (values["model"].get("init_args") or {})  # the class defaults are DeepSegmentor's
    module = DeepCrackLiu(width_multiplier=0.125)
    assert (module.hparams.lr_schedule, module.hparams.lr_step_epochs, module.hparams.lr_gamma) == ("step", 40, 0.1)


def test_checkpoint_hyper_parameters_drop_weight_sources(tmp_path: Path) -> None:
    """A model rebuilt from its checkpoint's hyper-parameters needs neither the hub nor the files it started from."""
    from crackseg.lightning_modules import MSFlow

    module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8)
    module.hparams.weights = "hub"  # as if trained from hub weights
    checkpoint: dict[str, Any] = {"hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    saved = checkpoint["hyper_parameters"]
    assert saved["weights"] is None and saved["backbone"] == "resnet18"
    assert checkpoint["crackseg_weight_sources"] == {"weights": "hub"}
    assert module.hparams.weights == "hub"  # the module's own record is untouched


def test_macro_f1_equals_the_official_weakly_evaluate_py() -> None:
    """König et al.'s evaluate.py: thresholds i / 100 (i < 100), pred > t, per-image precision / recall with nan -> 0,
    averaged over images, F1 of the averages (nan -> 0), max; transcribed here in numpy as the oracle."""
    from crackseg.metrics import ThresholdSweepF1
    from crackseg.pseudolabels.dataset import OFFICIAL_THRESHOLDS

    rng = np.random.default_rng(3)
    truths = [rng.random((24, 32)) < p for p in (0.05, 0.2, 0.0)]
    preds = [np.clip(t * 0.5 + rng.random(t.shape) * 0.6, 0, 1).astype(np.float32) for t in truths]
    thresholds = np.array([i / 100 for i in range(100)])
    pr, re = np.zeros((3, 100)), np.zeros((3, 100))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, (p, g) in enumerate(zip(preds, truths, strict=True)):
            b = p[None] > thresholds[:, None, None]
            tp = (b & g).sum((1, 2))
            fp = (b & ~g).sum((1, 2))
            fn = (~b & g).sum((1, 2))
            pr[i], re[i] = np.nan_to_num(tp / (tp + fp)), np.nan_to_num(tp / (tp + fn))
        pr_mean, re_mean = pr.mean(0), re.mean(0)
        expected = np.nan_to_num(2 * pr_mean * re_mean / (pr_mean + re_mean)).max()
    metric = ThresholdSweepF1(thresholds=OFFICIAL_THRESHOLDS)
    for p, g in zip(preds, truths, strict=True):
        metric.update(torch.from_numpy(p)[None], torch.from_numpy(g)[None])
    assert float(metric.macro_f1()) == pytest.approx(expected, abs=1e-6)


def test_sweep_warns_when_the_maps_collapse_inside_one_threshold_step() -> None:
    """DeepCrack-Liu after 2 epochs of DeepSegmentor's init: every map value in 0.497-0.501. The 0.01 sweep sees
    one value; say so instead of reporting an ODS that only measures the crack prevalence."""
    from crackseg.metrics import ThresholdSweepF1

    target = (torch.rand(2, 16, 16) < 0.1).float()
    collapsed = 0.491 + 0.008 * torch.rand(2, 16, 16) + 0.0005 * target  # informative, but inside (0.49, 0.50]
    metric = ThresholdSweepF1()
    metric.update(collapsed, target)
    with pytest.warns(UserWarning, match="within two steps"):
        metric.compute()
    for maps in (torch.rand(2, 16, 16), target, torch.zeros(2, 16, 16)):  # spread, binary, empty: no warning
        spread = ThresholdSweepF1()
        spread.update(maps, target)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            spread.compute()
