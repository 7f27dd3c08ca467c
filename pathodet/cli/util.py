"""Helpers shared by the command modules: one-line errors and progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pathodet.training.config import ConfigError


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"pathodet: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Report the library's user-facing errors as one line, exit code 2."""
    from pathodet.data.digestpath import DatasetError

    try:
        yield
    except (DatasetError, ConfigError, FileNotFoundError, ValueError) as exc:  # incl. CSV/ckpt
        fail(str(exc))


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr with ETA; yields ``update(done, total)``."""
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    from rich.console import Console

    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def slide_progress(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """One progress bar per slide on stderr; yields ``update(slide, done, total)`` (windows)."""
    if not enabled:
        yield lambda name, done, total: None
        return
    from rich.console import Console

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("windows"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as bar:
        tasks: dict[str, int] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done, total=total)

        yield update
