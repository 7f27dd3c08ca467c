"""Pieces shared by the losses: elementwise BCE, gradient norm g, normalisers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Elementwise binary cross entropy on logits, ``(N,)`` -> ``(N,)`` (eq. 2, computed stably)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")


def gradient_norm(logits: Tensor, targets: Tensor) -> Tensor:
    """``g = |p - p*|`` (eq. 3), the norm of dBCE/dlogit; detached, ``(N,)`` in ``[0, 1]``."""
    return (torch.sigmoid(logits.detach().float()) - targets.float()).abs()


def positive_count(targets: Tensor) -> Tensor:
    """Number of positive elements, at least 1: RetinaNet's normaliser for CE-like losses."""
    return (targets > 0.5).sum().clamp(min=1).to(torch.float32)


def check_flat(logits: Tensor, targets: Tensor, *others: Tensor | None) -> None:
    """Raise ``ValueError`` unless every tensor is 1-D with the same length."""
    n = logits.shape
    for t in (targets, *others):
        if t is not None and t.shape != n:
            raise ValueError(f"loss inputs must share shape {tuple(n)}, got {tuple(t.shape)}")
    if logits.dim() != 1:
        raise ValueError(f"loss inputs must be flat (N,), got shape {tuple(n)}")


def reduce_weighted(
    per_element: Tensor, weight: Tensor | None, normalizer: Tensor | float
) -> Tensor:
    """``sum(weight * per_element) / normalizer``; zero (with a graph) on empty input."""
    if weight is not None:
        per_element = per_element * weight
    return per_element.sum() / normalizer
