"""Reliability and security (issue 8): bad inputs, interrupted runs, numerical faults, untrusted files, determinism.

Everything runs on tiny data on the CPU; the interrupted-run tests start ``crackseg fit`` in subprocesses.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fakes
import numpy as np
import pytest
import torch
from PIL import Image

from crackseg.checkpoint import CheckpointError, SafeCheckpointIO, load_checkpoint
from crackseg.cli import main
from crackseg.data.io import DataError, read_image
from crackseg.lightning_modules import DeepCrackLiu, MSFlow, UNet, VAEGradCAM

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = ["--model", "UNet", "--model.init_args.base_channels", "4", "--model.init_args.depth", "2"]
QUIET = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.logger", "false"]

pytestmark = pytest.mark.usefixtures("single_thread")


# -- 1. the bad-input catalogue ------------------------------------------------------------------------------------
class Evil:
    """Unpickling this runs code: it writes the marker file named at pickling time."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _tiny_checkpoint(module: torch.nn.Module, path: Path) -> Path:
    """A Lightning-format checkpoint of ``module`` written as crackseg modules write them (class recorded)."""
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                  "pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 0}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def _data(kind: str, root: Path, **options: object) -> list[str]:
    args = ["--data", kind, "--data.init_args.root", str(root)]
    for key, value in options.items():
        args += [f"--data.init_args.{key}", str(value)]
    return args


def _deepcrack(tmp: Path, **options: object) -> list[str]:
    return _data("DeepCrackDataModule", fakes.make_deepcrack(tmp / "data", n_train=4, n_test=2), crop_size=32,
                 **options)


def _folder_with(tmp: Path, image: Image.Image) -> list[str]:
    root = fakes.make_folder(tmp / "data", n=4, size=(40, 48))
    (root / "images" / "img_0.jpg").unlink()
    image.save(root / "images" / "img_0.png")
    return _data("FolderDataModule", root, image_dir="images", mask_dir="masks", crop_size=32,
                 test_image_dir="images")


def _gray() -> np.ndarray:
    return np.tile(np.arange(0, 240, 5, dtype=np.uint8), (40, 1))  # 40 x 48, column j holds 5 j


def _converted(cli, tmp: Path) -> None:
    """img_0 loads as (40, 48, 3) uint8 RGB with equal channels and the grey ramp (accepted and converted)."""
    image = read_image(tmp / "data" / "images" / "img_0.png")
    assert image.shape == (40, 48, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])
    assert abs(int(image[0, 5, 0]) - 25) <= 2
    samples = [s.image.name for split in ("train", "val") for s in cli.datamodule.datasets[split].samples]
    assert "img_0.png" in samples


@dataclass
class Case:
    """One bad input: ``build(tmp)`` writes it and returns the ``crackseg`` arguments (subcommand first)."""

    build: Callable[[Path], list[str]]
    error: type[BaseException] | None  # None: accepted
    message: str = ""  # regex the error (or stderr for SystemExit) must match: names the file or option
    accepted: Callable[..., None] | None = None  # checks of an accepted input, given (cli, tmp)


def _fit(*args: str) -> list[str]:
    return ["fit", *args]


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _missing_root(tmp: Path) -> list[str]:
    return _fit(*_data("DeepCrackDataModule", tmp / "nowhere"))


def _empty_root(tmp: Path) -> list[str]:
    (tmp / "data").mkdir()
    return _fit(*_data("DeepCrackDataModule", tmp / "data"))


def _image_without_mask(tmp: Path) -> list[str]:
    args = _deepcrack(tmp)
    _unlink(tmp / "data" / "train_lab" / "train001.png")
    return _fit(*args)


def _mask_without_image(tmp: Path) -> list[str]:
    args = _deepcrack(tmp)
    _unlink(tmp / "data" / "train_img" / "train002.jpg")
    return _fit(*args)


def _mask_of_another_size(tmp: Path) -> list[str]:
    root = fakes.make_kolektor(tmp / "data")
    Image.new("L", (10, 12)).save(root / "train" / "10001_GT.png")
    return _fit(*_data("KolektorSDD2DataModule", root, crop_size=32))


