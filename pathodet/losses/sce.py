"""Symmetric cross entropy (eq. 8; Wang et al. 2019): ``alpha * CE + beta * RCE``."""

from __future__ import annotations

import torch
from torch import Tensor

from pathodet.losses.common import bce, check_flat, positive_count, reduce_weighted


def sce_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.01,
    beta: float = 1.0,
    log_zero: float = -4.0,
    weight: Tensor | None = None,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """SCE over sigmoid outputs, divided by the number of positives.

    The reverse term swaps prediction and label, ``RCE = -(p log t + (1-p) log(1-t))``, with
    ``log 0`` clipped to ``log_zero`` (-4, the SCE paper's A); for hard labels it equals
    ``-log_zero * |p - t|``.
    """
    check_flat(logits, targets, weight)
    t = targets.float()
    p = logits.float().sigmoid()
    floor = torch.exp(torch.tensor(log_zero))
    log_t = torch.log(t.clamp(min=floor))
    log_1mt = torch.log((1 - t).clamp(min=floor))
    rce = -(p * log_t + (1 - p) * log_1mt)
    loss = alpha * bce(logits, t) + beta * rce
    norm = positive_count(targets) if normalizer is None else normalizer
    return reduce_weighted(loss, weight, norm)
