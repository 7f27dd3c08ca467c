"""DigestPath 2019 task 1 metrics from per-image predictions and annotated boxes.

Definitions (the challenge's; DGHM paper section 4.3):

- ``recall``: matched annotated boxes / all annotated boxes of the positive (AP) images,
  with every prediction in the file.
- ``precision``: matched predictions / all predictions in positive images;
  ``precision_ok``: precision > 0.2.
- ``nfp``: predictions in negative (NP) images per negative image; ``nfp_score`` =
  max(100 - nfp, 0) (eq. 15).
- ``froc_points[k]`` for k in 1, 2, 4, 8, 16, 32: the highest recall over score thresholds
  t (every distinct score, and "above every score") whose nfp <= k, 0 if none;
  ``froc`` their mean (eq. 16).

Undefined values are ``None``: recall and the FROC without annotated boxes, precision
without predictions in positive images. Without negative images no prediction can be a
normal-region false positive, so nfp is 0 and every threshold meets every k.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pathodet.data.predictions import ImagePredictions
from pathodet.eval.matching import greedy_match
from pathodet.model.boxes import SAME_CELL_IOU

FROC_FPS = (1, 2, 4, 8, 16, 32)


@dataclass
class ImageBoxes:
    """One evaluated image: ``attribute`` "AP"/"NP", ``boxes (M, 4)`` image pixels, and
    the image's ``size`` ``(width, height)`` pixels when known (predictions are fitted to it)."""

    attribute: str
    boxes: np.ndarray
    size: tuple[int, int] | None = None


