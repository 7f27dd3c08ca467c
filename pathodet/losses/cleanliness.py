"""Cleanliness soft labels and re-weighting (Li et al., "Learning from noisy anchors", Alg. 1).

For candidate positives ``A_pos`` (top-N anchors by IoU per annotated box):

    c = alpha * loc_a + (1 - alpha) * cls_c                       (eq. 3, soft label)
    r = (alpha * f(loc_a) + (1 - alpha) * f(cls_c)) ** gamma,  f(x) = 1 / (1 - x)   (eq. 4)

``loc_a`` is the IoU of the *regressed* box with its box and ``cls_c`` the predicted score,
both detached; ``r`` is normalised to mean 1 over ``A_pos`` and weights both the
classification (eq. 5) and the regression loss (eq. 6). Negatives have ``c = 0, r = 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pathodet.losses.common import check_flat
from pathodet.losses.focal import focal_terms

_X_MAX = 1.0 - 1e-3  # f(x) = 1/(1-x) is clamped below x = 1


def cleanliness_targets(
    loc_a: Tensor, cls_c: Tensor, alpha: float = 0.75, gamma: float = 1.0, normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """Soft labels ``c`` and weights ``r`` for the ``(P,)`` anchors of ``A_pos``.

    ``r`` has mean 1 with ``normalize``; without, the caller normalises (e.g. over the
    ``A_pos`` of all processes).
    """
    loc_a = loc_a.detach().float().clamp(0, 1)
    cls_c = cls_c.detach().float().clamp(0, 1)
    c = alpha * loc_a + (1 - alpha) * cls_c

    def f(x: Tensor) -> Tensor:
        return 1.0 / (1.0 - x.clamp(max=_X_MAX))

    r = (alpha * f(loc_a) + (1 - alpha) * f(cls_c)).pow(gamma)
    if normalize and r.numel():
        r = r / r.mean()
    return c, r


def cleanliness_loss(
    logits: Tensor,
    soft_targets: Tensor,
    weight: Tensor,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Focal-weighted BCE with soft labels (eq. 5), summed and divided by ``|A_pos|``.

    Args:
        logits: ``(N,)``. soft_targets: ``(N,)`` ``c`` for ``A_pos``, 0 for negatives.
        weight: ``(N,)`` ``r`` for ``A_pos``, 1 for negatives.
        normalizer: defaults to the number of elements with a positive soft target.
    """
    check_flat(logits, soft_targets, weight)
    t = soft_targets.float()
    loss = focal_terms(logits, t, focal_alpha, focal_gamma, foreground=(t > 0).float())
    if normalizer is None:
        normalizer = (t > 0).sum().clamp(min=1).to(torch.float32)
    return (loss * weight).sum() / normalizer