def _truncated_jpeg(tmp: Path) -> list[str]:
    root = fakes.make_crack500(tmp / "data")
    _truncate(root / "traincrop" / "2016_train_1.jpg")
    return _fit(*_data("Crack500DataModule", root, crop_size=32))


def _truncated_png(tmp: Path) -> list[str]:
    root = fakes.make_mvtec(tmp / "data")
    _truncate(root / "tile" / "train" / "good" / "001.png")
    return _fit(*_data("MVTecADDataModule", root, category="tile", image_size="[32, 32]"))


def _zero_byte_image(tmp: Path) -> list[str]:
    args = _deepcrack(tmp)
    (tmp / "data" / "train_img" / "train003.jpg").write_bytes(b"")
    return _fit(*args)


def _zero_width_png(tmp: Path) -> list[str]:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = fakes.make_folder(tmp / "data", n=4)
    (root / "images" / "img_1.jpg").unlink()
    (root / "images" / "img_1.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 48, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return _fit(*_data("FolderDataModule", root, image_dir="images", mask_dir="masks", crop_size=32,
                       test_fraction=0.25))


def _corrupt_mat(tmp: Path) -> list[str]:
    root = fakes.make_crackforest(tmp / "data")
    (root / "groundTruth" / "002.mat").write_bytes(b"MATLAB 5.0 garbage")
    return _fit(*_data("CrackForestDataModule", root, crop_size=32))


def _non_image_files(tmp: Path) -> list[str]:
    root = fakes.make_crackforest(tmp / "data")
    (root / "image" / "notes.txt").write_text("not an image")
    (root / "image" / "Thumbs.db").write_bytes(b"\0\1")
    (root / "groundTruth" / "readme.txt").write_text("x")
    return _fit(*_data("CrackForestDataModule", root, crop_size=32))


def _non_image_accepted(cli, tmp: Path) -> None:
    sizes = [len(cli.datamodule.datasets[s]) for s in ("train", "val")]
    assert sum(sizes) == 4  # 6 labelled images, 2 held out for testing; the text files are ignored


def _empty_after_filtering(tmp: Path) -> list[str]:
    return _fit(*_deepcrack(tmp, train_on_normal_only="true"))  # every fake DeepCrack image has a crack


def _ozgenel_class_missing(tmp: Path) -> list[str]:
    root = fakes.make_ozgenel(tmp / "data")
    for path in (root / "Negative").iterdir():
        path.unlink()
    (root / "Negative").rmdir()
    return _fit(*_data("OzgenelDataModule", root))


def _magnetic_tile_class_missing(tmp: Path) -> list[str]:
    root = fakes.make_magnetic_tile(tmp / "data")
    (root / "MT_Free").rename(root / "Free")
    return _fit(*_data("MagneticTileDataModule", root, image_size="[32, 32]"))


def _mvtec_category_missing(tmp: Path) -> list[str]:
    return _fit(*_data("MVTecADDataModule", fakes.make_mvtec(tmp / "data"), category="wood"))


def _folder_mask_dir_missing(tmp: Path) -> list[str]:
    return _fit(*_data("FolderDataModule", fakes.make_folder(tmp / "data"), image_dir="images",
                       mask_dir="nomasks"))


def _synthetic_root_is_file(tmp: Path) -> list[str]:
    (tmp / "data").write_text("a file")
    return _fit(*_data("SyntheticCracksDataModule", tmp / "data", n_train=2, n_val=1, n_test=1,
                       generate_size="[32, 32]"))


def _patches_source_missing(tmp: Path) -> list[str]:
    source = f"{{class_path: DeepCrackDataModule, init_args: {{root: {tmp / 'nowhere'}}}}}"
    return _fit("--data", "PatchClassificationDataModule", "--data.init_args.source", source)


def _option(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: _fit(*_deepcrack(tmp), *args)


def _stride_accepted(cli, tmp: Path) -> None:
    model = cli.model
    assert 30 % model.stride != 0
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 30, 30))["logits"]
    assert logits.shape == (1, 1, 30, 30)  # reflect-padded to the stride inside the model, cropped back