def matched_scores(
    preds: Mapping[str, ImagePredictions], truth: Mapping[str, ImageBoxes], iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of matched predictions and of all predictions in positive images, and #boxes."""
    hit, every, n_gt = [], [], 0
    for name, t in truth.items():
        if t.attribute != "AP":
            continue
        p = preds.get(name, ImagePredictions())
        m = greedy_match(p.boxes, p.scores, t.boxes, iou_threshold)
        hit.append(p.scores[m >= 0])
        every.append(p.scores)
        n_gt += len(t.boxes)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return cat(hit), cat(every), n_gt


def negative_scores(
    preds: Mapping[str, ImagePredictions], truth: Mapping[str, ImageBoxes]
) -> tuple[np.ndarray, int]:
    """Scores of every prediction in negative (NP) images, and the number of NP images."""
    names = [n for n, t in truth.items() if t.attribute == "NP"]
    parts = [preds[n].scores for n in names if n in preds]
    return (np.concatenate(parts) if parts else np.zeros(0)), len(names)


def froc_curve(
    hit_scores: np.ndarray, neg_scores: np.ndarray, n_gt: int, n_neg: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(thresholds, recall, nfp)`` at every distinct score, plus +inf (no prediction) first.

    Thresholds are taken over all scores (matched, unmatched and negative-image ones are
    passed in ``hit_scores``/``neg_scores``; unmatched positive-image scores do not move
    either curve, so they need not be).
    """
    thresholds = np.unique(np.concatenate([hit_scores, neg_scores]))[::-1]
    thresholds = np.concatenate([[np.inf], thresholds])
    hits = np.sort(hit_scores)
    negs = np.sort(neg_scores)
    n_hit = len(hits) - np.searchsorted(hits, thresholds, side="left")
    n_fp = len(negs) - np.searchsorted(negs, thresholds, side="left")
    recall = n_hit / n_gt if n_gt else np.full(len(thresholds), np.nan)
    nfp = n_fp / n_neg if n_neg else np.zeros(len(thresholds))
    return thresholds, recall, nfp


def froc_points(recall: np.ndarray, nfp: np.ndarray) -> dict[str, float]:
    """For each k in :data:`FROC_FPS`, the best recall with nfp <= k (0 when none)."""
    out = {}
    for k in FROC_FPS:
        ok = nfp <= k
        out[str(k)] = float(recall[ok].max()) if ok.any() else 0.0
    return out


def box_recall(
    preds: Mapping[str, ImagePredictions], truth: Mapping[str, ImageBoxes], iou: float
) -> tuple[float | None, int]:
    """Share of the AP images' boxes of ``truth`` matched by ``preds`` (None without boxes),
    and the number of boxes."""
    hit, _, n_gt = matched_scores(preds, truth, iou)
    return (len(hit) / n_gt if n_gt else None), n_gt


def evaluate(
    preds: Mapping[str, ImagePredictions],
    truth: Mapping[str, ImageBoxes],
    iou_threshold: float = SAME_CELL_IOU,
    removed: Mapping[str, ImageBoxes] | None = None,
    full_truth: Mapping[str, ImageBoxes] | None = None,
) -> dict:
    """All metrics of one prediction set over the images of ``truth``.

    Args:
        preds: per image file name; images absent from it have no prediction.
        truth: the annotated boxes (AP) and the NP images; defines which images count.
        removed: boxes removed by ``pathodet data drop`` per image: adds ``t_recall`` (on
            ``truth``, the kept boxes) and ``r_recall`` (on the removed ones).
        full_truth: every real SRC (synthetic data): adds ``true_recall`` and ``true_precision``.
    """
    hit, every, n_gt = matched_scores(preds, truth, iou_threshold)
    neg_scores, n_neg = negative_scores(preds, truth)
    _, rec, nfp = froc_curve(hit, neg_scores, n_gt, n_neg)
    out: dict = {
        "recall": len(hit) / n_gt if n_gt else None,
        "precision": len(hit) / len(every) if len(every) else None,
        "nfp": len(neg_scores) / n_neg if n_neg else 0.0,
        "num_gt": n_gt,
        "num_positive_images": sum(t.attribute == "AP" for t in truth.values()),
        "num_negative_images": n_neg,
        "num_predictions": int(sum(len(p.scores) for n, p in preds.items() if n in truth)),
        "iou_threshold": iou_threshold,
    }
    out["precision_ok"] = out["precision"] is not None and out["precision"] > 0.2
    out["nfp_score"] = max(100.0 - out["nfp"], 0.0)
    if n_gt:
        out["froc_points"] = froc_points(rec, nfp)
        out["froc"] = float(np.mean(list(out["froc_points"].values())))
    else:
        out["froc_points"], out["froc"] = None, None
    if removed is not None:
        out["t_recall"] = out["recall"]
        out["r_recall"], out["num_removed"] = box_recall(preds, removed, iou_threshold)
    if full_truth is not None:
        t_hit, t_every, t_gt = matched_scores(preds, full_truth, iou_threshold)
        out["true_recall"] = len(t_hit) / t_gt if t_gt else None
        out["true_precision"] = len(t_hit) / len(t_every) if len(t_every) else None
        out["num_true"] = t_gt
    return out


def curve(
    preds: Mapping[str, ImagePredictions],
    truth: Mapping[str, ImageBoxes],
    iou_threshold: float = SAME_CELL_IOU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FROC curve ``(thresholds, recall, nfp)`` for plotting."""
    hit, _, n_gt = matched_scores(preds, truth, iou_threshold)
    neg_scores, n_neg = negative_scores(preds, truth)
    return froc_curve(hit, neg_scores, n_gt, n_neg)


def per_image(
    preds: Mapping[str, ImagePredictions],
    truth: Mapping[str, ImageBoxes],
    iou_threshold: float = SAME_CELL_IOU,
) -> list[dict]:
    """Per image: attribute, boxes, predictions, matched boxes (AP) or false positives (NP)."""
    rows = []
    for name, t in truth.items():
        p = preds.get(name, ImagePredictions())
        m = greedy_match(p.boxes, p.scores, t.boxes, iou_threshold)
        rows.append({
            "image": name, "attribute": t.attribute, "boxes": len(t.boxes),
            "predictions": len(p.scores), "matched": int((m >= 0).sum()),
            "recall": float((m >= 0).sum() / len(t.boxes)) if len(t.boxes) else None,
            "false_positives": int(len(p.scores) if t.attribute == "NP" else (m < 0).sum()),
        })  # fmt: skip
    return rows


def above(
    preds: Mapping[str, ImagePredictions], threshold: float | None
) -> dict[str, ImagePredictions]:
    """Each image's detections scoring at least ``threshold``; None, the missing operating
    point of :func:`operating_threshold` (no threshold reaches the FP rate), keeps nothing,
    as :func:`froc_points` counts a rate the curve never reaches."""
    if threshold is None:
        return {}
    return {
        n: ImagePredictions(p.boxes[p.scores >= threshold], p.scores[p.scores >= threshold])
        for n, p in preds.items()
    }


def operating_threshold(thresholds: np.ndarray, nfp: np.ndarray, fps: float) -> float | None:
    """Lowest score threshold whose false positives per NP image stay <= ``fps``.

    ``thresholds`` descend (``+inf`` first) and ``nfp`` rises with them, as
    :func:`pathodet.eval.metrics.froc_curve` returns them. None when even the most
    confident detection exceeds ``fps`` or there is no detection at all.
    """
    ok = np.flatnonzero((nfp <= fps) & np.isfinite(thresholds))
    return float(thresholds[ok[-1]]) if len(ok) else None
