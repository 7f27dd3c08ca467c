"""Ground truth for evaluation from a DigestPath-layout root.

``truth``: the annotated boxes of every AP image and the NP images (which have none).
``removed``: the boxes ``pathodet data drop`` took away (``removed-annotations/``), for
R-recall. ``full``: every real SRC of synthetic data (``full-annotations/``), for the true
recall and precision that partial annotation hides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.data.digestpath import FULL_DIR, Problem, load_records
from pathodet.data.drop import REMOVED_DIR
from pathodet.data.samples import ImageProblem, load_sample
from pathodet.eval.metrics import Truth


@dataclass
class EvalTruth:
    truth: dict[str, Truth]
    removed: dict[str, Truth] | None = None
    full: dict[str, Truth] | None = None
    problems: list[Problem] = field(default_factory=list)


def _boxes_from(record, xml: Path | None, problems: list[Problem]) -> np.ndarray:
    if xml is None or not xml.is_file():
        return np.zeros((0, 4))
    sample = load_sample(record, verify_image=False, annotation=xml)
    problems.extend(sample.problems)
    return sample.boxes.astype(np.float64)


def load_truth(
    root: str | os.PathLike[str],
    removed_dir: str | os.PathLike[str] | None = None,
    full_dir: str | os.PathLike[str] | None = None,
) -> EvalTruth:
    """Read the evaluation truth of ``root``.

    ``removed_dir`` / ``full_dir`` default to ``root/removed-annotations`` and
    ``root/full-annotations`` when those folders exist. Unreadable images are left out and
    reported in ``problems``.
    """
    root = Path(root)
    removed_dir = Path(removed_dir) if removed_dir else None
    full_dir = Path(full_dir) if full_dir else None
    if removed_dir is None and (root / REMOVED_DIR).is_dir():
        removed_dir = root / REMOVED_DIR
    if full_dir is None and (root / FULL_DIR).is_dir():
        full_dir = root / FULL_DIR
    for d, flag in ((removed_dir, "--removed"), (full_dir, "--full-annotations")):
        if d is not None and not d.is_dir():
            raise FileNotFoundError(f"{d}: {flag} folder does not exist")
    out = EvalTruth({}, {} if removed_dir else None, {} if full_dir else None)
    for record in load_records(root):
        try:
            sample = load_sample(record, verify_image=False)
        except ImageProblem as exc:
            out.problems.append(exc.problem)
            continue
        out.problems.extend(sample.problems)
        name, attr, stem = record.name, record.attribute, Path(record.name).stem
        out.truth[name] = Truth(attr, sample.boxes.astype(np.float64))
        if out.removed is not None:
            xml = removed_dir / f"{stem}.xml" if attr == "AP" else None
            out.removed[name] = Truth(attr, _boxes_from(record, xml, out.problems))
        if out.full is not None:
            xml = full_dir / f"{stem}.xml" if attr == "AP" else None
            out.full[name] = Truth(attr, _boxes_from(record, xml, out.problems))
    return out
