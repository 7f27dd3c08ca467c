"""The predictions CSV: ``image,x1,y1,x2,y2,score`` (file name, image pixels, score in [0, 1]).

What ``pathodet predict`` writes and ``pathodet evaluate`` reads. Every row is checked; a
bad row is an error naming the file, the line and the problem.

The file holds no image size, so the reader checks each box on its own (finite, ``x1 < x2``,
``y1 < y2``); a box overhanging its image, on any side, is handled by
:func:`fit_predictions` once the sizes are known (evaluation reads them from the
annotations): clipped and counted when it overhangs a little, a problem naming the line
when it lies outside (:mod:`pathodet.data.boxes`, the rule for every reader).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text
from pathodet.data.boxes import fit_to_image, writable
from pathodet.data.digestpath import Problem

COLUMNS = ("image", "x1", "y1", "x2", "y2", "score")
COORD_DECIMALS = 2
"""Digits written after the point of a coordinate: 0.01 px, far below a cell (17-188 px)."""


class PredictionsError(ValueError):
    """A predictions file that cannot be used; the message names file and line."""


@dataclass
class ImagePredictions:
    """Detections of one image: ``boxes (N, 4)`` float64 pixels, ``scores (N,)`` in [0, 1];
    ``lines (N,)``: the CSV line of each box when read from a file, else ``None``."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lines: np.ndarray | None = None


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
            wrong number of fields, a non-number, NaN/inf, reversed coordinates (or zero
            width/height), a score outside [0, 1], or an image not in ``images``. The
            message names the file and, for a row, its line. Coordinates outside the image
            (negative ones too) are :func:`fit_predictions`'s to judge.
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
    lines: dict[str, list[int]] = {}
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
        if x2 <= x1 or y2 <= y1:
            raise PredictionsError(f"{path}:{line}: box with x2 <= x1 or y2 <= y1")
        if not 0.0 <= score <= 1.0:
            raise PredictionsError(f"{path}:{line}: score {score} outside [0, 1]")
        rows.setdefault(name, []).append(vals)
        lines.setdefault(name, []).append(line)
    out = {}
    for name, vals in rows.items():
        a = np.asarray(vals, np.float64)
        out[name] = ImagePredictions(a[:, :4], a[:, 4], np.asarray(lines[name]))
    return out


def fit_predictions(
    preds: Mapping[str, ImagePredictions],
    sizes: Mapping[str, tuple[int, int]],
    source: str | os.PathLike[str],
) -> tuple[dict[str, ImagePredictions], int, list[Problem]]:
    """Predictions fitted to their images' ``(width, height)`` pixels, as annotations are.

    A box overhanging its image within :func:`~pathodet.data.boxes.overhang_allowance`
    (sub-pixel rounding, a cell cut by the border) is clipped and counted; a box wholly
    outside, or overhanging more, is left out and is a problem naming ``source`` and its
    line. Images without a size are kept as they are.

    Returns:
        ``(fitted, n_clipped, problems)``.
    """
    out: dict[str, ImagePredictions] = {}
    n_clipped, problems = 0, []
    for name, p in preds.items():
        if name not in sizes or not len(p.scores):
            out[name] = p
            continue
        width, height = sizes[name]
        fit = fit_to_image(p.boxes, width, height)
        for i in np.flatnonzero(~fit.kept):
            where = f"{source}:{p.lines[i]}" if p.lines is not None else f"{source}"
            x1, y1, x2, y2 = p.boxes[i].tolist()
            what = (
                "lies outside"
                if fit.outside[i]
                else f"overhangs by {fit.overhang[i]:.4g} px (more than the "
                f"{fit.allowance[i]:.4g} px allowed)"
            )
            problems.append(
                Problem(
                    where,
                    f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) of {name!r} {what} the "
                    f"{width}x{height} image; left out",
                )
            )
        keep = fit.kept
        n_clipped += int(fit.clipped.sum())
        lines = None if p.lines is None else p.lines[keep]
        out[name] = ImagePredictions(fit.boxes[keep], p.scores[keep], lines)
    return out, n_clipped, problems


def predictions_csv(preds: dict[str, ImagePredictions]) -> str:
    """CSV text of ``preds`` (images in the given order, boxes by descending score).

    Coordinates are written with :data:`COORD_DECIMALS` digits; a box that would be written
    with zero width or height (a sliver left by clipping) or a NaN is left out
    (:func:`~pathodet.data.boxes.writable`), so :func:`read_predictions` accepts the file.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for name, p in preds.items():
        ok = writable(p.boxes, p.scores, COORD_DECIMALS)
        for i in np.argsort(-p.scores, kind="stable"):
            if not ok[i]:
                continue
            x1, y1, x2, y2 = (f"{v:.{COORD_DECIMALS}f}" for v in p.boxes[i])
            w.writerow([name, x1, y1, x2, y2, f"{p.scores[i]:.6f}"])
    return buf.getvalue()


def write_predictions(path: str | os.PathLike[str], preds: dict[str, ImagePredictions]) -> Path:
    """Write :func:`predictions_csv` atomically (degenerate boxes are left out)."""
    return atomic_write_text(path, predictions_csv(preds))
