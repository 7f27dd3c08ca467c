"""GHM-C (Li et al. 2019; DGHM paper eq. 5-7): CE re-weighted by inverse gradient density.

With ``bins`` unit regions of the gradient norm ``g = |p - p*|`` (edges ``k / bins``, the
last one inclusive), ``R(b)`` the number of elements in bin ``b`` and ``n`` the number of
non-empty bins, the density is approximated as ``GD(g_i) = R(b_i) * n`` and

    beta_i = N / GD(g_i),        L = sum_i beta_i * BCE_i / N.

Optionally the bin counts are an exponential moving average over steps (``momentum``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pathodet.losses.common import bce, check_flat, gradient_norm

CountReduce = Callable[[Tensor], Tensor]
"""Sums a count tensor over processes (all-reduce) so every rank sees global statistics."""


def bin_edges(bins: int, device: torch.device | None = None) -> Tensor:
    """``(bins + 1,)`` edges ``0, 1/bins, ..., 1`` of the unit regions of ``g``."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    return torch.arange(bins + 1, dtype=torch.float32, device=device) / bins


def bin_index(g: Tensor, bins: int) -> Tensor:
    """Bin of each ``g`` in ``[0, 1]``: ``b`` with ``edge[b] <= g < edge[b+1]``, last bin closed."""
    inner = bin_edges(bins, g.device)[1:-1]
    return torch.bucketize(g.float().contiguous(), inner, right=True)


def ghm_weights(
    g: Tensor,
    bins: int = 10,
    momentum: float = 0.0,
    acc_sum: Tensor | None = None,
    reduce: CountReduce | None = None,
) -> tuple[Tensor, Tensor]:
    """GHM weights ``beta_i / N = 1 / (R(b_i) * n)`` and the element count ``N``.

    Args:
        g: ``(N,)`` gradient norms in ``[0, 1]``.
        momentum: EMA factor for the bin counts; needs ``acc_sum`` ``(bins,)``, updated in
            place (first use: initialise it to zeros).
        reduce: sums counts across processes (all-reduce) for distributed training.

    Returns:
        ``(w, N)``: ``(N,)`` float32 weights with ``beta_i = N * w_i``, and the (global) count.
    """
    idx = bin_index(g, bins)
    counts = torch.bincount(idx, minlength=bins).to(torch.float32)
    if reduce is not None:
        counts = reduce(counts)
    total = counts.sum()
    nonempty = counts > 0
    n = nonempty.sum().clamp(min=1).to(torch.float32)
    if momentum > 0:
        if acc_sum is None:
            raise ValueError("momentum > 0 needs an acc_sum buffer of shape (bins,)")
        acc_sum[nonempty] = momentum * acc_sum[nonempty] + (1 - momentum) * counts[nonempty]
        density = acc_sum.clone()
    else:
        density = counts
    w = 1.0 / (density[idx].clamp(min=1e-12) * n)
    return w, total


def ghm_c_loss(
    logits: Tensor,
    targets: Tensor,
    bins: int = 10,
    momentum: float = 0.0,
    acc_sum: Tensor | None = None,
    reduce: CountReduce | None = None,
) -> Tensor:
    """GHM-C loss (eq. 7) over ``(N,)`` logits and targets; weights are not differentiated."""
    check_flat(logits, targets)
    if logits.numel() == 0 and reduce is None:  # with reduce, still join the all-reduce
        return logits.sum() * 0.0
    g = gradient_norm(logits, targets)
    w, _ = ghm_weights(g, bins, momentum, acc_sum, reduce)
    # beta_i = N * w_i and L = sum_i beta_i * BCE_i / N, so N cancels.
    return (w * bce(logits, targets)).sum()
