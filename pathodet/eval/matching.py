"""Greedy matching of predictions to annotated boxes in one image (challenge rule).

Predictions are taken in descending score order (ties keep their order in the file); each
is matched to the still-unmatched annotated box of highest IoU if the two are the same cell
(:func:`pathodet.model.boxes.same_cell_iou`: IoU >= 0.3 in the challenge, the one "same
cell" rule of every pathodet stage). IoU is computed on continuous pixel coordinates
(``(x2 - x1) * (y2 - y1)``, no +1).

Because the order is fixed, the matching at a score threshold ``t`` is the prefix of the
full matching over the predictions with score >= t: one pass gives every threshold.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import box_iou

from pathodet.model.boxes import SAME_CELL_IOU, same_cell_iou


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``x1, y1, x2, y2`` (float64), by
    :func:`torchvision.ops.box_iou` (the IoU of every pathodet stage); 0 where both boxes
    are empty."""
    a = torch.as_tensor(np.asarray(a, np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4))
    return box_iou(a, b).nan_to_num_(0.0).numpy()


def score_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep their original order (stable)."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def greedy_match(
    boxes: np.ndarray,
    scores: np.ndarray,
    gt: np.ndarray,
    iou_threshold: float = SAME_CELL_IOU,
) -> np.ndarray:
    """Annotated box matched by each prediction, or -1.

    Args:
        boxes: ``(N, 4)`` predicted boxes. scores: ``(N,)``. gt: ``(M, 4)`` annotated boxes
            (pixels of one image).
        iou_threshold: IoU from which a prediction and a box are the same cell; default
            :data:`~pathodet.model.boxes.SAME_CELL_IOU` (0.3, the challenge's).

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
        if same_cell_iou(cand[j], iou_threshold):
            matched[i] = j
            free[j] = False
    return matched
