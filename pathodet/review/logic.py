"""What the review app shows, computed without Streamlit (so it is tested directly).

The app asks three questions of the library: which cases are there and how far along is
their review (:func:`case_rows`), what is the state of every box of a case at the current
threshold (:func:`case_layers`), and which evaluation runs can it show
(:func:`evaluation_runs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathodet.review.cases import Case
from pathodet.review.store import Decision, cell_key


def case_rows(cases: list[Case], threshold: float, decisions: list[Decision],
              statuses: dict[str, str]) -> list[dict]:  # fmt: skip
    """One row per case for the case list: counts at ``threshold`` and review status."""
    per_case: dict[str, int] = {}
    for d in decisions:
        per_case[d.case_name] = per_case.get(d.case_name, 0) + 1
    rows = []
    for c in cases:
        n = per_case.get(c.name, 0)
        status = statuses.get(c.name) or ("in progress" if n else "unreviewed")
        rows.append({
            "case": c.name, "kind": c.kind, "attribute": c.attribute,
            "SRC detected": c.count(threshold), "annotated": int(len(c.annotated)),
            "decisions": n, "status": status,
        })  # fmt: skip
    return rows


def filter_rows(rows: list[dict], which: str) -> list[dict]:
    """``All``, ``AP``, ``NP``, ``slides`` or ``unreviewed``."""
    if which == "AP":
        return [r for r in rows if r["attribute"] == "AP"]
    if which == "NP":
        return [r for r in rows if r["attribute"] == "NP"]
    if which == "slides":
        return [r for r in rows if r["kind"] == "slide"]
    if which == "unreviewed":
        return [r for r in rows if r["status"] != "reviewed"]
    return rows


@dataclass
class CaseState:
    """The detections of a case at a threshold and what reviewers decided.

    Attributes:
        boxes: ``(K, 4)`` detections scoring at least the threshold, highest first.
        scores: ``(K,)``.
        kinds: per detection ``pending``, ``accept`` or ``reject``.
        added: ``(A, 4)`` cells added by reviewers.
        accepted, rejected: decisions of each kind on the case, at any threshold.
    """

    boxes: np.ndarray
    scores: np.ndarray
    kinds: list[str]
    added: np.ndarray
    accepted: int
    rejected: int


def case_layers(case: Case, decisions: list[Decision], threshold: float) -> CaseState:
    """Detections above ``threshold`` with their decision, and the added cells."""
    keep = case.scores >= threshold
    boxes, scores = case.boxes[keep], case.scores[keep]
    by_cell = {d.cell: d.action for d in decisions if d.action != "add"}
    kinds = [by_cell.get(cell_key(b), "pending") for b in boxes]
    added = np.asarray([d.box for d in decisions if d.action == "add"], np.float64).reshape(-1, 4)
    return CaseState(
        boxes, scores, kinds, added,
        accepted=sum(d.action == "accept" for d in decisions),
        rejected=sum(d.action == "reject" for d in decisions),
    )  # fmt: skip


def evaluation_runs(root: Path) -> list[Path]:
    """Folders under ``root`` (depth <= 2) holding a ``metrics.json`` of ``pathodet evaluate``."""
    found = []
    for depth in ("metrics.json", "*/metrics.json", "*/*/metrics.json"):
        found += [p.parent for p in sorted(root.glob(depth))]
    return found


def worst_images(per_image: list[dict] | dict, limit: int = 20) -> list[dict]:
    """Per-image rows of an evaluation, worst first: most missed SRCs, then most false
    positives (the order a pathologist would want to look at them)."""
    rows = per_image if isinstance(per_image, list) else [
        {"image": k, **v} for k, v in per_image.items()
    ]  # fmt: skip

    def badness(r: dict) -> tuple:
        missed = (r.get("boxes") or 0) - (r.get("matched") or 0)
        return (-missed, -(r.get("false_positives") or 0))

    return sorted(rows, key=badness)[:limit]


def read_json(path: Path) -> dict | list:
    return json.loads(path.read_text())
