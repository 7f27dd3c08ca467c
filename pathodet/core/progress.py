"""The training progress bar: epoch, step, loss, tiles per second and ETA, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """One bar over all steps of the run; a no-op when ``enabled`` is False."""

    def __init__(self, epochs: int, batches_per_epoch: int, enabled: bool = True) -> None:
        self.epochs, self.per_epoch, self.enabled = epochs, batches_per_epoch, enabled
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.1f} tiles/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task = self.bar.add_task(
            "train", total=epochs * batches_per_epoch, epoch=0, epochs=epochs, loss=float("nan"),
            rate=0.0,
        )  # fmt: skip

    def __enter__(self) -> TrainProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start_epoch(self, epoch: int, batch: int) -> None:
        """Position the bar at batch ``batch`` of epoch ``epoch`` (0-based; resumed runs)."""
        self.bar.update(self.task, completed=epoch * self.per_epoch + batch, epoch=epoch + 1)

    def advance(self, loss: float, rate: float) -> None:
        self.bar.update(self.task, advance=1, loss=loss, rate=rate)
