"""Box arithmetic on ``(..., 4)`` tensors of ``x1, y1, x2, y2`` in pixels, and the one rule
that says when two boxes are the same cell (:func:`same_cell`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = [
    "SAME_CELL_IOU",
    "box_iou",
    "decode",
    "encode",
    "paired_iou",
    "same_cell",
    "same_cell_iou",
]

SAME_CELL_IOU = 0.3
"""Two boxes are one cell when their IoU is at least this: the instance-matching IoU of the
DigestPath 2019 challenge (task 1 counts a detection as finding an annotated SRC at IoU
>= 0.3, a low bar because signet-ring cells are small and their boxes loosely drawn).
Evaluation matches at it, so every other place that asks "is this the same cell?"
(review export, co-mining's overlap drop, purification's pseudo-label check) uses it too:
a box pathodet calls a second cell is never one that evaluation would call the same cell.
NMS thresholds are a different idea (how much two *detections* may overlap) and are not
this rule."""

# RetinaNet caps predicted log-size changes at log(1000 / 16) to avoid overflow.
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets ``(dx, dy, dw, dh)`` of ``boxes`` w.r.t. ``anchors`` (both ``(N, 4)``).

    ``dx = (gx - ax) / aw``, ``dw = log(gw / aw)`` (unit weights, as RetinaNet).
    """
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = boxes[:, 0] + 0.5 * gw, boxes[:, 1] + 0.5 * gh
    return torch.stack(
        [(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], dim=1
    )


def decode(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode`: ``(N, 4)`` deltas on ``(N, 4)`` anchors -> boxes."""
    deltas = deltas.float()
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    cx, cy = ax + deltas[:, 0] * aw, ay + deltas[:, 1] * ah
    w = aw * torch.exp(deltas[:, 2].clamp(max=_MAX_LOG_SCALE))
    h = ah * torch.exp(deltas[:, 3].clamp(max=_MAX_LOG_SCALE))
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for ``(N, 4)`` inputs -> ``(N,)``."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def same_cell_iou(
    iou: np.ndarray | Tensor, threshold: float = SAME_CELL_IOU
) -> np.ndarray | Tensor:
    """The "same cell" test on IoU values already computed: ``iou >= threshold``
    (inclusive, as the challenge's matching). ``iou``: an array or tensor of any shape;
    the result has the same shape and kind (bool). ``threshold`` other than
    :data:`SAME_CELL_IOU` only where a user asked for it (``pathodet evaluate --iou``)."""
    return iou >= threshold


def same_cell(
    a: np.ndarray | Tensor, b: np.ndarray | Tensor, threshold: float = SAME_CELL_IOU
) -> np.ndarray | Tensor:
    """``(N, M)`` bool: ``a[i]`` and ``b[j]`` are boxes of the same cell (IoU >=
    :data:`SAME_CELL_IOU`; see there why).

    Args:
        a: ``(N, 4)``, b: ``(M, 4)`` boxes ``x1, y1, x2, y2`` in pixels of one image, as
            NumPy arrays (computed in float64) or tensors (in their own dtype).
        threshold: the IoU from which two boxes are one cell.

    Returns:
        A ``(N, M)`` bool tensor for tensor inputs, else a NumPy array. Empty boxes (no
        area) are no cell: their IoU counts as 0.
    """
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        iou = box_iou(a.reshape(-1, 4), b.to(a).reshape(-1, 4)).nan_to_num_(0.0)
        return same_cell_iou(iou, threshold)
    ta = torch.as_tensor(np.asarray(a, np.float64).reshape(-1, 4))
    tb = torch.as_tensor(np.asarray(b, np.float64).reshape(-1, 4))
    return same_cell_iou(box_iou(ta, tb).nan_to_num_(0.0).numpy(), threshold)
