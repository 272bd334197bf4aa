"""Safe checkpoint files and resumable training, the defaults of ``crackseg fit``.

- :class:`SafeCheckpointIO`: Lightning's checkpoint I/O with atomic writes (a temporary file in the target
  folder, flushed to disk, then ``os.replace``: a crash never leaves a truncated ``last.ckpt``), a refusal to
  write weights holding NaN / Inf (the last good checkpoint survives a diverged run) and loading with
  ``torch.load(weights_only=True)`` (a checkpoint cannot run code), with errors naming the file.
- :func:`load_checkpoint`: the same safe loading for crackseg's own code.
- :class:`SignalCheckpoint`: SIGTERM / SIGUSR1 (SLURM's warning before a time limit) save ``last.ckpt`` after
  the current training step, then stop the run, so ``--ckpt_path last`` resumes it.
- :class:`LastModelCheckpoint`: ``ModelCheckpoint`` whose ``last.ckpt`` is the latest epoch again (Lightning 2.6
  writes it only when a top-k checkpoint is written at the same step, so with ``monitor`` + ``save_top_k: 1`` it
  was a copy of the best checkpoint); ``crackseg fit`` gives every configured ``ModelCheckpoint`` this behaviour.
- :class:`RandomStateCheckpoint`: stores the random generators' states in checkpoints and restores them on
  resume, so a run resumed from an epoch-boundary checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import importlib
import os
import pickle
import random
import signal
import sys
import threading
import warnings
import zipfile
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["CheckpointError", "LastModelCheckpoint", "RandomStateCheckpoint", "SafeCheckpointIO", "SignalCheckpoint",
           "check_finite_state", "check_model_class", "checkpoint_model_class", "load_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a checkpoint, refused as unsafe, or of another model class."""


