"""Plain cross entropy (eq. 2), the baseline every other loss modifies."""

from __future__ import annotations

from torch import Tensor

from pathodet.losses.common import bce, check_flat, positive_count, reduce_weighted


def ce_loss(
    logits: Tensor,
    targets: Tensor,
    weight: Tensor | None = None,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Sum of BCE over the ``N`` elements divided by the number of positives (RetinaNet).

    Args:
        logits: ``(N,)`` raw scores. targets: ``(N,)`` labels in ``[0, 1]``.
        weight: optional ``(N,)`` per-element weights (soft sampling).
        normalizer: overrides the positive count (e.g. the global count under DDP).
    """
    check_flat(logits, targets, weight)
    norm = positive_count(targets) if normalizer is None else normalizer
    return reduce_weighted(bce(logits, targets), weight, norm)
