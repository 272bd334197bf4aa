"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fakes import SHARED_DATA


@pytest.fixture
def shared_data() -> Callable[..., Path]:
    """``shared_data("magnetic_tile")``: the folder of a real data sample in ``../shared/data``; the test is
    skipped when it is absent (a user's clone has no ``../shared``)."""

    def folder(*parts: str) -> Path:
        path = SHARED_DATA.joinpath(*parts)
        if not path.is_dir():
            pytest.skip(f"real data sample not available: {path}")
        return path

    return folder


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: faster for tiny networks, and immune to OpenMP spinning on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path`` as the working directory (configs write their ``runs/`` there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def restore_deterministic_algorithms() -> Iterator[None]:
    """Undo ``torch.use_deterministic_algorithms`` set by a test's ``Trainer(deterministic=True)`` (a process-wide flag
    Lightning never resets), so no later test runs under it by accident."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
