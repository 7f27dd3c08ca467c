"""The demo's progress display: one bar per stage and an overall bar with the ETA.

Each stage has a planned duration (nominal seconds on the development machine). The
overall bar advances by the planned seconds of finished stages plus the finished fraction of
the running one, so its ETA extrapolates from how fast this machine is going compared with
the plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pathodet.core.progress import Bars


class DemoProgress:
    """Bars on stderr (:class:`~pathodet.core.progress.Bars`); ``enabled=False`` draws nothing (tests) but still times the stages.

    Args:
        stages: ``(key, label, planned_seconds)`` in running order.
    """

    def __init__(self, stages: list[tuple[str, str, float]], enabled: bool = True) -> None:
        self.planned = {key: seconds for key, _, seconds in stages}
        self.labels = {key: label for key, label, _ in stages}
        self.enabled = enabled
        self.total = sum(self.planned.values())
        self.bar = Bars(enabled)
        self.bar.add("whole demo", total=round(self.total), note="s plan")
        for _, label, _ in stages:
            self.bar.add(f"  {label}", start=False)
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
        name = f"  {self.labels[key]}"
        self.bar.start(name)
        self.bar.update(name, note=unit)

        def update(done: int, total: int) -> None:
            self.bar.update(name, done, max(total, 1))
            self._overall(key, done / max(total, 1))

        return update

    def finish(self, key: str, note: str = "") -> float:
        """Mark stage ``key`` done and print a line for it (also where the bars cannot be
        redrawn, e.g. into a log file); returns its wall time in seconds."""
        self.bar.finish(f"  {self.labels[key]}")
        self.seconds[key] = time.perf_counter() - self._started.get(key, time.perf_counter())
        self.finished[key] = self.planned[key]
        self._overall(key, 0.0)
        line = f"done: {self.labels[key]} in {self.seconds[key]:.0f} s"
        self.bar.print(line + (f" ({note})" if note else ""))
        return self.seconds[key]

    def _overall(self, key: str, fraction: float) -> None:
        done = sum(self.finished.values())
        if key not in self.finished:
            done += self.planned[key] * min(max(fraction, 0.0), 1.0)
        self.bar.update("whole demo", min(round(done), round(self.total)))
