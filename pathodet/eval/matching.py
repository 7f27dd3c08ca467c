"""Greedy matching of predictions to annotated boxes in one image (challenge rule).

Predictions are taken in descending score order (ties keep their order in the file); each
is matched to the still-unmatched annotated box of highest IoU if that IoU reaches the
threshold (0.3 in the challenge). IoU is computed on continuous pixel coordinates
(``(x2 - x1) * (y2 - y1)``, no +1).

Because the order is fixed, the matching at a score threshold ``t`` is the prefix of the
full matching over the predictions with score >= t: one pass gives every threshold.
"""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``x1, y1, x2, y2`` (float64)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep their original order (stable)."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def greedy_match(
    boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.3
) -> np.ndarray:
    """Annotated box matched by each prediction, or -1.

    Args:
        boxes: ``(N, 4)`` predicted boxes. scores: ``(N,)``. gt: ``(M, 4)`` annotated boxes.

    Returns:
        ``(N,)`` int64 index into ``gt`` per prediction (in the input order), -1 if unmatched.
        A box is matched at most once; among equal IoUs the lower box index wins.
    """
    n = len(np.asarray(scores))
    matched = np.full(n, -1, np.int64)
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    if n == 0 or len(gt) == 0:
        return matched
    iou = iou_matrix(boxes, gt)
    free = np.ones(len(gt), bool)
    for i in score_order(scores):
        cand = np.where(free, iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            matched[i] = j
            free[j] = False
    return matched
