"""The predictions CSV: ``image,x1,y1,x2,y2,score`` (file name, image pixels, score in [0, 1]).

What ``pathodet predict`` writes and ``pathodet evaluate`` reads. Every row is checked; a
bad row is an error naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text

COLUMNS = ("image", "x1", "y1", "x2", "y2", "score")


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names file and line."""


@dataclass
class ImagePredictions:
    """Detections of one image: ``boxes (N, 4)`` float64 pixels, ``scores (N,)`` in [0, 1]."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


def read_predictions(
    path: str | os.PathLike[str], images: Collection[str] | None = None
) -> dict[str, ImagePredictions]:
    """Predictions per image file name.

    Args:
        path: the CSV file.
        images: when given, the image file names the predictions may name (the dataset
            they are evaluated on); a row naming another image is an error.

    Raises:
        PredictionsError: unreadable or empty file, missing columns (named), a row with the
            wrong number of fields, a non-number, NaN/inf, negative or reversed
            coordinates, a score outside [0, 1], or an image not in ``images``. The message
            names the file and, for a row, its line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{path}: cannot read predictions: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames
    if not fields:
        raise PredictionsError(f"{path}: empty file, no header line; expected {','.join(COLUMNS)}")
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
        raise PredictionsError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}, "
            f"found {','.join(fields)}"
        )
    known = None if images is None else set(images)
    rows: dict[str, list[list[float]]] = {}
    for row in reader:
        line = reader.line_num  # physical line: blank lines and quoted newlines count
        if None in row or None in row.values():  # more / fewer fields than the header
            n = len(fields) + len(row.get(None) or []) - sum(v is None for v in row.values())
            raise PredictionsError(f"{path}:{line}: {n} field(s) but the header has {len(fields)}")
        name = (row["image"] or "").strip()
        if not name:
            raise PredictionsError(f"{path}:{line}: empty image name")
        if known is not None and name not in known:
            raise PredictionsError(
                f"{path}:{line}: image {name!r} is not in the dataset evaluated "
                f"({len(known)} image(s))"
            )
        try:
            vals = [float(row[c]) for c in COLUMNS[1:]]
        except (TypeError, ValueError):
            raise PredictionsError(f"{path}:{line}: x1,y1,x2,y2,score must be numbers") from None
        if not all(math.isfinite(v) for v in vals):
            raise PredictionsError(f"{path}:{line}: NaN or infinite value")
        x1, y1, x2, y2, score = vals
        if min(x1, y1) < 0:
            raise PredictionsError(f"{path}:{line}: negative coordinate")
        if x2 <= x1 or y2 <= y1:
            raise PredictionsError(f"{path}:{line}: box with x2 <= x1 or y2 <= y1")
        if not 0.0 <= score <= 1.0:
            raise PredictionsError(f"{path}:{line}: score {score} outside [0, 1]")
        rows.setdefault(name, []).append(vals)
    out = {}
    for name, vals in rows.items():
        a = np.asarray(vals, np.float64)
        out[name] = ImagePredictions(a[:, :4], a[:, 4])
    return out


def predictions_csv(preds: dict[str, ImagePredictions]) -> str:
    """CSV text of ``preds`` (images in the given order, boxes by descending score)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for name, p in preds.items():
        for i in np.argsort(-p.scores, kind="stable"):
            x1, y1, x2, y2 = (f"{v:.2f}" for v in p.boxes[i])
            w.writerow([name, x1, y1, x2, y2, f"{p.scores[i]:.6f}"])
    return buf.getvalue()


def write_predictions(path: str | os.PathLike[str], preds: dict[str, ImagePredictions]) -> Path:
    return atomic_write_text(path, predictions_csv(preds))
