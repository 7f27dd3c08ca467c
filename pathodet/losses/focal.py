"""Focal loss (eq. 4; Lin et al.): ``alpha_t * g**gamma * CE``."""

from __future__ import annotations

from torch import Tensor

from pathodet.losses.common import bce, check_flat, positive_count, reduce_weighted


def focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weight: Tensor | None = None,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Sigmoid focal loss summed over elements and divided by the number of positives.

    ``alpha`` weighs foreground (``1 - alpha`` background); the modulating factor uses the
    gradient norm ``g = |p - t|`` so soft targets work too. ``alpha < 0`` disables it.

    Args:
        logits, targets: ``(N,)``. weight: optional ``(N,)``. normalizer: see ``ce_loss``.
    """
    check_flat(logits, targets, weight)
    loss = focal_terms(logits, targets, alpha, gamma)
    norm = positive_count(targets) if normalizer is None else normalizer
    return reduce_weighted(loss, weight, norm)


def focal_terms(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    foreground: Tensor | None = None,
) -> Tensor:
    """Per-element focal loss ``(N,)``: ``alpha_t * |p - t|**gamma * BCE(p, t)``.

    ``alpha_t = alpha * f + (1 - alpha) * (1 - f)`` with ``f`` = ``foreground`` (defaults to
    the targets; soft-label losses pass a 0/1 mask). ``alpha < 0`` disables it.
    """
    t = targets.float()
    p = logits.float().sigmoid()
    # clamped away from 0: d(g**gamma)/dg is infinite at g = 0 for gamma < 1 (NaN gradients)
    g = (p - t).abs().clamp(min=1e-12)
    loss = bce(logits, t) * g.pow(gamma)
    if alpha >= 0:
        f = t if foreground is None else foreground.float()
        loss = loss * (alpha * f + (1 - alpha) * (1 - f))
    return loss
