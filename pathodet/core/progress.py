"""Progress bars on stderr, the one implementation every command draws with.

:class:`Bars` keeps one bar per named task (a stage, a slide, the training run), each with
``done / total``, a free-text note (loss, tiles per second, units), elapsed time and ETA.
With ``enabled=False`` nothing is drawn (tests, non-main ranks) and updates cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Bars:
    """Named progress bars; use as a context manager (the bars live inside it)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Bars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def add(
        self, name: str, total: float | None = None, note: str = "", start: bool = True
    ) -> None:
        """A bar called ``name`` (its label), shown in the order added; no-op if it exists."""
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, note=note, start=start)

    def update(
        self,
        name: str,
        done: float | None = None,
        total: float | None = None,
        advance: float | None = None,
        note: str | None = None,
    ) -> None:
        """Set bar ``name`` to ``done`` of ``total`` (or ``advance`` it); adds it if new."""
        self.add(name, total)
        fields: dict = {}
        if note is not None:
            fields["note"] = note
        self.progress.update(self.tasks[name], completed=done, total=total, advance=advance,
                             **fields)  # fmt: skip

    def start(self, name: str) -> None:
        self.progress.start_task(self.tasks[name])

    def finish(self, name: str) -> None:
        """Fill bar ``name`` and stop its clock."""
        task = self.tasks[name]
        total = self.progress.tasks[task].total or 1
        self.progress.update(task, completed=total, total=total)
        self.progress.stop_task(task)

    def print(self, line: str) -> None:
        """A line above the bars (kept in logs, where bars cannot be redrawn)."""
        if self.enabled:
            self.progress.console.print(line, highlight=False)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """Bars for a command; yields ``update(what, done, total)``, one bar per ``what``
    (``"images"``, a slide's name, ...)."""
    with Bars(enabled) as bars:
        yield lambda what, done, total: bars.update(what, done, total)
