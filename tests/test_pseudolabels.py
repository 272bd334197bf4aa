"""Weakly supervised pseudo labels (crackseg.pseudolabels): multi-Otsu, GradCAM++, fast vs reference, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import fakes
import numpy as np
import pytest
import torch
from PIL import Image
from skimage.filters import threshold_multiotsu

from crackseg.cli import main
from crackseg.data.io import DataError, read_mask
from crackseg.data.synthetic import generate_sample
from crackseg.datamodules import DeepCrackDataModule
from crackseg.pseudolabels import (
    CheckpointError,
    FastPseudoLabeler,
    PseudoLabelConfig,
    ReferencePseudoLabeler,
    gradcam_plus_plus,
    grid_crack_mask,
    load_classifier,
    multiotsu_thresholds,
    patch_crack_masks,
    reference_patch_crack_mask,
)

pytestmark = pytest.mark.usefixtures("single_thread")

STANDIN = "fakes.TinyCrackClassifier"


def random_patches(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """Grey patches of many kinds: noise, a dark line on noise, few levels, flat, two and three levels."""
    patches = []
    for i in range(n):
        kind = i % 7
        if kind == 0:
            patch = rng.integers(0, 256, (size, size))
        elif kind == 1:
            patch = np.clip(rng.integers(40, 220) + rng.normal(0, rng.uniform(0.3, 20), (size, size)), 0, 255)
            patch[int(rng.integers(0, size)), :] = rng.integers(0, 60)
        elif kind == 2:
            patch = rng.choice(rng.integers(0, 256, int(rng.integers(4, 9))), (size, size))
        elif kind == 3:
            patch = np.full((size, size), rng.integers(0, 256))
        elif kind == 4:
            levels = rng.integers(0, 256, 2)
            patch = np.where(rng.random((size, size)) < rng.uniform(0.05, 0.95), levels[0], levels[1])
        elif kind == 5:
            patch = rng.choice(rng.choice(256, 3, replace=False), (size, size))
        else:  # a narrow range: few levels, bins far apart
            patch = rng.integers(100, 100 + int(rng.integers(2, 12)), (size, size))
        patches.append(patch.astype(np.uint8))
    return np.stack(patches)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def synthetic_images() -> list[np.ndarray]:
    """Synthetic crack photographs of several sizes (not all multiples of 32), one crack-free."""
    sizes = [(64, 96), (72, 104), (64, 96), (96, 80), (64, 64)]
    images = [generate_sample(seed, size, crack=seed != 4, width_range=(1.0, 3.0))[0]
              for seed, size in enumerate(sizes)]
    rng = np.random.default_rng(3)
    images += [fakes.crack_pair(rng, (70, 90))[0] for _ in range(2)]
    return images


# -- multi-Otsu -------------------------------------------------------------------------------------------------

def test_vectorised_multiotsu_equals_skimage_on_random_patches() -> None:
    """Thresholds (both of them) and crack pixels equal scikit-image's, patch for patch."""
    patches = random_patches(np.random.default_rng(0), 700)
    flat = torch.from_numpy(patches.reshape(len(patches), -1))
    fast = patch_crack_masks(flat).numpy().reshape(patches.shape)
    reference = np.stack([reference_patch_crack_mask(p) for p in patches])
    assert np.array_equal(fast, reference)

    # the thresholds themselves: bin centres of the normalised patch
    values = flat.to(torch.int32)
    low = values.amin(dim=1, keepdim=True)
    spread = (values.amax(dim=1, keepdim=True) - low).clamp(min=1)
    bins = torch.clamp((values - low) * 256 // spread, max=255)
    hist = torch.stack([torch.bincount(row, minlength=256) for row in bins])
    thresholds, valid = multiotsu_thresholds(hist)
    checked = 0
    for patch, index, ok in zip(patches, thresholds.numpy(), valid.numpy(), strict=True):
        x = patch.astype(np.float64)
        if x.max() == x.min():
            assert not ok
            continue
        x = (x - x.min()) / (x.max() - x.min())
        try:
            expected = threshold_multiotsu(x, classes=3)
        except ValueError:
            assert not ok
            continue
        assert ok
        assert np.array_equal((2 * index + 1) / 512, expected)
        checked += 1
    assert checked > 450


@pytest.mark.parametrize("size,stride", [(32, 8), (32, 16), (16, 4), (32, 32)])
def test_grid_crack_mask_equals_per_patch_skimage_and(size: int, stride: int) -> None:
    """The whole-image thresholding (cell histograms, min-pooled limits) equals cutting every patch, thresholding
    it with scikit-image and AND-ing the overlapping patches, on images with noise, lines, flat areas and few
    grey levels; bad sizes are refused."""
    rng = np.random.default_rng(size + stride)
    for shape in ((64, 96), (96, 64), (32, 128)):
        image = rng.integers(60, 200, shape).astype(np.uint8)
        image[shape[0] // 3, :] = 20  # a dark line
        image[:, shape[1] // 2] = rng.integers(0, 40)  # another one
        image[:size, :size] = 128  # a flat patch: vetoes everything under it
        image[-size:, -size:] = rng.choice(np.array([10, 90, 200], np.uint8), (size, size))  # three levels only
        expected = np.ones(shape, bool)
        for top in range(0, shape[0] - size + 1, stride):
            for left in range(0, shape[1] - size + 1, stride):
                window = (slice(top, top + size), slice(left, left + size))
                expected[window] &= reference_patch_crack_mask(image[window])
        got = grid_crack_mask(torch.from_numpy(image), size, stride).numpy()
        assert got.shape == shape and got.dtype == bool
        assert np.array_equal(got, expected)
        assert 0 < expected.sum() < expected.size  # the check is not vacuous
    with pytest.raises(ValueError, match="multiple of the stride"):
        grid_crack_mask(torch.zeros(64, 64, dtype=torch.uint8), 32, 12)
    with pytest.raises(ValueError, match="padded to a multiple"):
        grid_crack_mask(torch.zeros(60, 64, dtype=torch.uint8), 32, 8)
    with pytest.raises(ValueError, match="uint8"):
        grid_crack_mask(torch.zeros(64, 64), 32, 8)


def test_vectorised_multiotsu_equals_skimage_on_random_histograms() -> None:
    """The ``hist=`` path: counts as given (float weights too), leading / trailing empty bins trimmed."""
    rng = np.random.default_rng(1)
    hists = []
    for i in range(1500):
        nbins = int(rng.integers(3, 48))
        counts = rng.integers(0, 9, nbins) * (rng.random(nbins) < rng.uniform(0.15, 1.0))
        if i % 3 == 1:
            counts = counts * rng.random(nbins)  # arbitrary float32 weights: the sums must run in skimage's order
        if i % 3 == 2:
            counts = counts * 1e-3
        hists.append(np.pad(counts, (int(rng.integers(0, 3)), 0))[:48])
    width = max(len(h) for h in hists)
    table = np.stack([np.pad(h, (0, width - len(h))) for h in hists]).astype(np.float32)
    thresholds, valid = multiotsu_thresholds(torch.from_numpy(table), normalize=False)
    n_valid = 0
    for hist, index, ok in zip(table, thresholds.numpy(), valid.numpy(), strict=True):
        try:
            expected = threshold_multiotsu(hist=hist.copy(), classes=3)
        except ValueError:
            assert not ok
            continue
        assert ok and tuple(index) == tuple(expected), (hist, index, expected)
        n_valid += 1
    assert n_valid > 1000


def test_few_grey_levels_follow_skimage_or_mark_nothing() -> None:
    """Flat and two-level patches: scikit-image raises, so no crack pixel; three levels: the darkest level."""
    flat = np.full((32, 32), 120, np.uint8)
    two = np.where(np.arange(1024).reshape(32, 32) % 5 == 0, 30, 200).astype(np.uint8)
    three = two.copy()
    three[:, :4] = 90
    with pytest.raises(ValueError):
        threshold_multiotsu(two.astype(float), classes=3)
    masks = patch_crack_masks(torch.from_numpy(np.stack([flat, two, three]).reshape(3, -1))).numpy()
    assert not masks[0].any() and not masks[1].any()
    assert np.array_equal(masks[2].reshape(32, 32), three == 30)
    assert np.array_equal(masks[2].reshape(32, 32), reference_patch_crack_mask(three))
    assert not reference_patch_crack_mask(flat).any() and not reference_patch_crack_mask(two).any()


# -- GradCAM++ --------------------------------------------------------------------------------------------------

def test_gradcam_is_batched_normalised_and_side_effect_free() -> None:
    classifier = fakes.TinyCrackClassifier(pool=8)
    net = classifier.net.eval()
    images = torch.stack([torch.from_numpy(fakes.crack_pair(np.random.default_rng(i), (64, 96))[0]) for i in range(3)])
    inputs = classifier.normalize(images.permute(0, 3, 1, 2).float() / 255)
    with torch.inference_mode():  # works inside inference mode too
        batched = gradcam_plus_plus(net, inputs, class_index=1)
    single = torch.cat([gradcam_plus_plus(net, inputs[i:i + 1], class_index=1) for i in range(3)])
    assert batched.shape == (3, 8, 12)
    assert torch.allclose(batched, single, atol=1e-6)
    assert torch.allclose(batched.amax(dim=(1, 2)), torch.ones(3))
    assert all(p.requires_grad for p in net.parameters())
    # one channel and a linear head: GradCAM++ is the rectified feature map, up to its maximum
    features = net.features(inputs).detach()[:, 0]
    assert torch.allclose(batched, features / features.amax(dim=(1, 2), keepdim=True), atol=1e-5)
    # the arg-max class of a crack image is the crack class; the no-crack class has a negative gradient: zero map
    assert torch.allclose(gradcam_plus_plus(net, inputs, None), batched)
    assert float(gradcam_plus_plus(net, inputs, 0).abs().max()) == 0.0


# -- generators -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    PseudoLabelConfig(min_crack_pixels=20),
    PseudoLabelConfig(patch_merge="grid", cam_class="argmax", min_crack_pixels=20),
    PseudoLabelConfig(patch_merge="grid", cam_class="argmax", code_quirks=True, min_crack_pixels=20),
], ids=["paper", "reference-code-merge", "reference-code-quirks"])
def test_fast_generator_agrees_with_reference(config: PseudoLabelConfig) -> None:
    """Every stage and the labels agree (IoU >= 0.99; in practice identical) on synthetic crack images, with the
    classifier in channels-last (the fast default) or contiguous memory."""
    images = synthetic_images()
    classifier = fakes.TinyCrackClassifier()
    reference = ReferencePseudoLabeler(classifier, config, "cpu", batch_size=16, channels_last=False)(
        images, keep_stages=True)
    fast_nchw = FastPseudoLabeler(classifier, config, "cpu", batch_size=64, channels_last=False)(images)
    fast = FastPseudoLabeler(classifier, config, "cpu", batch_size=64)(images, keep_stages=True)  # channels-last
    for a, b, c, image in zip(fast, reference, fast_nchw, images, strict=True):
        assert iou(c.label, b.label) >= 0.99
        assert a.label.shape == image.shape[:2] and a.label.dtype == np.uint8
        for stage in ("patch_map", "cam", "localisation"):
            np.testing.assert_allclose(a.stages[stage], b.stages[stage], atol=1e-5)
        assert np.array_equal(a.stages["threshold_mask"], b.stages["threshold_mask"])
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 1
        assert iou(a.label, b.label) >= 0.99
        assert a.kept == b.kept


def test_labels_find_the_cracks_and_rule_f_drops_empty_ones() -> None:
    rng = np.random.default_rng(0)
    pairs = [fakes.crack_pair(rng, (64, 96)) for _ in range(6)]
    blank = fakes.crack_pair(rng, (64, 96), crack=False)[0]
    labels = FastPseudoLabeler(fakes.TinyCrackClassifier(), device="cpu")([p[0] for p in pairs] + [blank])
    scores = [iou(label.label, mask > 0) for label, (_, mask) in zip(labels, pairs, strict=False)]
    assert np.mean(scores) > 0.6, scores
    assert labels[-1].crack_pixels < 100 and not labels[-1].kept
    assert set(np.unique(labels[0].label)) <= {0, 1}
    assert all(label.kept == (label.crack_pixels >= 100) for label in labels)


def test_reduced_precision_patch_passes_stay_close_to_float32() -> None:
    """``precision="bf16"`` (autocast of the patch classification) gives nearly the float32 labels; GradCAM++ and the
    thresholding are untouched; an unknown precision is refused."""
    images = synthetic_images()
    classifier = fakes.TinyCrackClassifier()
    full = FastPseudoLabeler(classifier, device="cpu")(images, keep_stages=True)
    half = FastPseudoLabeler(classifier, device="cpu", precision="bf16")(images, keep_stages=True)
    changed, ious = 0, []
    for a, b in zip(full, half, strict=True):
        assert np.array_equal(a.stages["threshold_mask"], b.stages["threshold_mask"])
        np.testing.assert_array_equal(a.stages["cam"], b.stages["cam"])
        assert np.abs(a.stages["patch_map"] - b.stages["patch_map"]).max() < 0.05
        changed += int(not np.array_equal(a.stages["patch_map"], b.stages["patch_map"]))
        assert np.mean(a.label != b.label) < 0.02  # a few pixels of these small images (measured: <= 1 %)
        ious.append(iou(a.label, b.label))
    assert changed > 0  # bf16 really ran
    assert np.mean(ious) >= 0.95
    with pytest.raises(ValueError, match="precision"):
        FastPseudoLabeler(classifier, device="cpu", precision="8")  # type: ignore[arg-type]


def test_config_and_input_checks() -> None:
    with pytest.raises(ValueError, match="threshold_stride"):
        PseudoLabelConfig(threshold_stride=5)
    with pytest.raises(ValueError, match="below_min"):
        PseudoLabelConfig(below_min="drop")  # type: ignore[arg-type]
    generator = FastPseudoLabeler(fakes.TinyCrackClassifier(), device="cpu")
    with pytest.raises(ValueError, match="smaller than"):
        generator([np.zeros((20, 64, 3), np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        generator([np.zeros((64, 64), np.uint8)])


# -- the command ------------------------------------------------------------------------------------------------

@pytest.fixture
def source(tmp_path: Path) -> Path:
    return fakes.make_deepcrack(tmp_path / "src", n_train=5, n_test=2, size=(64, 96))


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return fakes.save_lightning_checkpoint(fakes.TinyCrackClassifier(), tmp_path / "classifier.ckpt")


def pseudo_label(source: Path, checkpoint: Path, out: Path, *extra: str) -> dict:
    return main(["pseudo-label", "--ckpt_path", str(checkpoint), "--data.class_path", "DeepCrackDataModule",
                 "--data.init_args.root", str(source), "--out", str(out), "--classifier_class", STANDIN,
                 "--device", "cpu", "--progress", "false", "--params.min_crack_pixels", "60", *extra])


def test_pseudo_label_command_writes_a_deepcrack_dataset(source: Path, checkpoint: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    report = pseudo_label(source, checkpoint, out)
    assert report["images"] == 5  # train + held-out validation images of the source
    written = sorted(p.stem for p in (out / "train_img").glob("*.jpg"))
    assert written == sorted(p.stem for p in (out / "train_lab").glob("*.png"))
    assert len(written) == report["labelled"] == 5 - report["below_min_crack_pixels"] >= 3
    for stem in written:
        label = np.asarray(Image.open(out / "train_lab" / f"{stem}.png"))
        assert set(np.unique(label)) <= {0, 255} and (label > 0).sum() >= 60
        confidence = np.asarray(Image.open(out / "train_conf" / f"{stem}.png"))  # grey, binarised into the label
        assert confidence.shape == label.shape and np.array_equal(confidence > 127, label > 0)
        assert (out / "train_img" / f"{stem}.jpg").read_bytes() == (source / "train_img" / f"{stem}.jpg").read_bytes()
    for mask in sorted((source / "test_lab").glob("*.png")):  # the real test masks
        assert np.array_equal(read_mask(out / "test_lab" / mask.name), read_mask(mask))
    quality = json.loads((out / "quality.json").read_text())
    assert quality["quality"]["kept"]["images"] == report["labelled"]
    for key in ("ods", "ois", "ap", "precision", "recall", "f1", "iou"):
        assert 0.0 <= quality["quality"]["all"][key] <= 1.0
    assert quality["quality"]["kept"]["iou"] > 0.5 and quality["images_per_second"] > 0
    assert quality["precision"] == "32"
    assert '"quality"' in capsys.readouterr().out
    bf16 = pseudo_label(source, checkpoint, tmp_path / "bf16", "--precision", "bf16")
    assert json.loads((tmp_path / "bf16" / "quality.json").read_text())["precision"] == "bf16"
    assert abs(bf16["labelled"] - report["labelled"]) <= 1

    data = DeepCrackDataModule(root=out, crop_size=32, val_fraction=0.25)
    data.setup("fit")
    data.setup("test")
    assert len(data.datasets["train"]) + len(data.datasets["val"]) == len(written)
    assert len(data.datasets["test"]) == 2
    batch = next(iter(data.train_dataloader()))
    assert batch["mask"].shape[-2:] == (32, 32)


def test_overwrite_protection_and_semi_supervised_mode(source: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pseudo_label(source, checkpoint, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        pseudo_label(source, checkpoint, out, "--include_test", "true")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    (out / "train_img" / "stale.jpg").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    # a fit-style config: its data section is used, model / trainer are ignored
    config = tmp_path / "fit.yaml"
    config.write_text(f"seed_everything: 0\ntrainer:\n  max_epochs: 3\nmodel:\n  class_path: UNet\n"
                      f"data:\n  class_path: DeepCrackDataModule\n  init_args:\n    root: {source}\n")
    report = main(["pseudo-label", "--config", str(config), "--ckpt_path", str(checkpoint), "--out", str(out),
                   "--classifier_class", STANDIN, "--device", "cpu", "--progress", "false",
                   "--params.min_crack_pixels", "60", "--include_test", "true", "--overwrite", "true"])
    assert report["images"] == 7
    assert not (out / "train_img" / "stale.jpg").exists() and (out / "notes.txt").read_text() == "mine"
    stems = {p.stem for p in (out / "train_img").iterdir()}
    assert any(stem.startswith("test") for stem in stems)
    assert len(stems) == report["labelled"]
    DeepCrackDataModule(root=out, crop_size=32).setup("fit")


def test_clear_errors(source: Path, checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        pseudo_label(source, tmp_path / "missing.ckpt", tmp_path / "a")
    from crackseg.lightning_modules import UNet

    other = fakes.save_lightning_checkpoint(UNet(base_channels=4, depth=2), tmp_path / "unet.ckpt")
    with pytest.raises(CheckpointError, match="unet.ckpt (cannot be loaded as|holds a UNet).*TinyCrackClassifier"):
        load_classifier(other, fakes.TinyCrackClassifier)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt is not a PyTorch / Lightning checkpoint"):
        load_classifier(garbage, STANDIN)
    for mask in (source / "test_lab").glob("*.png"):
        mask.unlink()
    for image in (source / "test_img").glob("*.jpg"):
        image.unlink()
    with pytest.raises(DataError, match="test split .* is empty"):
        pseudo_label(source, checkpoint, tmp_path / "b", "--split", "test")
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="holds the source file"):
        pseudo_label(source, checkpoint, source.parent, "--overwrite", "true")


def test_crackseg_help_mentions_pseudo_label(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "pseudo-label" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["pseudo-label", "--help"])
    assert exc.value.code == 0
    assert "--params.bilateral_radius" in capsys.readouterr().out


def test_real_crack_classifier_checkpoint(source: Path, tmp_path: Path) -> None:
    """The command with its default class, CrackClassifier (random ResNet-18), and GradCAM++ equal to its own."""
    classifier_module = pytest.importorskip("crackseg.lightning_modules.classifier")
    torch.manual_seed(0)
    module = classifier_module.CrackClassifier(backbone="resnet18", weights=None, hidden_features=8)
    ckpt = fakes.save_lightning_checkpoint(module, tmp_path / "real.ckpt")
    out = tmp_path / "out"
    report = main(["pseudo-label", "--ckpt_path", str(ckpt), "--data.class_path", "DeepCrackDataModule",
                   "--data.init_args.root", str(source), "--out", str(out), "--device", "cpu", "--progress", "false",
                   "--params.below_min", "empty"])
    assert report["labelled"] == 5 and report["quality"]["all"]["images"] == 5
    DeepCrackDataModule(root=out, crop_size=32).setup("fit")

    classifier = load_classifier(ckpt)
    images = synthetic_images()[:3]
    config = PseudoLabelConfig(min_crack_pixels=0)
    fast = FastPseudoLabeler(classifier, config, "cpu")(images, keep_stages=True)
    reference = ReferencePseudoLabeler(classifier, config, "cpu")(images, keep_stages=True)
    for a, b in zip(fast, reference, strict=True):
        np.testing.assert_allclose(a.stages["patch_map"], b.stages["patch_map"], atol=1e-5)
        assert iou(a.label, b.label) >= 0.99
    # the classifier's own Grad-CAM++ (map logger) is the same function, resized to the image
    image = torch.from_numpy(images[0]).permute(2, 0, 1)[None].float() / 255
    classifier.eval()
    cam = gradcam_plus_plus(classifier.net, classifier.normalize(image), 1)[:, None]
    expected = torch.nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(classifier.gradcam(image), expected.clamp(0, 1), atol=1e-6)


def test_bilateral_d_is_a_radius_as_in_eq_1() -> None:
    """d = 2 of §IV-C is eq. (1)'s radius: a 5 x 5 window, the reference code's ``bilateralFilter(img, 5, 120, 120)``
    (a 3 x 3 window, d read as a diameter, gives a different grey image)."""
    import cv2

    from crackseg.pseudolabels.generator import threshold_input

    image = synthetic_images()[0]
    config = PseudoLabelConfig()
    assert (config.bilateral_radius, config.bilateral_diameter) == (2, 5)
    reference = cv2.cvtColor(cv2.bilateralFilter(image, 5, 120, 120), cv2.COLOR_RGB2GRAY)
    narrow = cv2.cvtColor(cv2.bilateralFilter(image, 3, 120, 120), cv2.COLOR_RGB2GRAY)
    assert np.array_equal(threshold_input(image, config), reference)
    assert not np.array_equal(reference, narrow)
    quirks = threshold_input(image, PseudoLabelConfig(code_quirks=True))  # the official code: BGR2GRAY of RGB
    assert np.array_equal(quirks, cv2.cvtColor(cv2.bilateralFilter(image, 5, 120, 120), cv2.COLOR_BGR2GRAY))
    assert not np.array_equal(quirks, reference)
    with pytest.raises(ValueError, match="bilateral_radius must be >= 1"):
        PseudoLabelConfig(bilateral_radius=0)


def test_classifier_checkpoint_loads_after_its_weights_file_moved(tmp_path: Path) -> None:
    """A classifier trained from a weights file is rebuilt without it (the checkpoint holds the weights); a
    checkpoint that does not fit says what failed, not that it "is not a CrackClassifier checkpoint"."""
    import lightning

    from crackseg.lightning_modules import CrackClassifier
    from crackseg.models.backbones import create_backbone

    weights = tmp_path / "resnet18.pth"
    torch.save(create_backbone("resnet18", weights=None).state_dict(), weights)
    module = CrackClassifier(backbone="resnet18", weights=str(weights), hidden_features=8, normalization="imagenet")
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path / "classifier.ckpt"
    torch.save(checkpoint, path)
    weights.unlink()  # the file the backbone started from is gone
    loaded = load_classifier(path)
    images = torch.rand(2, 3, 32, 32)
    module.eval()
    assert torch.allclose(loaded.crack_probability(images), module.crack_probability(images), atol=1e-6)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if "head" not in k}
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"cannot be loaded as CrackClassifier \(RuntimeError: .*head"):
        load_classifier(path)


def test_code_quirks_resize_8_bit_maps_with_pil_hamming() -> None:
    """``code_quirks`` maps: rounded to 8 bits, then PIL's Hamming resize (official code); default: float Lanczos."""
    from crackseg.pseudolabels.generator import upsample

    grid = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    quirky = upsample(grid, (40, 56), code_quirks=True)
    expected = Image.fromarray(np.rint(grid * 255).astype(np.uint8)).resize((56, 40), Image.Resampling.HAMMING)
    assert quirky.shape == (40, 56) and np.array_equal(quirky * 255.0, np.asarray(expected, np.float32))
    assert not np.allclose(quirky, upsample(grid, (40, 56)), atol=1e-3)


def test_gradcam_plus_plus_alpha_from_the_derivatives_of_exp_score() -> None:
    """Chattopadhay et al. eq. (19) from the derivatives themselves: with Y = exp(S), alpha = Y'' / (2 Y'' +
    sum(A) Y''') per element (computed by torch.func, not by the closed form), w_k = sum alpha relu(Y'). With a
    head whose gradient varies over the map, alpha is not Grad-CAM's uniform 1 / (h w) and the maps differ."""
    from torch.func import grad

    torch.manual_seed(0)
    channels, h, w = 3, 3, 4

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.target_layer = torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1), torch.nn.ReLU())
            self.head = torch.nn.Linear(channels * h * w, 2)  # spatially varying gradients

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.head(self.target_layer(x).flatten(1))}

    net = Net().eval()
    x = torch.randn(1, 1, h, w)
    features = net.target_layer(x).detach()[0]
    head_w = net.head.weight.detach()[1].view(channels, h, w)
    head_b = net.head.bias.detach()[1]
    ours = gradcam_plus_plus(net, x, 1)[0]

    def y_of(t: torch.Tensor, k: int, i: int, j: int) -> torch.Tensor:
        a = features.clone()
        a = a.index_put((torch.tensor(k), torch.tensor(i), torch.tensor(j)), a[k, i, j] + t)
        return torch.exp((head_w * a).sum() + head_b)

    alpha = torch.zeros(channels, h, w)
    d1 = torch.zeros(channels, h, w)
    zero = torch.tensor(0.0)
    for k in range(channels):
        for i in range(h):
            for j in range(w):
                f = lambda t, k=k, i=i, j=j: y_of(t, k, i, j)  # noqa: E731
                y1, y2, y3 = grad(f)(zero), grad(grad(f))(zero), grad(grad(grad(f)))(zero)
                d1[k, i, j] = y1
                alpha[k, i, j] = y2 / (2 * y2 + features[k].sum() * y3)
    weights = (alpha * torch.relu(d1)).sum(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * features).sum(0))
    assert torch.allclose(ours, cam / cam.max(), atol=1e-5)
    gradcam = torch.relu((torch.relu(head_w).mean(dim=(1, 2))[:, None, None] * features).sum(0))
    assert not torch.allclose(alpha, torch.full_like(alpha, 1.0 / (h * w)), atol=1e-3)
    assert not torch.allclose(ours, gradcam / gradcam.max(), atol=1e-3)


@pytest.mark.parametrize("patch_merge", ["average", "grid"])
def test_fast_equals_reference_on_padded_real_size_images_with_a_multichannel_classifier(patch_merge: str) -> None:
    """Photograph-size images (330 x 470: both sides need mirror padding to a multiple of 32) and a real
    CrackClassifier (narrow ResNet, 32-channel feature map, random weights): every stage of the fast generator
    equals the reference one."""
    from crackseg.lightning_modules import CrackClassifier

    torch.manual_seed(0)
    classifier = CrackClassifier(backbone="resnet10t", weights=None, hidden_features=8,
                                 backbone_kwargs={"channels": [8, 16, 16, 32], "stem_width": 8}).eval()
    assert classifier.net.channels == 32
    images = [generate_sample(seed, (330, 470), width_range=(1.5, 3.0))[0] for seed in (11, 12)]
    config = PseudoLabelConfig(patch_merge=patch_merge, min_crack_pixels=20)  # type: ignore[arg-type]
    reference = ReferencePseudoLabeler(classifier, config, "cpu", batch_size=64)(images, keep_stages=True)
    fast = FastPseudoLabeler(classifier, config, "cpu", batch_size=256)(images, keep_stages=True)
    for a, b in zip(fast, reference, strict=True):
        assert a.label.shape == (330, 470)
        for stage in ("patch_map", "cam", "localisation"):
            np.testing.assert_allclose(a.stages[stage], b.stages[stage], atol=1e-5)
        assert float(np.abs(b.stages["cam"]).max()) > 0.0
        assert np.array_equal(a.stages["threshold_mask"], b.stages["threshold_mask"])
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 1
        assert iou(a.label, b.label) >= 0.99 and a.kept == b.kept


def test_grid_crack_mask_in_bands_is_bit_exact() -> None:
    grey = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (480, 224), dtype=np.uint8))
    whole = grid_crack_mask(grey)
    for band_rows in (8, 56, 100, 300):
        assert torch.equal(grid_crack_mask(grey, band_rows=band_rows), whole), band_rows


