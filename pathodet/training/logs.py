"""The metrics log of a run: ``metrics.csv`` and TensorBoard event files under ``tb/``.

Rows are ``step, epoch, split, name, value`` (long format: train and validation metrics in
one file, any set of names). A resumed run first drops the rows logged after the
checkpoint it resumes from, so nothing is duplicated; TensorBoard is told the same with
``purge_step``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pathodet.core.io import atomic_write_text

HEADER = ["step", "epoch", "split", "name", "value"]
EPOCH_END_SPLITS = ("val", "mining")
"""Rows logged once at the end of an epoch (validation, co-mining counts)."""


class MetricsLog:
    """Append-only metrics of one run (rank 0 only)."""

    def __init__(
        self,
        run_dir: Path,
        resume_step: int | None = None,
        tensorboard: bool = True,
        redo_val: bool = False,
    ):
        """Open the log; ``resume_step`` drops rows after it (and, with ``redo_val``, the
        epoch-end rows at it, which the resumed run logs again)."""
        self.path = Path(run_dir) / "metrics.csv"
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step, redo_val)
        elif not self.path.exists() or resume_step is None:
            atomic_write_text(self.path, ",".join(HEADER) + "\n")
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events at steps after the checkpoint are hidden (the resumed run redoes them)
            purge = None if resume_step is None else resume_step + 1
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=purge)

    def _truncate_after(self, step: int, redo_val: bool) -> None:
        with self.path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        kept = [
            r for r in rows[1:]
            if len(r) == len(HEADER) and (int(r[0]) < step or (int(r[0]) == step and not (
                redo_val and r[2] in EPOCH_END_SPLITS)))
        ]  # fmt: skip
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([HEADER, *kept])
        atomic_write_text(self.path, buf.getvalue())

    def log(self, step: int, epoch: int, split: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._csv.writerow([step, epoch, split, name, f"{value:.6g}"])
            if self.tb is not None:
                self.tb.add_scalar(f"{split}/{name}", value, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """Rows of ``metrics.csv`` as dicts with typed ``step``, ``epoch`` and ``value``."""
    with (Path(run_dir) / "metrics.csv").open(encoding="utf-8", newline="") as f:
        return [
            {**r, "step": int(r["step"]), "epoch": int(r["epoch"]), "value": float(r["value"])}
            for r in csv.DictReader(f)
        ]