def _refusal(error: BaseException) -> str:
    """The line of torch's weights-only refusal that names the offending global (not its advice to retry unsafely)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line or "unsupported" in line]
    return (named or lines[-1:] or [type(error).__name__])[0]


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", require_state_dict: bool = True) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain Python data only.

    Args:
        path: the ``.ckpt`` file.
        map_location: where to put the tensors.
        require_state_dict: raise unless the file is a Lightning checkpoint (a dict with a ``state_dict``).

    Raises:
        CheckpointError: the file is missing, is not a PyTorch checkpoint, or holds pickled objects other than
            plain data (which could run code when unpickled); the message names the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check --ckpt_path)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported operand" in str(error):  # not pickle data at all (a text or truncated file)
            raise CheckpointError(f"{path} is not a PyTorch / Lightning checkpoint ({_refusal(error)})") from None
        if "Weights only load failed" in str(error):
            raise CheckpointError(
                f"refused to load checkpoint {path}: it holds pickled Python objects, not only tensors and plain "
                f"data, and unpickling them could run code ({_refusal(error)}). crackseg loads checkpoints with "
                "torch.load(weights_only=True); only a file from a source you trust should be converted") from None
        raise CheckpointError(f"{path} is not a PyTorch / Lightning checkpoint ({error})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile, IndexError) as error:
        raise CheckpointError(f"{path} is not a PyTorch / Lightning checkpoint, or it is truncated "
                              f"({type(error).__name__}: {error})") from None
    if require_state_dict and (not isinstance(checkpoint, dict) or "state_dict" not in checkpoint):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a Lightning checkpoint: no 'state_dict' (found {found}); a bare "
                              "weights file goes in the model's weights option, not --ckpt_path")
    return checkpoint


DEFAULT_MODULE = "crackseg.lightning_modules"
"""Where a bare class name (``UNet``) is looked up."""

#: hyper-parameters naming initial weights that a checkpoint's state dict supersedes (checkpoints written before
#: :attr:`~crackseg.lightning_modules.CrackSegModule.weight_sources` saved them as None still hold them).
WEIGHT_SOURCES = {"weights": None, "extractor_checkpoint": None}


def import_class(path: str, base: type | None = None, what: str = "the model class") -> type:
    """The class ``package.module.Name``, or a bare ``Name`` of :mod:`crackseg.lightning_modules`.

    Raises:
        CheckpointError: no such module or class, or not a subclass of ``base`` (``what`` names the setting).
    """
    module_name, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or DEFAULT_MODULE), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise CheckpointError(f"cannot import {what} {path!r}: {error}") from None
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        raise CheckpointError(f"{path!r} is not a {base.__name__ if base else 'class'} subclass")
    return cls


def _import(path: str) -> Any:
    """:func:`import_class`, or None when the class cannot be imported (checks that compare names instead)."""
    try:
        return import_class(path) if "." in path else None
    except CheckpointError:
        return None


def load_module(path: str | os.PathLike, model: type | str | None = None, base: type | None = None,
                **overrides: Any) -> Any:
    """The LightningModule of a checkpoint, on the CPU: the one loader of ``export`` and ``pseudo-label``.

    The file is read with :func:`load_checkpoint` (``weights_only``, errors naming it); the class is ``model``
    (a class, a bare name of :mod:`crackseg.lightning_modules` or an import path) or the one the checkpoint
    records, and must agree with it (:func:`check_model_class`); a recorded class outside crackseg is imported
    only when given as ``model`` (importing runs its module's code). Weight sources (hub names, pre-training
    files) of older checkpoints are overridden with None: the weights are in the state dict.

    Args:
        path: the checkpoint.
        model: the model class, or None to use the recorded one.
        base: the class ``model`` must subclass (e.g. ``CrackSegModule``).
        **overrides: constructor arguments given instead of the stored ones (e.g. ``threshold``).

    Raises:
        CheckpointError: missing / unreadable / unsafe file, unknown or mismatching class, or weights that do
            not fit the class.
    """
    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path)
    stored = checkpoint_model_class(checkpoint)
    if model is None and stored is None:
        raise CheckpointError(f"checkpoint {path} does not name its model class (no '_class_path' in its "
                              "hyper_parameters, no 'crackseg_class'): give the class, e.g. --model UNet or "
                              "--model crackseg.lightning_modules.SCNet")
    if model is None and not (str(stored).startswith("crackseg.") or str(stored).rpartition(".")[0] in sys.modules):
        raise CheckpointError(f"checkpoint {path} names the class {stored!r}, outside crackseg: importing it would "
                              "run its module's code; if you trust it, give it as --model")
    # Lightning's own class lookup (load_from_checkpoint on the base class) drops _class_path for classes whose
    # __init__ takes no **kwargs, CrackSegModule among them: the concrete class is resolved here.
    cls = model if isinstance(model, type) else import_class(model if model is not None else stored, base)
    if base is not None and not issubclass(cls, base):
        raise CheckpointError(f"{cls.__name__} is not a {base.__name__} subclass")
    check_model_class(checkpoint, cls, path)
    hparams = checkpoint.get("hyper_parameters") or {}
    kwargs = {**{k: v for k, v in WEIGHT_SOURCES.items() if k in hparams}, **overrides}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*offline EfficientNet-Lite0.*")
            module = cls.load_from_checkpoint(str(path), map_location="cpu", weights_only=True, **kwargs)
    except Exception as error:  # noqa: BLE001  (missing / unexpected keys, bad arguments all land here)
        reason = " ".join(str(error).split()) or type(error).__name__  # one line, keys named (missing / unexpected)
        raise CheckpointError(f"checkpoint {path} cannot be loaded as {cls.__name__} "
                              f"({type(error).__name__}: {reason[:300]})") from None
    return module


def checkpoint_model_class(checkpoint: dict[str, Any]) -> str | None:
    """The class path of the LightningModule a checkpoint was saved from, when it records one.

    crackseg modules store it as ``crackseg_class``; LightningCLI runs also store the configured
    ``class_path`` among the hyper-parameters (``_class_path``).
    """
    stored = checkpoint.get("crackseg_class") or checkpoint.get("hyper_parameters", {}).get("_class_path")
    return str(stored) if stored else None


def check_model_class(checkpoint: dict[str, Any], expected: type | str, path: str | os.PathLike | None) -> None:
    """Raise a :class:`CheckpointError` naming both classes if the checkpoint holds another model class.

    A class and its subclasses are compatible (a test-time subclass may load its parent's checkpoint).
    """
    held = checkpoint_model_class(checkpoint)
    if held is None:
        return
    wanted = expected if isinstance(expected, type) else _import(expected)
    held_cls = _import(held)
    if isinstance(wanted, type) and isinstance(held_cls, type):
        if issubclass(wanted, held_cls) or issubclass(held_cls, wanted):
            return
    elif held.rpartition(".")[2] == (expected.__name__ if isinstance(expected, type) else expected.rpartition(".")[2]):
        return
    wanted_name = f"{wanted.__module__}.{wanted.__qualname__}" if isinstance(wanted, type) else str(expected)
    where = f"checkpoint {path}" if path else "the checkpoint"
    raise CheckpointError(f"{where} holds a {held.rpartition('.')[2]} model ({held}), but the model is "
                          f"{wanted_name}: give the checkpoint's method (--model / --config it was trained with) "
                          "or a checkpoint of this method")


def check_finite_state(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise a :class:`FloatingPointError` if a floating-point tensor of the checkpoint's weights is NaN / Inf."""
    for key, value in checkpoint.get("state_dict", {}).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(
                f"refusing to write checkpoint {path}: weight {key!r} holds NaN or Inf (training diverged at epoch "
                f"{checkpoint.get('epoch', '?')}, global step {checkpoint.get('global_step', '?')}); the last good "
                "checkpoint is kept")


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, finite-only writes and ``weights_only=True`` loading.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temporary
    folder, so on a cluster (``/tmp`` local, checkpoints on a shared file system) the final move is a copy that
    a crash can cut short; writing the temporary file beside the target and renaming it is atomic on POSIX.
    Remote paths (``s3://`` ...) keep Lightning's behaviour.

    Args:
        allow_non_finite: write checkpoints whose weights hold NaN / Inf (off: such a save raises
            :class:`FloatingPointError` and the previous file is kept).
    """

    def __init__(self, allow_non_finite: bool = False) -> None:
        super().__init__()
        self.allow_non_finite = allow_non_finite

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if not self.allow_non_finite:
            check_finite_state(checkpoint, path)
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            directory = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(directory)
        except OSError:
            pass
        finally:
            os.close(directory)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load with ``weights_only=True`` unless the caller explicitly passed ``weights_only=False``."""
        if weights_only is False or "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        return load_checkpoint(path, map_location=map_location, require_state_dict=False)


class LastModelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``save_last`` meaning "the latest state", at every save point.

    Lightning 2.6 writes ``last.ckpt`` only when a top-k checkpoint was written at the same step; with ``monitor``
    and ``save_top_k: 1`` (every crackseg config) ``last.ckpt`` was then the *best* epoch, not the latest: ``--ckpt_path
    last`` resumed from an old epoch and König et al.'s "last epoch's weights" were not the last. This subclass
    writes ``last.ckpt`` after every epoch's (or validation's) top-k step as Lightning < 2.6 did. It adds no state:
    :class:`~crackseg.cli.CrackSegCLI` gives this class to every ``ModelCheckpoint`` a config names.
    """

    def _save_last_if_due(self, trainer: Trainer, at_train_epoch_end: bool) -> None:
        # save_last "link" keeps Lightning's meaning (a link to the newest top-k file); skipped: saved at this step
        if self.save_last is not True or self._should_skip_saving_checkpoint(trainer):
            return
        if self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_due(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_due(trainer, at_train_epoch_end=False)


def _last_checkpoint_path(trainer: Trainer) -> Path:
    """``last.ckpt`` in the first ModelCheckpoint's folder (where ``--ckpt_path last`` looks), else in the root dir."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


class SignalCheckpoint(Callback):
    """Save ``last.ckpt`` and stop when the process receives SIGTERM or SIGUSR1 during training.

    The signal only sets a flag (nothing is written inside a signal handler); after the training step in
    progress, the checkpoint is written (atomically, with :class:`SafeCheckpointIO`) to ``last.ckpt`` in the
    ModelCheckpoint folder and the run exits with status 128 + signal number, so ``--ckpt_path last`` resumes
    it. Lightning's own handlers (SLURM requeue, SIGTERM forwarding to DDP workers) still run. A checkpoint
    written mid-epoch resumes the epoch at the right step but restarts its data order (Lightning's loaders are
    not resumable mid-epoch); an epoch-boundary checkpoint resumes exactly (see :class:`RandomStateCheckpoint`).

    Args:
        signals: names of the signals to handle.
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after Lightning registered its handlers (Trainer._run), which are chained
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.signals:
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore_handlers(self) -> None:
        for signum, previous in self._previous.items():
            if previous is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signum, previous)
        self._previous = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        received = self.received is not None
        if trainer.world_size > 1:  # every rank must take part in the save
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        path = _last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        rank_zero_info(f"received {signal.Signals(signum).name}: saved {path} at epoch {trainer.current_epoch}, "
                       f"global step {trainer.global_step}; resume with --ckpt_path last (or {path})")
        raise SIGTERMException(128 + int(signum))


class RandomStateCheckpoint(Callback):
    """Keep the torch / CUDA / NumPy / Python random states in checkpoints and restore them on resume.

    Lightning does not store them, so without this a resumed run draws the next epoch's shuffle and
    augmentations from the freshly seeded state instead of where the interrupted run was. The state is
    applied at ``on_fit_start`` of single-process runs (all DDP ranks would otherwise get rank 0's state).
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(gauss)],
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._loaded = self._loaded, None
        if state is None or trainer.world_size > 1:
            return
        torch.set_rng_state(state["torch"].cpu())
        name, keys, position, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
