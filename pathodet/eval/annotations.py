"""What evaluation scores against, read from a DigestPath-layout root.

``annotated``: the annotated boxes of every AP image and the NP images (which have none),
VOC XML or QuPath GeoJSON, with the image sizes predictions are fitted to.
``removed``: the boxes ``pathodet data drop`` took away (``removed-annotations/``), for
R-recall. ``full_truth``: every real SRC of synthetic data (``full-annotations/``), for the
true recall and precision that partial annotation hides.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.data.digestpath import FULL_DIR, Problem, load_records
from pathodet.data.drop import REMOVED_DIR
from pathodet.data.samples import ImageProblem, load_sample
from pathodet.data.voc import AnnotationRules
from pathodet.eval.metrics import ImageBoxes


@dataclass
class Annotations:
    """What a dataset's predictions are scored against, per image name.

    Attributes:
        annotated: the annotated boxes (what the challenge scores).
        removed: boxes removed by ``pathodet data drop`` (R-recall), when known.
        full_truth: every true SRC (synthetic data: true recall and precision), when known.
        problems: images or files that could not be read.
        clipped: annotated boxes that overhung their image a little and were clipped.
        other_classes: annotated objects of non-SRC classes, skipped, counted by name.
    """

    annotated: dict[str, ImageBoxes]
    removed: dict[str, ImageBoxes] | None = None
    full_truth: dict[str, ImageBoxes] | None = None
    problems: list[Problem] = field(default_factory=list)
    clipped: int = 0
    other_classes: dict[str, int] = field(default_factory=dict)


def _boxes_from(
    record, xml: Path | None, problems: list[Problem], rules: AnnotationRules | None
) -> np.ndarray:
    if xml is None or not xml.is_file():
        return np.zeros((0, 4))
    sample = load_sample(record, verify_image=False, annotation=xml, rules=rules)
    problems.extend(sample.problems)
    return sample.boxes.astype(np.float64)


def load_annotations(
    root: str | os.PathLike[str],
    removed_dir: str | os.PathLike[str] | None = None,
    full_dir: str | os.PathLike[str] | None = None,
    rules: AnnotationRules | None = None,
) -> Annotations:
    """Read the annotations of ``root`` (and the removed boxes and full truth, when there).

    ``removed_dir`` / ``full_dir`` default to ``root/removed-annotations`` and
    ``root/full-annotations`` when those folders exist. Unreadable images are left out and
    reported in ``problems``. ``rules``: which annotated objects are SRC boxes (default
    ``ring_cell_cancer`` and unnamed objects; :class:`~pathodet.data.voc.AnnotationRules`).
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
    out = Annotations({}, {} if removed_dir else None, {} if full_dir else None)
    others: Counter[str] = Counter()
    for record in load_records(root):
        try:
            sample = load_sample(record, verify_image=False, rules=rules)
        except ImageProblem as exc:
            out.problems.append(exc.problem)
            continue
        out.problems.extend(sample.problems)
        out.clipped += sample.clipped
        others.update(sample.other_classes)
        name, attr, stem = record.name, record.attribute, Path(record.name).stem
        size = (sample.width, sample.height)
        out.annotated[name] = ImageBoxes(attr, sample.boxes.astype(np.float64), size)
        if out.removed is not None:
            xml = removed_dir / f"{stem}.xml" if attr == "AP" else None
            boxes = _boxes_from(record, xml, out.problems, rules)
            out.removed[name] = ImageBoxes(attr, boxes, size)
        if out.full_truth is not None:
            xml = full_dir / f"{stem}.xml" if attr == "AP" else None
            boxes = _boxes_from(record, xml, out.problems, rules)
            out.full_truth[name] = ImageBoxes(attr, boxes, size)
    out.other_classes = dict(sorted(others.items()))
    return out
