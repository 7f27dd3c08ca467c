"""Opening image records: the image's size (:mod:`pathodet.data.images`) and the annotation
boxes validated against it.

Nothing here crashes on one bad file: an unusable image raises :class:`ImageProblem` from
:func:`load_sample` and is reported, not raised, by :func:`load_samples`; annotation
problems are collected as :class:`~pathodet.data.digestpath.Problem` entries naming the file.

Annotations are VOC XML (:mod:`pathodet.data.voc`) or QuPath GeoJSON
(:mod:`pathodet.data.qupath`, a ``.geojson`` file); which objects are SRC boxes, and the box
of a point annotation, follow :class:`~pathodet.data.voc.AnnotationRules`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pathodet.data.boxes import validate_boxes
from pathodet.data.digestpath import Attribute, ImageRecord, Problem
from pathodet.data.images import image_size
from pathodet.data.qupath import GEOJSON_SUFFIXES, read_qupath
from pathodet.data.voc import AnnotationError, AnnotationRules, VocAnnotation, read_voc


@dataclass
class Sample:
    """An opened image record: its size and validated boxes (image pixels, continuous).

    Attributes:
        record: the :class:`ImageRecord`.
        width, height: image size in pixels, read from the image itself.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2``, clipped to the image.
        clipped: how many boxes overhung the image within the allowance and were clipped
            (:mod:`pathodet.data.boxes`).
        problems: everything wrong with the image or its annotation.
        pseudo: the boxes are a teacher's pseudo-labels, not annotations (PU purification).
        other_classes: annotated objects of non-SRC classes, skipped, counted by name.
    """

    record: ImageRecord
    width: int
    height: int
    boxes: np.ndarray
    clipped: int = 0
    problems: list[Problem] = field(default_factory=list)
    pseudo: bool = False
    other_classes: dict[str, int] = field(default_factory=dict)

    @property
    def attribute(self) -> Attribute:
        return self.record.attribute


def read_annotation(
    path: str | os.PathLike[str], rules: AnnotationRules | None = None
) -> VocAnnotation:
    """The boxes of an annotation file: QuPath GeoJSON when its suffix is ``.geojson``
    (:func:`~pathodet.data.qupath.read_qupath`), VOC XML otherwise
    (:func:`~pathodet.data.voc.read_voc`).

    Raises:
        AnnotationError: the file cannot be used at all; the message names it.
    """
    if Path(path).suffix.lower() in GEOJSON_SUFFIXES:
        return read_qupath(path, rules)
    return read_voc(path, rules)


def load_sample(
    record: ImageRecord,
    *,
    verify_image: bool = True,
    annotation: Path | None = None,
    rules: AnnotationRules | None = None,
) -> Sample:
    """Open one record: image size, annotation boxes validated against it.

    Args:
        record: the image to open.
        verify_image: decode the whole image to catch truncation (slower, ~30 ms at 2000^2).
        annotation: read boxes from this XML or GeoJSON instead of ``record.annotation``
            (e.g. the full annotations of synthetic data).
        rules: which objects are SRC boxes, the box of a point (default
            :class:`~pathodet.data.voc.AnnotationRules`: ``ring_cell_cancer`` and unnamed
            objects).

    Returns:
        The :class:`Sample`; annotation problems are listed in it, not raised.

    Raises:
        ImageProblem: the image itself is unusable. Use :func:`load_samples` for batches,
            which never raises on one file.
    """
    try:
        width, height = image_size(record.image, verify=verify_image)
    except ValueError as exc:
        raise ImageProblem(Problem(str(record.image), str(exc))) from exc

    ann_path = annotation if annotation is not None else record.annotation
    problems: list[Problem] = []
    raw = np.zeros((0, 4), np.float32)
    labels: list[str] | None = None
    others: dict[str, int] = {}
    if ann_path is None:
        if record.attribute == "AP":
            problems.append(
                Problem(str(record.image), "AP image has no annotation XML (taken as 0 boxes)")
            )
    else:
        try:
            voc = read_annotation(ann_path, rules)
        except AnnotationError as exc:
            problems.append(Problem(str(ann_path), exc.message + " (taken as 0 boxes)"))
        else:
            raw = voc.boxes
            labels = voc.labels or None
            others = voc.other_classes
            problems.extend(Problem(str(ann_path), issue) for issue in voc.issues)
            if voc.width is not None and (voc.width, voc.height) != (width, height):
                problems.append(
                    Problem(
                        str(ann_path),
                        f"<size> says {voc.width}x{voc.height} but the image is "
                        f"{width}x{height}; the image's size is used",
                    )
                )
    boxes, n_clipped, box_problems = validate_boxes(raw, width, height, str(ann_path), labels)
    problems.extend(box_problems)
    if record.attribute == "NP" and len(boxes):
        problems.append(
            Problem(
                str(ann_path),
                f"NP image has {len(boxes)} box(es); NP images contain no SRC, boxes ignored",
            )
        )
        boxes = np.zeros((0, 4), np.float32)
        n_clipped = 0  # ignored boxes are not counted as clipped ones either
    return Sample(record, width, height, boxes, n_clipped, problems, other_classes=others)


class ImageProblem(ValueError):
    """An image that cannot be used; carries its :class:`Problem`."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(f"{problem.file}: {problem.error}")


def load_samples(
    records: Iterable[ImageRecord],
    *,
    verify_image: bool = True,
    rules: AnnotationRules | None = None,
) -> tuple[list[Sample], list[Problem]]:
    """Open every record; unusable images are left out and reported, never raised.

    ``rules``: which annotated objects are SRC boxes (see :func:`load_sample`).

    Returns:
        ``(samples, problems)`` where problems include those of kept samples.
    """
    samples: list[Sample] = []
    problems: list[Problem] = []
    for record in records:
        try:
            sample = load_sample(record, verify_image=verify_image, rules=rules)
        except ImageProblem as exc:
            problems.append(exc.problem)
            continue
        samples.append(sample)
        problems.extend(sample.problems)
    return samples, problems


def summarize(samples: Sequence[Sample], problems: Sequence[Problem]) -> dict:
    """The dataset summary printed by ``pathodet data summary``.

    ``usable`` is true when at least one AP image with at least one box was read;
    ``clipped_boxes`` counts boxes that overhung their image a little and were clipped;
    ``other_class_objects`` counts annotated objects of non-SRC classes (skipped) by name.
    """
    ap = [s for s in samples if s.attribute == "AP"]
    nps = [s for s in samples if s.attribute == "NP"]
    n_boxes = int(sum(len(s.boxes) for s in ap))
    sizes = [b[2:] - b[:2] for s in ap for b in s.boxes]
    others: Counter[str] = Counter()
    for s in samples:
        others.update(s.other_classes)
    return {
        "positive_images": len(ap),
        "negative_images": len(nps),
        "boxes": n_boxes,
        "clipped_boxes": int(sum(s.clipped for s in samples)),
        "other_class_objects": dict(sorted(others.items())),
        "slides": len({s.record.slide_id for s in samples}),
        "cases": len({s.record.case_id for s in samples}),
        "AP_slides": len({s.record.slide_id for s in ap}),
        "AP_cases": len({s.record.case_id for s in ap}),
        "NP_slides": len({s.record.slide_id for s in nps}),
        "NP_cases": len({s.record.case_id for s in nps}),
        "median_box_size_px": (
            [round(float(v), 1) for v in np.median(np.stack(sizes), axis=0)] if sizes else None
        ),
        "usable": any(len(s.boxes) for s in ap),
        "problems": [p.as_dict() for p in problems],
    }
