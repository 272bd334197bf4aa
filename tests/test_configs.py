"""The configs say only what differs from the classes' defaults, and run paths follow ``default_root_dir``."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

import crackseg.callbacks
import crackseg.datamodules
import crackseg.lightning_modules
from crackseg.cli import run_name

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def _defaults(cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):  # a subclass's default wins
        if "__init__" in vars(klass):
            found.update({name: p.default for name, p in inspect.signature(klass.__init__).parameters.items()
                          if p.default is not inspect.Parameter.empty})
    return found


#: callback classes configs name by short class_path
CALLBACKS = {"ModelCheckpoint": ModelCheckpoint, **{name: getattr(crackseg.callbacks, name)
                                                     for name in crackseg.callbacks.__all__}}


def _complete(cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """A callback's arguments with its defaults filled in (tuples as lists, as YAML gives them)."""
    values = {**_defaults(cls), **args}
    return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


def _equal(value: Any, default: Any) -> bool:
    if isinstance(default, tuple):
        default = list(default)
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return math.isclose(float(value), float(default), rel_tol=1e-12)
    return value == default


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_restates_no_default_and_no_derived_path(path: Path) -> None:
    config = yaml.safe_load(path.read_text()) or {}
    restated = []
    fragment = "class_path" not in (config.get("data") or {})
    for section, module in (("model", crackseg.lightning_modules), ("data", crackseg.datamodules)):
        block = config.get(section)
        # a fragment (no data class: it follows a dataset config) may set a default to undo that config's value
        if not isinstance(block, dict) or "class_path" not in block or fragment:
            continue
        cls = getattr(module, block["class_path"].rpartition(".")[2])
        defaults = _defaults(cls)
        restated += [f"{section}.init_args.{key}: {value!r}" for key, value in (block.get("init_args") or {}).items()
                     if key in defaults and _equal(value, defaults[key])]
    method = (config.get("model") or {}).get("class_path")
    if method:
        defaults = [(cls, _complete(cls, args)) for cls, args in
                    getattr(crackseg.lightning_modules, method.rpartition(".")[2]).default_callbacks()]
        for callback in (config.get("trainer") or {}).get("callbacks") or []:
            cls = CALLBACKS[callback["class_path"].rpartition(".")[2]]
            if (cls, _complete(cls, callback.get("init_args") or {})) in defaults:
                restated.append(f"trainer.callbacks: {callback['class_path']} (the method's default callback)")
    assert not restated, f"{path.name} restates class defaults (the docstrings carry them): {restated}"
    derived_root = f"runs/{run_name([path])}"
    root = (config.get("trainer") or {}).get("default_root_dir")
    assert root != derived_root, f"{path.name}: trainer.default_root_dir {root} is the name derived from the config"
    root = root or derived_root
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        init = callback.get("init_args") or {}
        derived = {"dirpath": f"{root}/checkpoints", "output_dir": f"{root}/predictions"}
        assert not any(init.get(key) == value for key, value in derived.items()), \
            f"{path.name}: {callback['class_path']} repeats a path derived from trainer.default_root_dir"


@pytest.mark.parametrize("method", ["msflow", "skipae", "dfr"])
def test_paper_fragment_composes_after_the_dataset_config(method: str, workdir: Path) -> None:
    """``<method>/paper.yaml`` after ``<method>/magnetic_tile.yaml``: the paper's extractor, input and split."""
    from fakes import make_magnetic_tile

    from crackseg.cli import main

    folder = REPO / "configs" / method
    paper = yaml.safe_load((folder / "paper.yaml").read_text())
    root = make_magnetic_tile(workdir / "mt", n_free=8)
    cli = main(["fit", "--config", str(folder / "magnetic_tile.yaml"), "--config", str(folder / "paper.yaml"),
                "--model.init_args.weights", "null",  # the fragment asks the hub, unreachable here
                "--data.init_args.root", str(root), "--data.init_args.image_size", "[64, 64]",
                "--data.init_args.batch_size", "2", "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
                "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.state.finished
    for key, value in paper["model"]["init_args"].items():
        got = cli.model.hparams[key]
        if key != "weights":
            assert (list(got) if isinstance(got, (list, tuple)) else got) == value, key
    assert cli.datamodule.val_fraction == paper["data"]["init_args"]["val_fraction"]
    if method == "dfr":
        assert cli.model.net.extractor.channels == 3456  # VGG19 relu1_1 … relu4_4


def test_configs_stay_short() -> None:
    """Issue budget: every config at most 40 non-comment lines, ``configs/`` at most 1,800 lines in all."""
    total = 0
    for path in CONFIGS:
        lines = path.read_text().splitlines()
        total += len(lines)
        body = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
        assert len(body) <= 40, f"{path.relative_to(REPO)}: {len(body)} non-comment lines"
    assert total <= 1800, f"configs/ holds {total} lines"
