"""The purified, pseudo-labeled tile set: written by ``pathodet purify``, read by training.

Folder layout (``data.pseudo`` names the folder)::

    selected.csv        one row per selected pool tile, best first:
                        rank, tile, attribute, score, source, x, y, width, height
    pseudo-labels.csv   one row per pseudo box: tile, x1, y1, x2, y2, score (tile pixels)
    tiles/              the selected tiles as PNG (``tile`` is relative to the folder)

``attribute`` is ``AP`` for tiles cut from an AP image, ``NP`` from an NP image (their
pseudo boxes are dropped: NP images hold no SRC) and ``unknown`` from unlabeled images or
slides. For the losses ``unknown`` is AP-like: its negatives are unannotated, so under
DGHM-C they join the noisy group; the pseudo boxes' positives join the group
``loss.dghm.pseudo_group`` names (noisy by default), like co-mining's mined boxes.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_text
from pathodet.data.digestpath import DatasetError, ImageRecord, Problem
from pathodet.data.samples import ImageProblem, Sample, load_sample, validate_boxes

SELECTED_CSV = "selected.csv"
PSEUDO_CSV = "pseudo-labels.csv"
TILES_DIR = "tiles"
SELECTED_COLUMNS = ("rank", "tile", "attribute", "score", "source", "x", "y", "width", "height")
PSEUDO_COLUMNS = ("tile", "x1", "y1", "x2", "y2", "score")
ATTRIBUTES = ("AP", "NP", "unknown")


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> Path:
    """Write ``rows`` (dicts with ``columns``) as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def _rows(path: Path, columns: Sequence[str]) -> list[tuple[int, dict]]:
    """``(line, row)`` of a CSV that must have ``columns``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DatasetError(f"{path}: lacks column(s) {', '.join(missing)}")
    return [(reader.line_num, row) for row in reader]


def _number(path: Path, line: int, row: dict, key: str) -> float:
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        raise DatasetError(f"{path}, line {line}: {key} {row[key]!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}, line {line}: {key} is {value}")
    return value


def read_pseudo_boxes(folder: Path) -> dict[str, np.ndarray]:
    """tile (relative path) -> ``(K, 4)`` float32 pseudo boxes, from ``pseudo-labels.csv``."""
    path = folder / PSEUDO_CSV
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing; pseudo-label the selected tiles first "
            "(pathodet purify ... --teacher RUN/last.pt)"
        )
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    for line, row in _rows(path, PSEUDO_COLUMNS):
        coords = [_number(path, line, row, k) for k in ("x1", "y1", "x2", "y2")]
        boxes[row["tile"]].append(coords)
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in boxes.items()}


def load_pseudo_samples(
    folder: str | os.PathLike[str],
) -> tuple[list[Sample], list[Problem]]:
    """The selected tiles of a purify folder as training samples with their pseudo boxes.

    Unreadable tiles and invalid boxes are reported as problems and left out.

    Raises:
        DatasetError: the folder lacks ``selected.csv`` or ``pseudo-labels.csv``, or a row
            is malformed (the message names the file and the line).
    """
    folder = Path(folder)
    path = folder / SELECTED_CSV
    if not path.is_file():
        raise DatasetError(f"{path}: missing; is {folder} a pathodet purify output folder?")
    pseudo = read_pseudo_boxes(folder)
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen = set()
    for line, row in _rows(path, SELECTED_COLUMNS):
        attribute, tile = row["attribute"], row["tile"]
        if attribute not in ATTRIBUTES:
            raise DatasetError(
                f"{path}, line {line}: attribute must be one of {ATTRIBUTES}, got {attribute!r}"
            )
        seen.add(tile)
        record = ImageRecord(folder / tile, attribute, None, Path(row["source"]).stem)  # type: ignore[arg-type]
        try:
            sample = load_sample(record)
        except ImageProblem as exc:
            problems.append(exc.problem)
            continue
        raw = pseudo.get(tile, np.zeros((0, 4), np.float32))
        if attribute == "NP":
            raw = raw[:0]  # an NP image holds no SRC, whatever the teacher says
        boxes, _, box_problems = validate_boxes(
            raw, sample.width, sample.height, str(folder / PSEUDO_CSV)
        )
        problems += box_problems
        samples.append(Sample(record, sample.width, sample.height, boxes, pseudo=True))
    unknown = sorted(set(pseudo) - seen)
    if unknown:
        problems.append(
            Problem(str(folder / PSEUDO_CSV), f"boxes for tiles not in {SELECTED_CSV}: "
                    f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''} (ignored)")
        )  # fmt: skip
    return samples, problems
