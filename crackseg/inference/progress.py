"""A rich progress bar for long inner loops (the tiles of one large image) inside a Lightning run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _noop(count: int) -> None:
    """Progress sink when no bar is shown."""


@contextmanager
def inner_progress(trainer: Any, total: int, description: str) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable that moves a progress bar of ``total`` steps.

    Shown only when the trainer shows a progress bar (``trainer.enable_progress_bar``, so tests and
    ``--trainer.enable_progress_bar false`` stay quiet) and ``total`` > 1: as an extra task of Lightning's
    :class:`~lightning.pytorch.callbacks.RichProgressBar` when that is the trainer's bar, otherwise as a
    transient rich bar of its own (removed when done).
    """
    bar = getattr(trainer, "progress_bar_callback", None) if trainer is not None else None
    if bar is None or total <= 1 or not getattr(bar, "is_enabled", True):
        yield _noop
        return
    if isinstance(bar, RichProgressBar) and bar.progress is not None:
        progress = bar.progress
        task = progress.add_task(description, total=total)
        try:
            yield lambda n: progress.update(task, advance=n)
        finally:
            progress.remove_task(task)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.update(task, advance=n)