def _large_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A grey textured photo with a few dark crack lines, larger than the tiles."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(150, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    for k in range(4):
        cv2.line(image, (int(rng.integers(width)), 0), (int(rng.integers(width)), height - 1), (40, 40, 40), 2 + k % 2)
    return image


def test_tiled_pseudo_labels_equal_whole_image_ones() -> None:
    """A photo larger than tile + 2 margins goes by tiles (feature map by tiles, thresholding in bands) and every
    stage comes out as for the whole image, the label bit for bit."""
    photo = _large_photo(520, 392)
    whole = FastPseudoLabeler(fakes.TinyCrackClassifier(), device="cpu", tile_size=None)
    tiled = FastPseudoLabeler(fakes.TinyCrackClassifier(), device="cpu", tile_size=80, tile_margin=32)
    assert tiled.tiled(photo) and not whole.tiled(photo)
    (a,), (b,) = whole([photo], keep_stages=True), tiled([photo], keep_stages=True)
    assert a.crack_pixels > 100
    for stage in ("patch_map", "cam", "localisation", "threshold_mask"):
        assert np.array_equal(a.stages[stage], b.stages[stage]), stage
    assert np.array_equal(a.label, b.label) and np.array_equal(a.confidence, b.confidence)


def test_tiled_feature_map_of_a_real_backbone_is_the_whole_image_one() -> None:
    """With a margin of the receptive-field radius the tiles' feature map is the whole image's."""
    from crackseg.lightning_modules.classifier import CrackClassifier

    torch.manual_seed(0)
    classifier = CrackClassifier(backbone="resnet10t", weights=None, hidden_features=8, normalization="imagenet")
    generator = FastPseudoLabeler(classifier, device="cpu", tile_size=256, tile_margin=512)
    photo = _large_photo(1312, 600, seed=1)
    assert generator.tiled(photo)
    with torch.no_grad():
        whole = classifier.net.features(classifier.normalize(torch.from_numpy(photo).permute(2, 0, 1)[None]
                                                             .float() / 255))
    tiled = generator.tiled_features(photo)
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, rtol=0, atol=1e-5), (tiled - whole).abs().max()
