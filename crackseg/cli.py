"""The ``crackseg`` command: a thin :class:`~lightning.pytorch.cli.LightningCLI`.

``crackseg fit|validate|test|predict --config configs/<method>/<dataset>.yaml``; configs name the
model and data classes by short ``class_path`` (``class_path: DeepCrackLiu``) and can be composed with
repeated ``--config`` (trainer and logger fragments). ``crackseg fit --help`` lists every option;
``crackseg fit --model DeepCrackLiu --model.help DeepCrackLiu`` shows one class's arguments.

``crackseg pseudo-label --ckpt_path classifier.ckpt --data ... --out DIR`` (not a Lightning subcommand: it is
dispatched before LightningCLI parses) writes a pseudo-labelled dataset (:mod:`crackseg.pseudolabels`).
``crackseg export --ckpt_path model.ckpt --out model.onnx`` (dispatched likewise) writes an ONNX graph
(:mod:`crackseg.export`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO

import crackseg
import crackseg.callbacks  # noqa: F401  (registers callbacks for short class paths)
from crackseg.callbacks import ThresholdCalibration
from crackseg.checkpoint import (
    CheckpointError,
    LastModelCheckpoint,
    RandomStateCheckpoint,
    SafeCheckpointIO,
    SignalCheckpoint,
    check_model_class,
    load_checkpoint,
)
from crackseg.datamodules import CrackDataModule
from crackseg.lightning_modules import CrackSegModule


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes ``config.yaml`` to the log folder (Lightning's behaviour) and gives the loggers the resolved config.

    Every logger receives the whole resolved config (trainer, model, data, callbacks, seed) through
    ``log_hyperparams`` (W&B: the run's config panel, filterable in the project table); W&B also gets the
    YAML itself as ``crackseg_config.yaml`` among the run's files (re-runnable with ``crackseg fit --config``).
    """

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        values = yaml.safe_load(text) or {}
        values.pop("config", None)  # the --config paths, not settings
        for logger in trainer.loggers:
            logger.log_hyperparams(values)
            if isinstance(logger, WandbLogger):  # files in the run folder are uploaded with the run
                (Path(logger.experiment.dir) / "crackseg_config.yaml").write_text(text)


