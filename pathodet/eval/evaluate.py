"""``pathodet evaluate``: predictions CSV + DigestPath root -> metrics.json, froc.png, report.md."""

from __future__ import annotations

import os
from pathlib import Path

from pathodet.data.boxes import longer_side
from pathodet.data.predictions import ImagePredictions, fit_predictions, read_predictions
from pathodet.data.voc import AnnotationRules
from pathodet.eval.annotations import load_annotations
from pathodet.eval.metrics import curve, evaluate, per_image
from pathodet.eval.report import write_report
from pathodet.model.boxes import SAME_CELL_IOU


def run_evaluate(
    data: str | os.PathLike[str],
    predictions: str | os.PathLike[str],
    out: Path,
    removed: str | os.PathLike[str] | None = None,
    full: str | os.PathLike[str] | None = None,
    iou_threshold: float = SAME_CELL_IOU,
    plot: bool = True,
    rules: AnnotationRules | None = None,
    max_side: float | None = None,
) -> dict:
    """Evaluate ``predictions`` on ``data`` and write the report into ``out`` (with the FROC
    plot unless ``plot`` is False: a benchmark's many runs are summed up in one plot).

    Boxes overhanging their image a little, in the annotations or the predictions, are
    clipped and counted (``clipped_boxes``, ``clipped_predictions``); a prediction outside
    its image is left out and listed in ``problems`` with its line. ``rules``: which
    annotated objects are SRC boxes (others are counted in ``other_class_objects``).
    ``max_side``: predictions whose longer side exceeds it (pixels of the image) are left
    out before scoring, counted in ``oversized_predictions`` (a box larger than any SRC,
    see :func:`largest_annotated_side`).

    Raises:
        PredictionsError: a bad row, or a prediction for an image that is not in ``data``.
        ValueError: an IoU threshold outside (0, 1], or ``max_side`` not positive.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    if max_side is not None and not max_side > 0:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    gt = load_annotations(data, removed, full, rules)
    preds = read_predictions(predictions, images=gt.annotated)  # an unknown image names its line
    sizes = {n: t.size for n, t in gt.annotated.items() if t.size is not None}
    preds, n_clipped, pred_problems = fit_predictions(preds, sizes, predictions)
    n_oversized = 0
    if max_side is not None:
        preds, n_oversized = drop_oversized(preds, max_side)
    metrics = evaluate(preds, gt.annotated, iou_threshold, gt.removed, gt.full_truth)
    metrics["clipped_boxes"] = gt.clipped
    metrics["clipped_predictions"] = n_clipped
    if max_side is not None:
        metrics["max_side"] = max_side
        metrics["oversized_predictions"] = n_oversized
    metrics["other_class_objects"] = gt.other_classes
    metrics["problems"] = [p.as_dict() for p in gt.problems + pred_problems]
    _, recall, nfp = curve(preds, gt.annotated, iou_threshold)
    write_report(Path(out), metrics, per_image(preds, gt.annotated, iou_threshold), recall, nfp,
                 f"{predictions} on {data}", plot)  # fmt: skip
    return metrics


def drop_oversized(
    preds: dict[str, ImagePredictions], max_side: float
) -> tuple[dict[str, ImagePredictions], int]:
    """``preds`` without the boxes whose longer side exceeds ``max_side`` pixels, and how
    many were left out."""
    kept, dropped = {}, 0
    for name, p in preds.items():
        ok = longer_side(p.boxes) <= max_side
        dropped += int((~ok).sum())
        kept[name] = ImagePredictions(p.boxes[ok], p.scores[ok],
                                      None if p.lines is None else p.lines[ok])  # fmt: skip
    return kept, dropped


def largest_annotated_side(
    data: str | os.PathLike[str], rules: AnnotationRules | None = None
) -> float:
    """The longer side, in pixels of its image, of the largest SRC box annotated in
    ``data`` (a DigestPath root or manifest).

    Raises:
        ValueError: ``data`` has no annotated box, or an image or annotation file in it
            could not be read (the limit would be taken from the rest), naming the files.
    """
    gt = load_annotations(data, rules=rules)
    if gt.problems:
        named = "; ".join(f"{p.file}: {p.error}" for p in gt.problems[:3])
        raise ValueError(f"{data}: {len(gt.problems)} file(s) could not be read, so the "
                         f"largest annotated box is unknown ({named})")  # fmt: skip
    sides = [float(longer_side(b.boxes).max()) for b in gt.annotated.values() if len(b.boxes)]
    if not sides:
        raise ValueError(f"{data}: no annotated SRC box to take a size from")
    return max(sides)
