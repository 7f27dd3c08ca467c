"""Soft sampling (Wu et al. 2018, section 5): down-weight negatives that may be missed objects.

Both variants weight *negatives* with a Gompertz curve; positives keep weight 1.

- Overlap based (OSS): ``G(o) = a + (1 - a) * exp(-b * exp(-c * o))`` with ``o`` the anchor's
  max IoU with the annotated boxes. Background far from any annotation (o ~ 0) gets ~a;
  hard negatives next to annotations get ~1.
- Score based: ``G(s, T) = a + (1 - a) * exp(-b * exp(-c * (T - s)))`` with ``s`` a prior
  detector's score for the anchor and ``T`` the median prior score on annotated boxes.
  Negatives the prior detector believes in (s >> T) get ~a.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gompertz(x: Tensor, a: float = 0.25, b: float = 50.0, c: float = 20.0) -> Tensor:
    """``a + (1 - a) * exp(-b * exp(-c * x))``, elementwise; rises from ~a to 1 as x grows."""
    return a + (1 - a) * torch.exp(-b * torch.exp(-c * x.float()))


def _negatives_only(w: Tensor, targets: Tensor, ap_image: Tensor | None, ap_only: bool) -> Tensor:
    """Weight 1 for positives (and, with ``ap_only``, for every NP element), ``w`` elsewhere."""
    keep_one = targets > 0.5
    if ap_only:
        if ap_image is None:
            raise ValueError("ap_only=True needs ap_image")
        keep_one = keep_one | ~ap_image.bool()
    return torch.where(keep_one, torch.ones_like(w), w)


def overlap_weights(
    targets: Tensor,
    iou: Tensor,
    ap_image: Tensor | None = None,
    ap_only: bool = False,
    a: float = 0.25,
    b: float = 50.0,
    c: float = 20.0,
) -> Tensor:
    """OSS weights ``(N,)``: ``G(o)`` for negatives, 1 for positives.

    Args:
        targets: ``(N,)`` labels. iou: ``(N,)`` max IoU of each anchor with annotated boxes.
        ap_image: ``(N,)`` bool; with ``ap_only`` only AP negatives are down-weighted (NP
            negatives are known clean and keep weight 1).
    """
    return _negatives_only(gompertz(iou, a, b, c), targets, ap_image, ap_only)


def score_weights(
    targets: Tensor,
    prior_score: Tensor,
    threshold: float,
    ap_image: Tensor | None = None,
    ap_only: bool = False,
    a: float = 0.25,
    b: float = 50.0,
    c: float = 20.0,
) -> Tensor:
    """Score soft-sampling weights ``(N,)``: ``G(s, T)`` for negatives, 1 for positives.

    Args:
        prior_score: ``(N,)`` scores in ``[0, 1]`` of a detector trained in a first round.
        threshold: ``T``, the median prior score on annotated boxes.
    """
    w = gompertz(threshold - prior_score.float(), a, b, c)
    return _negatives_only(w, targets, ap_image, ap_only)