class CrackSegCLI(LightningCLI):
    """LightningCLI with crackseg's base classes in subclass mode, a ``--version`` flag and the resolved config
    logged to the loggers (:class:`LoggerSaveConfigCallback`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", LoggerSaveConfigCallback)
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> Any:
        parser = super().init_parser(**kwargs)
        if not any("--version" in action.option_strings for action in parser._actions):
            parser.add_argument("--version", action="version", version=f"crackseg {crackseg.__version__}")
        return parser

    def before_instantiate_classes(self) -> None:
        """A run without ``trainer.default_root_dir`` gets ``runs/<name>`` from its configs (:func:`run_name`),
        written into the config so the saved ``config.yaml`` re-runs in the same folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("default_root_dir") is None:
            name = run_name([str(path) for path in config.get("config") or []])
            if name:
                trainer["default_root_dir"] = os.path.join("runs", name)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--default_callbacks", type=bool, default=True,
            help="add the method's own callbacks (its default_callbacks: best / last checkpoint, threshold "
                 "calibration, map panels, prediction files) of each kind trainer.callbacks does not name; "
                 "false: only the configured callbacks")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The trainer, with the method's callbacks and crackseg's reliability defaults added to the config's.

        :func:`method_callbacks` (unless ``--default_callbacks false``);

        :class:`~crackseg.checkpoint.SafeCheckpointIO` (atomic, finite-only writes; ``weights_only`` loading)
        unless a CheckpointIO plugin is configured; :class:`~crackseg.checkpoint.SignalCheckpoint` (SIGTERM /
        SIGUSR1 save ``last.ckpt``) unless checkpointing is off; :class:`~crackseg.checkpoint.RandomStateCheckpoint`
        (exact resume from epoch-boundary checkpoints); every plain ``ModelCheckpoint`` becomes a
        :class:`~crackseg.checkpoint.LastModelCheckpoint` (``last.ckpt`` = the latest epoch, as before Lightning 2.6).
        """
        config = self._get(self.config_init, "trainer", default={})
        plugins = kwargs.get("plugins", config.get("plugins"))
        plugins = _as_list(plugins)
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(SafeCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = kwargs.get("callbacks", config.get("callbacks"))
        callbacks = _as_list(callbacks)
        checkpointing = kwargs.get("enable_checkpointing", config.get("enable_checkpointing")) is not False
        if self._get(self.config, "default_callbacks", default=True) and isinstance(self.model, CrackSegModule):
            callbacks += method_callbacks(type(self.model), callbacks, checkpointing)
        defaults = [RandomStateCheckpoint()]
        if checkpointing:
            defaults.append(SignalCheckpoint())
        callbacks += [c for c in defaults if not any(type(c) is type(given) for given in callbacks)]
        for callback in callbacks:
            if type(callback) is ModelCheckpoint:  # same state, methods that keep last.ckpt the latest
                callback.__class__ = LastModelCheckpoint
        kwargs["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        derive_run_paths(trainer)
        return trainer

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything runs: it exists, loads with ``weights_only=True`` and holds
        the configured model class (Lightning would otherwise switch to the checkpoint's class or fail on its
        weights)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and str(ckpt_path) not in ("last", "best", "hpc") and "://" not in str(ckpt_path) \
                and not str(ckpt_path).startswith("registry"):
            if not Path(ckpt_path).expanduser().is_file():
                raise CheckpointError(f"checkpoint not found: {ckpt_path} (--ckpt_path)")
            checkpoint = load_checkpoint(ckpt_path)
            model = self.config[subcommand].get("model")
            class_path = getattr(model, "class_path", None) if model is not None else None
            if class_path:
                check_model_class(checkpoint, class_path, ckpt_path)
        super()._parse_ckpt_path()

    def predict(self, **kwargs: Any) -> None:
        """Predict without keeping every prediction in memory (the writer callback saves them)."""
        kwargs["return_predictions"] = False
        self.trainer.predict(**kwargs)


def run_name(configs: Sequence[str | os.PathLike]) -> str | None:
    """The run's name from its ``--config`` files: ``<method folder>_<stem>`` of the first one that sets the
    model or the data (``configs/scnet/deepcrack.yaml``: ``scnet_deepcrack``; a file outside a ``configs``
    folder: its stem), then ``_<stem>`` of each later such fragment (``+ configs/scnet/ablations/hcnn_baseline.yaml``:
    ``scnet_deepcrack_hcnn_baseline``). Trainer and logger fragments name nothing; None without a naming config.
    Checkpoints (``<default_root_dir>/checkpoints``) and predictions follow, so every composition of fragments
    has its own folder."""
    parts: list[str] = []
    for config in configs:
        path = Path(config)
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # the parser has read it already; a file it cannot re-read names nothing
        if not isinstance(content, dict) or not ({"model", "data"} & set(content)):
            continue
        folders = path.resolve().parent.parts
        at = max((i for i, folder in enumerate(folders[:-1]) if folder == "configs"), default=None)
        method = folders[at + 1] if at is not None else None
        parts.append(f"{method}_{path.stem}" if not parts and method else path.stem)
    return "_".join(parts) or None


#: callback kinds of which a configured callback replaces the method's default (any other: its own class)
CALLBACK_KINDS: tuple[type, ...] = (ModelCheckpoint, ThresholdCalibration)


def callback_kind(cls: type) -> type:
    """The kind a callback class counts as when the method's defaults are completed: checkpointing,
    threshold calibration, or its own class (map logging, prediction writing, ...)."""
    return next((kind for kind in CALLBACK_KINDS if issubclass(cls, kind)), cls)


def method_callbacks(method: type[CrackSegModule], configured: Sequence[Any], checkpointing: bool = True) -> list:
    """The method's :meth:`~crackseg.lightning_modules.CrackSegModule.default_callbacks` of every kind the
    configured callbacks do not hold, instantiated (no checkpoint callback when checkpointing is off)."""
    given = {callback_kind(type(callback)) for callback in configured}
    return [cls(**arguments) for cls, arguments in method.default_callbacks()
            if callback_kind(cls) not in given and (checkpointing or not issubclass(cls, ModelCheckpoint))]


def derive_run_paths(trainer: Any) -> None:
    """Run paths follow ``trainer.default_root_dir`` (the run's folder, one line per config): a ModelCheckpoint
    without ``dirpath`` writes to ``<default_root_dir>/checkpoints`` (Lightning would pick the logger's version
    folder), so ``runs/<name>/checkpoints/best.ckpt`` is where a config's checkpoint always is."""
    root = Path(trainer.default_root_dir)
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = os.path.realpath(root / "checkpoints")


def _as_list(value: Any) -> list:
    """A trainer option that may be None, one object or a list, as a new list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


DESCRIPTION = ("crackseg: crack and surface-defect segmentation and anomaly detection. Besides the Lightning "
               "subcommands below: `crackseg pseudo-label --help` (weakly supervised pseudo labels from a crack "
               "classifier, written as a DeepCrack-layout dataset); `crackseg export --help` (a trained model as ONNX, "
               "with its normalisation and thresholds).")


def main(args: Sequence[str] | None = None) -> CrackSegCLI | dict[str, Any] | None:
    """Run the CLI; ``args`` (e.g. ``["fit", "--config", "cfg.yaml"]``) replaces ``sys.argv[1:]``.

    Returns the :class:`CrackSegCLI` (``pseudo-label`` / ``export``: its report).
    Without ``args`` (the ``crackseg`` console script, which hands the return value to ``sys.exit``) it returns
    None, so that a successful run exits with status 0 instead of printing the object and exiting with 1.
    """
    argv = list(args) if args is not None else sys.argv[1:]
    if argv and argv[0] == "pseudo-label":
        from crackseg.pseudolabels.command import main as pseudo_label

        report = pseudo_label(argv[1:])
        return report if args is not None else None
    if argv and argv[0] == "export":
        from crackseg.export import main as export

        report = export(argv[1:])
        return report if args is not None else None
    cli = CrackSegCLI(
        CrackSegModule,
        CrackDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=list(args) if args is not None else None,
        parser_kwargs={"description": DESCRIPTION},
    )
    return cli if args is not None else None


if __name__ == "__main__":
    main()
