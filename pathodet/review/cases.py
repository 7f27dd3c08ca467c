"""What there is to review: the cases of a data root and a predictions folder, read safely.

A *case* is an image of a DigestPath-layout root (with its AP/NP attribute, annotated boxes
and, on synthetic data, the full truth) or a whole slide of ``pathodet predict`` (its
``slides/<name>/detections.csv``). The app may only ever read files under the two roots it
was started with: every path is resolved (symlinks followed) and refused when it lands
outside them, and case names from the browser are looked up, never joined to a path.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.data.digestpath import load_records
from pathodet.data.predictions import ImagePredictions, read_predictions


class PathRefused(ValueError):
    """A path that resolves outside the roots the app may read."""


def inside(path: str | os.PathLike[str], roots: list[Path]) -> Path:
    """``path`` resolved (symlinks followed), if it lies under one of ``roots``.

    Raises:
        PathRefused: an absolute path elsewhere, ``..`` escaping, or a symlink out.
    """
    p = Path(path).resolve()
    for root in roots:
        r = root.resolve()
        if p == r or r in p.parents:
            return p
    raise PathRefused(f"{path}: outside the folders this app serves")


@dataclass
class Case:
    """One image or slide under review.

    Attributes:
        name: unique key (the image or slide file name).
        kind: ``"image"`` or ``"slide"``.
        path: the file, resolved and checked to lie under a served root.
        attribute: ``"AP"``, ``"NP"`` or ``"unknown"`` (slides).
        annotated: ``(M, 4)`` annotated boxes (pixels; level 0 for slides).
        full: ``(F, 4)`` every real SRC when known (synthetic data), else None.
        boxes: ``(K, 4)`` detections, ``scores`` ``(K,)``, sorted by descending score.
        folder: a slide's results folder (heatmap, summary), else None.
    """

    name: str
    kind: str
    path: Path
    attribute: str
    annotated: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    full: np.ndarray | None = None
    folder: Path | None = None
    extra: dict = field(default_factory=dict)

    def count(self, threshold: float) -> int:
        return int((self.scores >= threshold).sum())


def run_id(predictions: Path) -> str:
    """A stable name for the model run behind a predictions folder (folder + checkpoint)."""
    ident = {"folder": predictions.resolve().name}
    for f in [predictions / "predict.json", *sorted(predictions.glob("slides/*/summary.json"))[:1]]:
        if f.is_file():
            try:
                doc = json.loads(f.read_text())
            except ValueError:
                continue
            fp = doc.get("settings") or doc.get("fingerprint") or {}
            ident["checkpoint"] = fp.get("checkpoint", "")
            ident["mtime"] = fp.get("checkpoint_mtime_ns", "")
            break
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return f"{ident['folder']}-{digest}"


def _sorted(p: ImagePredictions | None) -> tuple[np.ndarray, np.ndarray]:
    if p is None or len(p.scores) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    order = np.argsort(-p.scores, kind="stable")
    return np.asarray(p.boxes, np.float64)[order], np.asarray(p.scores, np.float64)[order]


def load_cases(data: Path | None, predictions: Path) -> list[Case]:
    """Every image of ``data`` (a DigestPath root) and every slide in ``predictions``.

    Raises:
        FileNotFoundError: ``predictions`` is not a folder.
        PathRefused: a slide recorded in the predictions that lies outside both roots.
    """
    if not predictions.is_dir():
        raise FileNotFoundError(f"{predictions}: no such predictions folder")
    roots = [predictions] + ([data] if data is not None else [])
    cases: list[Case] = []
    if data is not None:
        from pathodet.eval.annotations import load_annotations

        preds = {}
        csv = predictions / "predictions.csv"
        if csv.is_file():
            preds = read_predictions(csv)
        truth = load_annotations(data)
        for rec in load_records(data):
            if rec.name not in truth.annotated:
                continue
            boxes, scores = _sorted(preds.get(rec.name))
            full = truth.full_truth[rec.name].boxes if truth.full_truth is not None else None
            cases.append(Case(
                name=rec.name, kind="image", path=inside(rec.image, roots),
                attribute=rec.attribute, annotated=truth.annotated[rec.name].boxes,
                boxes=boxes, scores=scores, full=full,
            ))  # fmt: skip
    for summary in sorted(predictions.glob("slides/*/summary.json")):
        doc = json.loads(summary.read_text())
        folder = summary.parent
        path = inside(doc["slide"]["path"], roots)
        found = read_predictions(folder / "detections.csv")
        boxes, scores = _sorted(found.get(path.name))
        full = None
        truth_csv = path.with_name(path.stem + ".truth.csv")  # synthetic slides
        if truth_csv.is_file():
            t = read_predictions(truth_csv).get(path.name)
            full = np.asarray(t.boxes, np.float64) if t is not None else None
        cases.append(Case(
            name=path.name, kind="slide", path=path, attribute="unknown",
            annotated=np.zeros((0, 4)), boxes=boxes, scores=scores, full=full, folder=folder,
            extra={"summary": doc},
        ))  # fmt: skip
    return cases
