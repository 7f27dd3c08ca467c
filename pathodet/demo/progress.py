"""The demo's progress display: one bar per stage and an overall bar with the ETA.

Each stage has a planned duration (nominal seconds on the development machine). The
overall bar advances by the planned seconds of finished stages plus the finished fraction of
the running one, so its ETA extrapolates from how fast this machine is going compared with
the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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


class DemoProgress:
    """Bars on stderr; ``enabled=False`` draws nothing (tests) but still times the stages.

    Args:
        stages: ``(key, label, planned_seconds)`` in running order.
    """

    def __init__(self, stages: list[tuple[str, str, float]], enabled: bool = True) -> None:
        self.planned = {key: seconds for key, _, seconds in stages}
        self.labels = {key: label for key, label, _ in stages}
        self.enabled = enabled
        self.total = sum(self.planned.values())
        self.bar = Progress(
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]:<7}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.overall = self.bar.add_task("whole demo", total=round(self.total), unit="s plan")
        self.tasks: dict[str, TaskID] = {
            key: self.bar.add_task(f"  {label}", total=None, unit="", start=False)
            for key, label, _ in stages
        }
        self.finished: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    def __enter__(self) -> DemoProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start(self, key: str, unit: str) -> Callable[[int, int], None]:
        """Start stage ``key``; returns ``update(done, total)`` counted in ``unit``."""
        self._started[key] = time.perf_counter()
        task = self.tasks[key]
        self.bar.start_task(task)
        self.bar.update(task, unit=unit)

        def update(done: int, total: int) -> None:
            self.bar.update(task, completed=done, total=max(total, 1))
            self._overall(key, done / max(total, 1))

        return update

    def finish(self, key: str, note: str = "") -> float:
        """Mark stage ``key`` done and print a line for it (also where the bars cannot be
        redrawn, e.g. into a log file); returns its wall time in seconds."""
        task = self.tasks[key]
        total = self.bar.tasks[task].total or 1
        self.bar.update(task, completed=total, total=total)
        self.bar.stop_task(task)
        self.seconds[key] = time.perf_counter() - self._started.get(key, time.perf_counter())
        self.finished[key] = self.planned[key]
        self._overall(key, 0.0)
        if self.enabled:
            line = f"done: {self.labels[key]} in {self.seconds[key]:.0f} s"
            self.bar.console.print(line + (f" ({note})" if note else ""), highlight=False)
        return self.seconds[key]

    def _overall(self, key: str, fraction: float) -> None:
        done = sum(self.finished.values())
        if key not in self.finished:
            done += self.planned[key] * min(max(fraction, 0.0), 1.0)
        self.bar.update(self.overall, completed=min(round(done), round(self.total)))
