"""DGHM-C (DGHM paper eq. 9-12): gradient harmonizing decoupled into noisy and clean examples.

The image attribute separates anchors whose label may be wrong from those whose label is
certain (section 3.1): negatives of AP images are *noisy* (unannotated SRCs hide among
them); positives of AP images and everything of NP images are *clean*. Each group ``d``
gets its own gradient-norm histogram, ``GD_i = R_d(b_i) * n_d``, and outliers
(``g_i >= lam``) are treated oppositely:

    gamma_i = mu_d if g_i >= lam else 1,     beta_i = N / GD_i ** gamma_i,
    L = sum_i beta_i * BCE_i / (M * N)        (M = number of non-empty groups)

``mu_n >= 1`` down-weights noisy outliers (likely missed SRCs), ``mu_c <= 1`` up-weights
clean outliers (hard examples). DGHM-C* (section 5.1) splits into three groups:
AP_P, AP_N and NP_N.

With co-mining, positives matched to *mined* boxes may be put in the noisy group (AP_N
for DGHM-C*): their label is a pseudo-label (``loss.dghm.pseudo_group``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pathodet.losses.common import bce, check_flat, gradient_norm
from pathodet.losses.ghm import CountReduce, bin_index

CLEAN, NOISY = 0, 1  # DGHM-C groups
AP_P, AP_N, NP_N = 0, 1, 2  # DGHM-C* groups


def dghm_groups(
    targets: Tensor,
    ap_image: Tensor,
    mu_n: float,
    mu_c: float,
    star: bool = False,
    pseudo_positive: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Group of every element and the ``mu`` of every group.

    ``pseudo_positive``: ``(N,)`` bool, positives moved to the noisy group (AP_N with
    ``star``) whatever their image: co-mining's pseudo-labelled anchors.

    Returns:
        ``(group (N,) int64, mu (G,) float32)``; G = 2 (clean, noisy) or 3 with ``star``
        (AP_P, AP_N, NP_N; the rare positive of an NP image counts as NP_N).
    """
    pos = targets > 0.5
    ap = ap_image.bool()
    if star:
        group = torch.full_like(targets, NP_N, dtype=torch.int64)
        group[ap & pos] = AP_P
        group[ap & ~pos] = AP_N
        mu = torch.tensor([mu_c, mu_n, mu_c], dtype=torch.float32, device=targets.device)
    else:
        group = (ap & ~pos).to(torch.int64)  # NOISY = 1, CLEAN = 0
        mu = torch.tensor([mu_c, mu_n], dtype=torch.float32, device=targets.device)
    if pseudo_positive is not None:
        group[pseudo_positive.bool() & pos] = AP_N if star else NOISY
    return group, mu


def dghm_weights(
    g: Tensor,
    group: Tensor,
    mu: Tensor,
    lam: float = 0.9,
    bins: int = 10,
    reduce: CountReduce | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Harmonizing weights of eq. 9-11.

    Args:
        g: ``(N,)`` gradient norms. group: ``(N,)`` group ids in ``0..G-1``. mu: ``(G,)``.
        reduce: sums counts across processes for distributed training.

    Returns:
        ``(beta (N,), N, M)``: float64 ``beta_i = N / GD_i ** gamma_i``, the (global) element
        count and the number of non-empty groups.
    """
    n_groups = mu.numel()
    idx = bin_index(g, bins)
    counts = torch.bincount(group * bins + idx, minlength=n_groups * bins)
    counts = counts.to(torch.float64).view(n_groups, bins)
    if reduce is not None:
        counts = reduce(counts)
    total = counts.sum()
    n_d = (counts > 0).sum(dim=1).to(torch.float64)  # non-empty bins per group
    m = ((counts.sum(dim=1) > 0).sum()).to(torch.float64)
    gd = counts[group, idx] * n_d[group]
    gamma = torch.where(g >= lam, mu[group].to(torch.float64), torch.ones_like(gd))
    beta = total / gd.clamp(min=1.0).pow(gamma)
    return beta, total, m


def dghm_c_loss(
    logits: Tensor,
    targets: Tensor,
    ap_image: Tensor,
    mu_n: float = 2.0,
    mu_c: float = 0.5,
    lam: float = 0.9,
    bins: int = 10,
    star: bool = False,
    reduce: CountReduce | None = None,
    pseudo_positive: Tensor | None = None,
) -> Tensor:
    """DGHM-C loss (eq. 12) over ``(N,)`` logits, hard targets and the AP attribute
    (``pseudo_positive``: see :func:`dghm_groups`).

    With ``mu_n = mu_c = 1`` it equals GHM-C computed per group and averaged over groups;
    with a single non-empty group, GHM-C itself.
    """
    check_flat(logits, targets, ap_image)
    if logits.numel() == 0 and reduce is None:  # with reduce, still join the all-reduce
        return logits.sum() * 0.0
    g = gradient_norm(logits, targets)
    group, mu = dghm_groups(targets, ap_image, mu_n, mu_c, star, pseudo_positive)
    beta, total, m = dghm_weights(g, group, mu, lam, bins, reduce)
    scale = (beta / (m.clamp(min=1) * total.clamp(min=1))).to(torch.float32)
    return (scale * bce(logits, targets)).sum()
