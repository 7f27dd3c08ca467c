"""The predictions CSV: ``image,x1,y1,x2,y2,score`` (file name, image pixels, score in [0, 1]).

What ``pathodet predict`` writes and ``pathodet evaluate`` reads. Every row is checked; a
bad row is an error naming the file, the line and the problem.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.data.io import atomic_write_text

COLUMNS = ("image", "x1", "y1", "x2", "y2", "score")


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names file and line."""


@dataclass
class ImagePredictions:
    """Detections of one image: ``boxes (N, 4)`` float64 pixels, ``scores (N,)`` in [0, 1]."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


def read_predictions(path: str | os.PathLike[str]) -> dict[str, ImagePredictions]:
    """Predictions per image file name.

    Raises:
        PredictionsError: unreadable file, missing columns, or a row with a non-number,
            NaN/inf, negative or reversed coordinates, or a score outside [0, 1].
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictionsError(f"{path}: cannot read predictions: {exc}") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise PredictionsError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}"
        )
    rows: dict[str, list[list[float]]] = {}
    for line, row in enumerate(reader, start=2):
        name = (row["image"] or "").strip()
        if not name:
            raise PredictionsError(f"{path}:{line}: empty image name")
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
