"""``pathodet evaluate``: predictions CSV + DigestPath root -> metrics.json, froc.png, report.md."""

from __future__ import annotations

import os
from pathlib import Path

from pathodet.data.predictions import fit_predictions, read_predictions
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
) -> dict:
    """Evaluate ``predictions`` on ``data`` and write the report into ``out`` (with the FROC
    plot unless ``plot`` is False: a benchmark's many runs are summed up in one plot).

    Boxes overhanging their image a little, in the annotations or the predictions, are
    clipped and counted (``clipped_boxes``, ``clipped_predictions``); a prediction outside
    its image is left out and listed in ``problems`` with its line. ``rules``: which
    annotated objects are SRC boxes (others are counted in ``other_class_objects``).

    Raises:
        PredictionsError: a bad row, or a prediction for an image that is not in ``data``.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    gt = load_annotations(data, removed, full, rules)
    preds = read_predictions(predictions, images=gt.annotated)  # an unknown image names its line
    sizes = {n: t.size for n, t in gt.annotated.items() if t.size is not None}
    preds, n_clipped, pred_problems = fit_predictions(preds, sizes, predictions)
    metrics = evaluate(preds, gt.annotated, iou_threshold, gt.removed, gt.full_truth)
    metrics["clipped_boxes"] = gt.clipped
    metrics["clipped_predictions"] = n_clipped
    metrics["other_class_objects"] = gt.other_classes
    metrics["problems"] = [p.as_dict() for p in gt.problems + pred_problems]
    _, recall, nfp = curve(preds, gt.annotated, iou_threshold)
    write_report(Path(out), metrics, per_image(preds, gt.annotated, iou_threshold), recall, nfp,
                 f"{predictions} on {data}", plot)  # fmt: skip
    return metrics
