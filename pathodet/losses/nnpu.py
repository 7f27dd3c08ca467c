"""Non-negative positive-unlabeled risk (PU purification paper, Eq. 5-6; Kiryo et al. 2017).

A tile classifier ``g`` (one logit per tile) is trained from positives ``x_p`` (tiles
holding annotated SRCs) and unlabeled tiles ``x_u`` (the pool), with the class prior
``pi_p = p(y = +1)`` of the pool. With a surrogate loss ``l(g, y)``:

    R_p^+ = mean l(g(x_p), +1)      R_p^- = mean l(g(x_p), -1)      R_u^- = mean l(g(x_u), -1)

    Eq. 5 (unbiased PU):     R_pu = pi_p R_p^+ - pi_p R_p^- + R_u^-
    Eq. 6 (non-negative):    R_pu = pi_p R_p^+ + max(0, R_u^- - pi_p R_p^-)

``R_u^- - pi_p R_p^-`` estimates ``pi_n R_n^-``, the negatives' risk, which cannot be
negative; a flexible model drives the unbiased estimate below zero by memorising the
positives, and Eq. 6 clamps it. Where it is clamped, the gradient of Eq. 6 alone would
ignore the negatives, so training follows Kiryo et al.'s Algorithm 1: when the estimate
falls below ``-beta`` the step descends on ``-gamma * (R_u^- - pi_p R_p^-)`` (pushing it back
up) instead of on the risk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Surrogate = Literal["sigmoid", "logistic"]


def surrogate_loss(g: Tensor, y: int, kind: Surrogate = "sigmoid") -> Tensor:
    """Elementwise ``l(g, y)`` for labels ``y`` in ``{+1, -1}``: ``(N,)`` -> ``(N,)``.

    ``sigmoid``: ``1 / (1 + exp(y g))`` (bounded, Kiryo et al.'s choice);
    ``logistic``: ``log(1 + exp(-y g))``.
    """
    if y not in (1, -1):
        raise ValueError(f"y must be +1 or -1, got {y}")
    z = -y * g.float()
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "logistic":
        return F.softplus(z)
    raise ValueError(f"unknown surrogate loss {kind!r}")


@dataclass
class PURisk:
    """The parts of one mini-batch's PU risk (scalars).

    Attributes:
        risk: Eq. 6, the value to report.
        positive: ``pi_p R_p^+``.
        negative: ``R_u^- - pi_p R_p^-``, the unclamped estimate of ``pi_n R_n^-``.
        objective: what to backpropagate (Eq. 6, or ``-gamma * negative`` when
            ``negative < -beta``).
        clamped: whether ``negative < -beta`` (the defocused step was taken).
    """

    risk: Tensor
    positive: Tensor
    negative: Tensor
    objective: Tensor
    clamped: bool


def nnpu_risk(
    g_p: Tensor,
    g_u: Tensor,
    prior: float,
    kind: Surrogate = "sigmoid",
    beta: float = 0.0,
    gamma: float = 1.0,
) -> PURisk:
    """Non-negative PU risk of logits ``g_p (n_p,)`` on positives and ``g_u (n_u,)`` on
    unlabeled tiles, class prior ``prior`` in ``(0, 1)`` (Eq. 6 and Kiryo et al.'s step)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"class prior must be in (0, 1), got {prior}")
    if g_p.numel() == 0 or g_u.numel() == 0:
        raise ValueError("the PU risk needs at least one positive and one unlabeled tile")
    r_p_plus = surrogate_loss(g_p, 1, kind).mean()
    r_p_minus = surrogate_loss(g_p, -1, kind).mean()
    r_u_minus = surrogate_loss(g_u, -1, kind).mean()
    positive = prior * r_p_plus
    negative = r_u_minus - prior * r_p_minus
    risk = positive + negative.clamp(min=0.0)
    clamped = bool(negative.detach() < -beta)
    objective = -gamma * negative if clamped else risk
    return PURisk(risk, positive, negative, objective, clamped)


def upu_risk(g_p: Tensor, g_u: Tensor, prior: float, kind: Surrogate = "sigmoid") -> Tensor:
    """The unbiased PU risk of Eq. 5 (may be negative; for comparison and tests)."""
    r = nnpu_risk(g_p, g_u, prior, kind)
    return r.positive + r.negative
