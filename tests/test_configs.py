"""The configs say only what differs from the classes' defaults, and run paths follow ``default_root_dir``."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

import crackseg.datamodules
import crackseg.lightning_modules

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def _defaults(cls: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):  # a subclass's default wins
        if "__init__" in vars(klass):
            found.update({name: p.default for name, p in inspect.signature(klass.__init__).parameters.items()
                          if p.default is not inspect.Parameter.empty})
    return found


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
    for section, module in (("model", crackseg.lightning_modules), ("data", crackseg.datamodules)):
        block = config.get(section)
        if not isinstance(block, dict) or "class_path" not in block:
            continue
        cls = getattr(module, block["class_path"].rpartition(".")[2])
        defaults = _defaults(cls)
        restated += [f"{section}.init_args.{key}: {value!r}" for key, value in (block.get("init_args") or {}).items()
                     if key in defaults and _equal(value, defaults[key])]
    assert not restated, f"{path.name} restates class defaults (the docstrings carry them): {restated}"
    root = (config.get("trainer") or {}).get("default_root_dir")
    for callback in (config.get("trainer") or {}).get("callbacks") or []:
        init = callback.get("init_args") or {}
        derived = {"dirpath": f"{root}/checkpoints", "output_dir": f"{root}/predictions"}
        assert not any(init.get(key) == value for key, value in derived.items()), \
            f"{path.name}: {callback['class_path']} repeats a path derived from trainer.default_root_dir"
