"""``pathodet evaluate``: predictions CSV + DigestPath root -> metrics.json, froc.png, report.md."""

from __future__ import annotations

import os
from pathlib import Path

from pathodet.data.predictions import read_predictions
from pathodet.eval.annotations import load_annotations
from pathodet.eval.metrics import curve, evaluate, per_image
from pathodet.eval.report import write_report


def run_evaluate(
    data: str | os.PathLike[str],
    predictions: str | os.PathLike[str],
    out: Path,
    removed: str | os.PathLike[str] | None = None,
    full: str | os.PathLike[str] | None = None,
    iou_threshold: float = 0.3,
    plot: bool = True,
) -> dict:
    """Evaluate ``predictions`` on ``data`` and write the report into ``out`` (with the FROC
    plot unless ``plot`` is False: a benchmark's many runs are summed up in one plot).

    Raises:
        PredictionsError: a bad row, or a prediction for an image that is not in ``data``.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou_threshold}")
    gt = load_annotations(data, removed, full)
    preds = read_predictions(predictions, images=gt.annotated)  # an unknown image names its line
    metrics = evaluate(preds, gt.annotated, iou_threshold, gt.removed, gt.full_truth)
    metrics["problems"] = [p.as_dict() for p in gt.problems]
    _, recall, nfp = curve(preds, gt.annotated, iou_threshold)
    write_report(Path(out), metrics, per_image(preds, gt.annotated, iou_threshold), recall, nfp,
                 f"{predictions} on {data}", plot)  # fmt: skip
    return metrics
