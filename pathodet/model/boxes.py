"""Box arithmetic on ``(..., 4)`` tensors of ``x1, y1, x2, y2`` in pixels."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["box_iou", "decode", "encode", "paired_iou"]

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
