"""Anchor labelling: which anchor learns which annotated box.

Two rules:
- :func:`assign_retinanet`: IoU >= ``fg_iou`` positive, < ``bg_iou`` negative, in between
  ignored; with ``allow_low_quality`` each box also claims its best anchors (RetinaNet).
- :func:`assign_topn`: each box takes its top-N anchors by IoU as candidate positives,
  everything else is negative (the noisy-anchors / cleanliness paper, Algorithm 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pathodet.model.boxes import box_iou

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@dataclass
class AnchorLabels:
    """Per-anchor labelling of one image.

    Attributes:
        labels: ``(A,)`` int64 in {1 positive, 0 negative, -1 ignored}.
        matched: ``(A,)`` int64 index of the box an anchor regresses to (valid where
            positive; -1 when the image has no box).
        max_iou: ``(A,)`` float32 max IoU of the anchor with any annotated box (0 if none).
    """

    labels: Tensor
    matched: Tensor
    max_iou: Tensor


def _empty(anchors: Tensor) -> AnchorLabels:
    a = anchors.shape[0]
    return AnchorLabels(
        labels=torch.zeros(a, dtype=torch.int64, device=anchors.device),
        matched=torch.full((a,), -1, dtype=torch.int64, device=anchors.device),
        max_iou=torch.zeros(a, dtype=torch.float32, device=anchors.device),
    )


def assign_retinanet(
    anchors: Tensor,
    boxes: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> AnchorLabels:
    """RetinaNet's rule for ``(A, 4)`` anchors and ``(K, 4)`` boxes of one image."""
    if boxes.numel() == 0:
        return _empty(anchors)
    iou = box_iou(boxes.float(), anchors)  # (K, A)
    max_iou, matched = iou.max(dim=0)
    labels = torch.full_like(matched, IGNORED)
    labels[max_iou >= fg_iou] = POSITIVE
    labels[max_iou < bg_iou] = NEGATIVE
    if allow_low_quality:
        # every box also claims the anchors of its highest IoU (ties included), if any overlap
        best = iou.max(dim=1, keepdim=True).values
        claim = (iou == best) & (best > 0)
        k_idx, a_idx = claim.nonzero(as_tuple=True)
        labels[a_idx] = POSITIVE
        matched[a_idx] = k_idx
    return AnchorLabels(labels, matched, max_iou)


def assign_topn(anchors: Tensor, boxes: Tensor, n: int = 30) -> AnchorLabels:
    """Top-``n`` anchors by IoU per box are positive candidates; all others negative.

    An anchor among the top-``n`` of several boxes goes to the box it overlaps most.
    Anchors with zero IoU are never candidates. Nothing is ignored.
    """
    if boxes.numel() == 0:
        return _empty(anchors)
    iou = box_iou(boxes.float(), anchors)  # (K, A)
    max_iou, _ = iou.max(dim=0)
    k = min(n, anchors.shape[0])
    top_val, top_idx = iou.topk(k, dim=1)  # (K, k)
    in_top = torch.zeros_like(iou, dtype=torch.bool)
    in_top.scatter_(1, top_idx, top_val > 0)
    masked = torch.where(in_top, iou, torch.full_like(iou, -1.0))
    best_val, matched = masked.max(dim=0)
    labels = (best_val >= 0).to(torch.int64)
    matched = torch.where(labels == POSITIVE, matched, torch.full_like(matched, -1))
    return AnchorLabels(labels, matched, max_iou)