def _with_checkpoint(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: _fit(*_deepcrack(tmp), "--ckpt_path", str(make(tmp)))


def _other_method_checkpoint(tmp: Path) -> Path:
    torch.manual_seed(0)
    return _tiny_checkpoint(DeepCrackLiu(width_multiplier=0.0625), tmp / "deepcrack_liu.ckpt")


def _text_checkpoint(tmp: Path) -> Path:
    path = tmp / "notes.ckpt"
    path.write_text("this is not a checkpoint\n")
    return path


def _weights_file_checkpoint(tmp: Path) -> Path:
    path = tmp / "weights.pth"
    torch.save(UNet(base_channels=4, depth=2).state_dict(), path)
    return path


def _malicious_checkpoint(tmp: Path) -> Path:
    path = tmp / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil(tmp / "pwned")}, path)
    return path


CATALOGUE: dict[str, Case] = {
    "missing-root": Case(_missing_root, DataError, r"dataset root not found: .*nowhere"),
    "empty-root": Case(_empty_root, DataError, r"DeepCrack layout not found under .*data"),
    "image-without-mask": Case(_image_without_mask, DataError, r"image .*train001\.jpg has no mask .*train001\.png"),
    "mask-without-image": Case(_mask_without_image, DataError, r"mask .*train002\.png has no image train002"),
    "mask-of-another-size": Case(_mask_of_another_size, DataError,
                                 r"mask .*10001_GT\.png is 10x12 but image .*10001\.png is 32x80"),
    "truncated-jpeg": Case(_truncated_jpeg, DataError, r"cannot read image .*2016_train_1\.jpg"),
    "truncated-png": Case(_truncated_png, DataError, r"cannot read image .*001\.png"),
    "zero-byte-image": Case(_zero_byte_image, DataError, r"cannot read image .*train003\.jpg"),
    "zero-width-png": Case(_zero_width_png, DataError, r"cannot read image .*img_1\.png"),
    "corrupt-mat-mask": Case(_corrupt_mat, DataError, r"cannot read CrackForest ground truth .*002\.mat"),
    "16-bit-image": Case(lambda t: _fit(*_folder_with(t, Image.fromarray(_gray().astype(np.uint16) * 257))),
                         None, accepted=_converted),
    "grayscale-image": Case(lambda t: _fit(*_folder_with(t, Image.fromarray(_gray()))), None, accepted=_converted),
    "rgba-image": Case(lambda t: _fit(*_folder_with(t, Image.fromarray(
        np.dstack([_gray()] * 3 + [np.full((40, 48), 255, np.uint8)]), "RGBA"))), None, accepted=_converted),
    "palette-image": Case(lambda t: _fit(*_folder_with(t, Image.fromarray(np.dstack([_gray()] * 3)).convert(
        "P", palette=Image.Palette.ADAPTIVE))), None, accepted=_converted),
    "non-image-files": Case(_non_image_files, None, accepted=_non_image_accepted),
    "empty-split-after-filtering": Case(_empty_after_filtering, DataError,
                                        r"train split of DeepCrackDataModule under .*data is empty "
                                        r"\(data\.train_on_normal_only=true"),
    "ozgenel-class-folder-missing": Case(_ozgenel_class_missing, DataError, r"expected Positive/ and Negative/ "
                                                                            r"\(.*Negative missing\)"),
    "magnetic-tile-class-folder-missing": Case(_magnetic_tile_class_missing, DataError,
                                               r"magnetic tile layout not found under .*data: expected MT_Free"),
    "mvtec-category-missing": Case(_mvtec_category_missing, DataError,
                                   r"category 'wood' not found under .*data.*categories found: tile"),
    "folder-mask-dir-missing": Case(_folder_mask_dir_missing, DataError, r"data\.mask_dir not found: .*nomasks"),
    "synthetic-root-is-a-file": Case(_synthetic_root_is_file, DataError, r"data\.init_args\.root .*data is a file"),
    "patches-source-root-missing": Case(_patches_source_missing, DataError, r"dataset root not found: .*nowhere"),
    "unknown-config-key": Case(_option("--model.init_args.learning_rate_typo", "0.1"), SystemExit,
                               r"learning_rate_typo"),
    "wrong-type": Case(_option("--data.init_args.batch_size", "four"), SystemExit, r"batch_size"),
    "missing-config-file": Case(lambda t: ["fit", "--config", str(t / "nowhere.yaml")], SystemExit,
                                r"nowhere\.yaml"),
    "negative-lr": Case(_option("--model.init_args.lr", "-0.1"), ValueError, r"model\.lr must be > 0, got -0\.1"),
    "batch-size-0": Case(_option("--data.init_args.batch_size", "0"), ValueError,
                         r"data\.batch_size must be >= 1, got 0"),
    "crop-not-divisible-by-stride": Case(_option("--data.init_args.crop_size", "30"), None,
                                         accepted=_stride_accepted),
    "checkpoint-of-another-method": Case(_with_checkpoint(_other_method_checkpoint), CheckpointError,
                                         r"deepcrack_liu\.ckpt holds a DeepCrackLiu model "
                                         r"\(crackseg\.lightning_modules\.segmentation\.DeepCrackLiu\), but the "
                                         r"model is crackseg\.lightning_modules\.segmentation\.UNet"),
    "checkpoint-not-a-checkpoint": Case(_with_checkpoint(_text_checkpoint), CheckpointError,
                                        r"notes\.ckpt is not a PyTorch / Lightning checkpoint"),
    "checkpoint-is-a-weights-file": Case(_with_checkpoint(_weights_file_checkpoint), CheckpointError,
                                         r"weights\.pth is not a Lightning checkpoint: no 'state_dict'"),
    "checkpoint-missing": Case(_with_checkpoint(lambda t: t / "gone.ckpt"), CheckpointError,
                               r"checkpoint not found: .*gone\.ckpt"),
    "checkpoint-runs-code": Case(_with_checkpoint(_malicious_checkpoint), CheckpointError,
                                 r"refused to load checkpoint .*evil\.ckpt: .*pickled Python objects.*posix\.system"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_catalogue(name: str, workdir: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad input stops ``crackseg fit`` with one clear error naming the file or option, before any training
    step, and leaves the run folder's existing checkpoints and predictions as they were; accepted inputs (image
    modes, stray non-image files, a crop size the network stride does not divide) train."""
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    case = CATALOGUE[name]
    run = workdir / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "predictions").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"the previous run's last checkpoint")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"the previous run's best checkpoint")
    (run / "predictions" / "scores.csv").write_text("name,score\nold,0.5\n")
    before = _snapshot(run)
    steps: list[int] = []
    advance = _TrainingEpochLoop.advance
    monkeypatch.setattr(_TrainingEpochLoop, "advance", lambda self, *a, **k: steps.append(1) or advance(self, *a, **k))

    args = case.build(workdir)
    outputs = ["--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={run / 'checkpoints'}",
               "--trainer.callbacks.save_last=true", "--trainer.callbacks+=PredictionWriter",
               f"--trainer.callbacks.output_dir={run / 'predictions'}"]
    full = [args[0], *TINY_UNET, *QUIET, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", *outputs, *args[1:]]
    if case.error is None:
        cli = main(full)
        assert cli.trainer.state.finished and steps, "an accepted input must train"
        case.accepted(cli, workdir)
        return
    with pytest.raises(BaseException) as raised:
        main(full)
    error = raised.value
    assert type(error) is case.error, f"{name}: expected {case.error.__name__}, got {type(error).__name__}: {error}"
    text = capsys.readouterr().err if isinstance(error, SystemExit) else str(error)
    if isinstance(error, SystemExit):
        assert error.code not in (0, None)
    assert re.search(case.message, text, flags=re.S), f"{name}: message does not name the input: {text[-800:]}"
    assert not steps, f"{name}: a training step ran before the error"
    assert _snapshot(run) == before, f"{name}: existing outputs changed"
    assert not (workdir / "pwned").exists()


# -- 2. interrupted runs -------------------------------------------------------------------------------------------
def _resume_args(workdir: Path, checkpoints: Path, max_epochs: int = 3) -> list[str]:
    """Seeded, deterministic tiny fit with random crops / flips / rotations and an epoch-boundary last.ckpt."""
    return ["fit", *TINY_UNET, *QUIET, "--data", "SyntheticCracksDataModule",
            "--data.init_args.root", str(workdir / "data"), "--data.init_args.n_train", "8",
            "--data.init_args.n_val", "2", "--data.init_args.n_test", "2", "--data.init_args.generate_size", "[40, 40]",
            "--data.init_args.crop_size", "32", "--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size",
            "2", "--trainer.max_epochs", str(max_epochs), "--seed_everything", "1", "--trainer.deterministic", "true",
            "--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.dirpath={checkpoints}",
            "--trainer.callbacks.save_last=true"]


CHILD = textwrap.dedent('''
    """Run crackseg with a callback that signals this process at (epoch, batch) before that training step."""
    import os
    import signal
    import sys

    from lightning import Callback

    from crackseg.cli import main


    class SignalAt(Callback):
        def __init__(self, epoch: int, batch: int, signal_name: str) -> None:
            self.epoch, self.batch, self.signal_name = epoch, batch, signal_name

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.current_epoch == self.epoch and batch_idx == self.batch and self.signal_name:
                os.kill(os.getpid(), getattr(signal, self.signal_name))


    if __name__ == "__main__":
        main(sys.argv[1:])
''')


def _child(workdir: Path, args: list[str], **popen: object) -> subprocess.Popen:
    script = workdir / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(workdir: Path) -> None:
    """SIGKILL in the middle of epoch 1 (of 2), resume with ``--ckpt_path last`` (the epoch-0 boundary checkpoint): the
    final weights and validation metrics equal an uninterrupted run's bit for bit (tolerance 0), because
    RandomStateCheckpoint restores the generators that draw the shuffle and the (reseeded) augmentations.

    The guarantee tested is resumption from an epoch-boundary checkpoint; a mid-epoch checkpoint (signal, step
    interval) resumes at the right step but with a restarted data order (Lightning's loaders are not resumable).
    """
    reference = main(_resume_args(workdir, workdir / "uninterrupted", max_epochs=2))
    expected = torch.load(workdir / "uninterrupted" / "last.ckpt", map_location="cpu", weights_only=True)

    killed = _child(workdir, [*_resume_args(workdir, workdir / "resumed", max_epochs=2),
                              "--trainer.callbacks+=__main__.SignalAt",
                              "--trainer.callbacks.epoch=1", "--trainer.callbacks.batch=2",
                              "--trainer.callbacks.signal_name=SIGKILL"])
    _, err = killed.communicate(timeout=180)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    interrupted = load_checkpoint(workdir / "resumed" / "last.ckpt")  # intact, weights_only=True, hparams included
    assert (interrupted["epoch"], interrupted["global_step"]) == (0, 4)
    assert interrupted["hyper_parameters"]["base_channels"] == 4

    resumed = main([*_resume_args(workdir, workdir / "resumed", max_epochs=2), "--ckpt_path", "last"])
    final = load_checkpoint(workdir / "resumed" / "last.ckpt")
    assert final["global_step"] == expected["global_step"] == 8
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    for key in ("val/loss", "val/ods", "val/auroc"):
        assert float(resumed.trainer.callback_metrics[key]) == float(reference.trainer.callback_metrics[key]), key


def test_sigterm_saves_last_checkpoint_and_exits(workdir: Path) -> None:
    """A process receiving SIGTERM mid-epoch writes last.ckpt after the step in progress and exits with 143."""
    child = _child(workdir, [*_resume_args(workdir, workdir / "ckpt"), "--trainer.callbacks+=__main__.SignalAt",
                             "--trainer.callbacks.epoch=0", "--trainer.callbacks.batch=2",
                             "--trainer.callbacks.signal_name=SIGTERM"])
    _, err = child.communicate(timeout=180)
    assert child.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "received SIGTERM: saved" in err
    saved = load_checkpoint(workdir / "ckpt" / "last.ckpt")
    assert (saved["epoch"], saved["global_step"]) == (0, 3)  # the step in progress (the third) was completed
    assert sorted(p.name for p in (workdir / "ckpt").iterdir()) == ["last.ckpt"]  # no temporary file left


def _signal_callback():  # defined lazily: a Callback subclass at import would be registered by every CLI test
    from lightning import Callback

    class SendSIGUSR1(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.global_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    return SendSIGUSR1()


def test_sigusr1_saves_last_checkpoint(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGUSR1 (SLURM's warning before the time limit) saves last.ckpt after the step in progress and stops."""
    from crackseg.cli import CrackSegCLI

    instantiate = CrackSegCLI.instantiate_trainer

    def with_signal(self, **kwargs):  # noqa: ANN001, ANN202
        trainer = instantiate(self, **kwargs)
        trainer.callbacks.insert(0, _signal_callback())
        return trainer

    monkeypatch.setattr(CrackSegCLI, "instantiate_trainer", with_signal)
    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(SystemExit) as raised:
        main(_resume_args(workdir, workdir / "ckpt"))
    assert raised.value.code == 128 + signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == previous  # handlers restored
    assert load_checkpoint(workdir / "ckpt" / "last.ckpt")["global_step"] == 3


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while a checkpoint is being written leaves the previous last.ckpt whole and no temporary file."""
    import crackseg.checkpoint as module

    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    good = {"state_dict": {"w": torch.arange(1000.0)}, "epoch": 1, "global_step": 10}
    io.save_checkpoint(good, path)
    real_save = torch.save

    def crash_half_way(obj, handle) -> None:  # noqa: ANN001
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)
        raise KeyboardInterrupt  # the process dies in the middle of the write

    monkeypatch.setattr(module.torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 2, "global_step": 20}, path)
    monkeypatch.setattr(module.torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 10 and torch.equal(loaded["state_dict"]["w"], good["state_dict"]["w"])


def test_configs_keep_their_checkpoint_callback(workdir: Path) -> None:
    """A config's own ModelCheckpoint stays; crackseg's defaults (safe I/O, signal and RNG callbacks) are added."""
    from crackseg.checkpoint import RandomStateCheckpoint, SignalCheckpoint

    cli = main([*_resume_args(workdir, workdir / "ckpt", max_epochs=1), "--trainer.limit_train_batches", "1",
                "--trainer.limit_val_batches", "1"])
    from lightning.pytorch.callbacks import ModelCheckpoint

    from crackseg.checkpoint import LastModelCheckpoint

    checkpoints = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(checkpoints) == 1 and type(checkpoints[0]) is LastModelCheckpoint
    assert cli.trainer.checkpoint_callback.dirpath == str(workdir / "ckpt")
    assert any(isinstance(c, SignalCheckpoint) for c in cli.trainer.callbacks)
    assert any(isinstance(c, RandomStateCheckpoint) for c in cli.trainer.callbacks)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_last_checkpoint_is_the_latest_epoch_when_the_monitor_stops_improving(tmp_path: Path) -> None:
    """Lightning 2.6 writes last.ckpt only together with a top-k checkpoint: with ``monitor`` + ``save_top_k: 1`` and
    a score that stops improving, last.ckpt stayed at the best epoch. LastModelCheckpoint (given by the CLI to every
    ModelCheckpoint) writes it every epoch; the best checkpoint stays the best."""
    from lightning import LightningModule, Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    from crackseg.checkpoint import LastModelCheckpoint

    class Tiny(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _index):  # noqa: ANN001, ANN202
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, _index) -> None:  # noqa: ANN001
            self.log("score", 1.0 if self.current_epoch == 0 else 0.5)  # best at epoch 0, never better again

        def configure_optimizers(self):  # noqa: ANN202
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    epochs = {}
    for cls in (ModelCheckpoint, LastModelCheckpoint):
        folder = tmp_path / cls.__name__
        callback = cls(dirpath=folder, filename="best", monitor="score", mode="max", save_top_k=1, save_last=True)
        trainer = Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_progress_bar=False,
                          enable_model_summary=False, accelerator="cpu")
        trainer.fit(Tiny(), data, data)
        epochs[cls.__name__] = (load_checkpoint(folder / "last.ckpt", require_state_dict=False)["epoch"],
                                load_checkpoint(folder / "best.ckpt", require_state_dict=False)["epoch"])
    assert epochs["LastModelCheckpoint"] == (2, 0)  # last = the latest epoch, best = the best one
    assert epochs["ModelCheckpoint"][1] == 0  # same best; Lightning 2.6's own last.ckpt is epoch 0 here too


# -- 3. numerical faults -------------------------------------------------------------------------------------------
class NaNAtStep3(UNet):
    """A UNet whose training loss is NaN at global step 3 (the CLI imports it as ``test_reliability.NaNAtStep3``)."""

    def compute_loss(self, outputs, batch):  # noqa: ANN001, ANN201
        losses = super().compute_loss(outputs, batch)
        if self.training and self.global_step == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def test_nan_loss_stops_and_keeps_last_good_checkpoint(workdir: Path) -> None:
    args = _resume_args(workdir, workdir / "ckpt")
    args[args.index("UNet")] = "test_reliability.NaNAtStep3"
    with pytest.raises(FloatingPointError, match=r"non-finite training loss \(nan\) at epoch 0, global step 3"):
        main([*args, "--trainer.callbacks.every_n_train_steps=1"])
    last = load_checkpoint(workdir / "ckpt" / "last.ckpt")
    assert last["global_step"] == 3  # written after step 2, the last good one
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    io = SafeCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"net.w": torch.ones(3)}, "global_step": 5}, path)
    before = path.read_bytes()
    with pytest.raises(FloatingPointError, match=r"refusing to write checkpoint .*last\.ckpt: weight 'net\.w' holds "
                                                 r"NaN or Inf .*global step 6"):
        io.save_checkpoint({"state_dict": {"net.w": torch.tensor([1.0, float("inf"), 0.0])}, "global_step": 6}, path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("value", [0.0, 1.0])
@pytest.mark.parametrize("method", ["msflow", "vae_gradcam"])
def test_constant_images_give_finite_losses_maps_and_gradients(method: str, value: float) -> None:
    """All-black and all-white images: MSFlow's flow likelihood and VAEGradCAM's log-barrier stay finite."""
    torch.manual_seed(0)
    if method == "msflow":
        module = MSFlow(backbone="resnet18", weights=None, blocks=(1, 1, 1), cond_channels=8)
    else:
        module = VAEGradCAM(image_size=(32, 32), latent_dim=8, width_multiplier=0.125, warmup_epochs=0)
    images = torch.full((2, 3, 32, 32), value)
    batch = {"image": images, "mask": torch.zeros(2, 1, 32, 32), "has_mask": torch.ones(2, dtype=torch.bool),
             "label": torch.zeros(2, dtype=torch.long)}
    module.train()
    losses = module.compute_loss(module(images), batch)
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    losses["loss"].backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    module.eval()
    result = module.evaluate_batch(batch)
    assert torch.isfinite(result["map"]).all() and torch.isfinite(result["score"]).all()


# -- 4. untrusted files --------------------------------------------------------------------------------------------
def test_code_running_pickles_are_refused(tmp_path: Path) -> None:
    """A checkpoint whose unpickling would run code is refused by every loading path; the code never runs."""
    import lightning

    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.ckpt"
    torch.save({"state_dict": UNet(base_channels=4, depth=2).state_dict(), "payload": Evil(marker)}, zipped)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": {}, "payload": Evil(marker)}, protocol=2))
    for path in (zipped, legacy):
        with pytest.raises(CheckpointError, match=rf"refused to load checkpoint .*{path.name}: .*posix\.system"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="refused"):
            SafeCheckpointIO().load_checkpoint(path)
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, plugins=[SafeCheckpointIO()])
    with pytest.raises(CheckpointError, match="refused"):
        trainer.validate(UNet(base_channels=4, depth=2), dataloaders=[], ckpt_path=zipped)
    assert not marker.exists()


def test_trainer_refuses_checkpoint_of_another_method(tmp_path: Path) -> None:
    import lightning

    path = _other_method_checkpoint(tmp_path)
    trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, plugins=[SafeCheckpointIO()])
    batch = {"image": torch.rand(1, 3, 32, 32), "mask": torch.zeros(1, 1, 32, 32),
             "has_mask": torch.ones(1, dtype=torch.bool), "label": torch.zeros(1, dtype=torch.long)}
    with pytest.raises(CheckpointError, match=r"deepcrack_liu\.ckpt holds a DeepCrackLiu model .* but the model is "
                                              r"crackseg\.lightning_modules\.segmentation\.UNet"):
        trainer.validate(UNet(base_channels=4, depth=2), dataloaders=[[batch]], ckpt_path=path)


@pytest.mark.parametrize(("source", "expected"), [
    ("../../evil.png", "evil"),
    ("/etc/passwd", "passwd"),
    ("..", "image"),
    ("/data/../../..png", "image"),
    ("C:\\Windows\\system32\\evil.jpg", "C_Windows_system32_evil"),
    ("/data/ça va ünïcode—é.png", None),
    ("/data/a/b/../../../x#r1c2of3", "x_r1c2"),
    ("/data/" + "a" * 400 + ".png", "a" * 200),
])
def test_prediction_names_cannot_escape_the_output_folder(source: str, expected: str | None, tmp_path: Path) -> None:
    from crackseg.callbacks.writer import safe_name

    name = safe_name(source)
    if expected is not None:
        assert name == expected
    assert name and "/" not in name and "\\" not in name and name not in (".", "..") and len(name) <= 210
    out = tmp_path / "out" / "masks"
    target = (out / f"{name}.png").resolve()
    assert target.parent == out.resolve()


# -- 5. determinism ------------------------------------------------------------------------------------------------
def test_seeded_deterministic_runs_are_identical(workdir: Path) -> None:
    """Two seeded, deterministic fit + test runs on the CPU (random crops, flips, rotations) give identical weights
    and test metrics."""
    metrics, weights = [], []
    for run in ("a", "b"):
        args = _resume_args(workdir, workdir / run, max_epochs=2)
        cli = main(args)
        weights.append(load_checkpoint(workdir / run / "last.ckpt")["state_dict"])
        test = main(["test", *args[1:], "--ckpt_path", str(workdir / run / "last.ckpt")])
        metrics.append({k: float(v) for k, v in test.trainer.callback_metrics.items() if k.startswith("test/")})
        assert cli.trainer.state.finished
    assert metrics[0].keys() == metrics[1].keys() and "test/ods" in metrics[0]
    for key, value in metrics[0].items():  # NaN (an undefined AUROC on a one-class split) equals NaN here
        assert value == metrics[1][key] or (np.isnan(value) and np.isnan(metrics[1][key])), key
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("name", ["SCNet", "DeepCrackZou"])
def test_unpooling_networks_train_under_deterministic_algorithms(name: str) -> None:
    """``--trainer.deterministic true`` sets ``torch.use_deterministic_algorithms``; torch's ``max_unpool2d`` has no
    deterministic kernel, so SCNet and DeepCrack-Zou unpool by a scatter (:func:`crackseg.models.ops.max_unpool2d`),
    which gives the same values and trains under the flag."""
    from crackseg.models.deepcrack_zou import DeepCrackZouModel
    from crackseg.models.scnet import SCNetModel

    torch.manual_seed(0)
    net = SCNetModel(width_multiplier=0.0625) if name == "SCNet" else DeepCrackZouModel(width_multiplier=0.0625)
    images = torch.rand(2, 4 if name == "SCNet" else 3, 64, 96)  # SCNet: RGB + edge channel
    torch.use_deterministic_algorithms(True)
    outputs = [net(images), net(images)]
    logits = [out["logits"] for out in outputs]
    loss = logits[0].float().mean()
    loss.backward()
    assert torch.equal(logits[0], logits[1])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
