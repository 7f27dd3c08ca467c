"""CE, focal and SCE against references written from the equations (float64, per element).

The references are built from scalar float64 torch operations in a Python loop, so autograd
through them gives reference gradients too; nothing from ``pathodet`` is used in them.
"""

from __future__ import annotations

import math

import pytest
import torch

from pathodet.losses import ce_loss, focal_loss, sce_loss

# ---------------------------------------------------------------- references


def _log_sig(x: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(x)) = -softplus(-x), stable for |x| = 100."""
    return -(torch.clamp(-x, min=0) + torch.log1p(torch.exp(-x.abs())))


def _elements(logits: torch.Tensor, targets: torch.Tensor):
    x = logits.detach().double().clone().requires_grad_(True)
    return x, [float(t) for t in targets]


def _finish(x: torch.Tensor, terms: list[torch.Tensor], targets: list[float], weight, norm):
    w = [1.0] * len(terms) if weight is None else [float(v) for v in weight]
    if norm is None:
        norm = max(1, sum(1 for t in targets if t > 0.5))
    total = sum((wi * ti for wi, ti in zip(w, terms, strict=True)), start=x.new_zeros(()))
    loss = total / norm
    grad = torch.autograd.grad(loss, x, allow_unused=True)[0] if x.numel() else x.new_zeros(0)
    if grad is None:
        grad = torch.zeros_like(x)
    return loss.item(), grad


def ref_ce(logits, targets, weight=None, norm=None):
    x, ys = _elements(logits, targets)
    terms = []
    for i, y in enumerate(ys):
        log_p, log_1mp = _log_sig(x[i]), _log_sig(-x[i])
        terms.append(-(y * log_p + (1 - y) * log_1mp))
    return _finish(x, terms, ys, weight, norm)


def ref_focal(logits, targets, alpha=0.25, gamma=2.0, weight=None, norm=None):
    """Lin et al.: -alpha (1-p)^gamma log p for y = 1, -(1-alpha) p^gamma log(1-p) for y = 0."""
    x, ys = _elements(logits, targets)
    terms = []
    for i, y in enumerate(ys):
        p = torch.sigmoid(x[i])
        if y > 0.5:
            a = alpha if alpha >= 0 else 1.0
            terms.append(-a * torch.sigmoid(-x[i]) ** gamma * _log_sig(x[i]))  # 1 - p
        else:
            a = 1 - alpha if alpha >= 0 else 1.0
            terms.append(-a * p**gamma * _log_sig(-x[i]))
    return _finish(x, terms, ys, weight, norm)


def ref_sce(logits, targets, alpha=0.01, beta=1.0, log_zero=-4.0, weight=None, norm=None):
    """alpha * CE(p, y) + beta * CE(y, p), the reverse term with log 0 clipped to log_zero."""

    def clipped_log(v: float) -> float:
        return log_zero if v <= 0 else max(math.log(v), log_zero)

    x, ys = _elements(logits, targets)
    terms = []
    for i, y in enumerate(ys):
        p = torch.sigmoid(x[i])
        ce = -(y * _log_sig(x[i]) + (1 - y) * _log_sig(-x[i]))
        rce = -(p * clipped_log(y) + (1 - p) * clipped_log(1 - y))
        terms.append(alpha * ce + beta * rce)
    return _finish(x, terms, ys, weight, norm)


def check(fn, ref_fn, logits, targets, ref_kwargs=None, rtol=1e-5, **kwargs):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, targets, **kwargs)
    ref, ref_grad = ref_fn(logits, targets, **(ref_kwargs if ref_kwargs is not None else kwargs))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref, rel=rtol, abs=1e-7)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-4, atol=1e-7)
    return loss, x.grad


def batch(seed: int, n: int = 200, pos_frac: float = 0.1):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=gen) * 4
    y = (torch.rand(n, generator=gen) < pos_frac).float()
    return logits, y


LOSSES = {
    "ce": (ce_loss, ref_ce),
    "focal": (focal_loss, ref_focal),
    "sce": (sce_loss, ref_sce),
}


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_with_gradient(name, seed):
    fn, ref_fn = LOSSES[name]
    logits, y = batch(seed)
    assert (y > 0.5).sum() > 1
    _, grad = check(fn, ref_fn, logits, y)
    assert (grad != 0).all()


@pytest.mark.parametrize("name", list(LOSSES))
def test_normalised_by_positive_count(name):
    fn, _ = LOSSES[name]
    logits, y = batch(2)
    n_pos = int((y > 0.5).sum())
    assert n_pos > 1
    per_norm = fn(logits, y, normalizer=1.0)
    torch.testing.assert_close(fn(logits, y), per_norm / n_pos)
    torch.testing.assert_close(fn(logits, y, normalizer=torch.tensor(7.0)), per_norm / 7)


@pytest.mark.parametrize("name", list(LOSSES))
def test_weight_scales_elements(name):
    fn, ref_fn = LOSSES[name]
    logits, y = batch(3)
    w = torch.rand(len(y), generator=torch.Generator().manual_seed(9))
    check(fn, ref_fn, logits, y, weight=w)


def test_focal_parameters():
    logits, y = batch(4)
    check(focal_loss, ref_focal, logits, y, alpha=0.5, gamma=1.0)
    check(focal_loss, ref_focal, logits, y, alpha=-1.0, gamma=3.0)
    # gamma 0 and no alpha is plain CE
    torch.testing.assert_close(focal_loss(logits, y, alpha=-1, gamma=0.0), ce_loss(logits, y))
    # the modulating factor only lowers the loss (every g <= 1), alpha = 0.25 lowers it more
    assert focal_loss(logits, y).item() < focal_loss(logits, y, alpha=-1).item()
    assert focal_loss(logits, y, alpha=-1).item() < ce_loss(logits, y).item()


def test_sce_parameters_and_reverse_term():
    logits, y = batch(5)
    check(sce_loss, ref_sce, logits, y, alpha=0.1, beta=0.5, log_zero=-6.0)
    # alpha 1, beta 0 is CE
    torch.testing.assert_close(sce_loss(logits, y, alpha=1.0, beta=0.0), ce_loss(logits, y))
    # for hard labels the reverse term is -log_zero * |p - y|
    p = logits.sigmoid()
    rce = sce_loss(logits, y, alpha=0.0, beta=1.0, normalizer=1.0)
    torch.testing.assert_close(rce, 4.0 * (p - y).abs().sum())
    # soft labels, some below exp(-4) so the clip matters
    soft = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.97, 1.0] * 5)
    check(sce_loss, ref_sce, logits[:30], soft, alpha=0.01, beta=1.0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_rejects_bad_shapes(name):
    fn, _ = LOSSES[name]
    with pytest.raises(ValueError):
        fn(torch.zeros(4), torch.zeros(5))
    with pytest.raises(ValueError):
        fn(torch.zeros(4), torch.zeros(4), weight=torch.ones(3))


# ---------------------------------------------------------------- degenerate batches


def degenerate(kind: str):
    gen = torch.Generator().manual_seed(11)
    n = 64
    if kind == "empty":
        return torch.zeros(0), torch.zeros(0)
    if kind in ("all_np", "no_positives"):  # these losses do not see the attribute
        return torch.randn(n, generator=gen) * 3, torch.zeros(n)
    if kind == "single_bin":  # every |p - y| = 0.35
        y = (torch.rand(n, generator=gen) < 0.5).float()
        p = torch.where(y > 0.5, torch.full((n,), 0.65), torch.full((n,), 0.35))
        return torch.log(p / (1 - p)), y
    if kind == "extreme":
        x = torch.tensor([100.0, -100.0] * (n // 2))
        return x, (torch.arange(n) % 4 < 2).float()
    if kind == "all_positive":
        return torch.randn(n, generator=gen) * 3, torch.ones(n)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["empty", "all_np", "no_positives", "single_bin", "extreme", "all_positive"]
)
@pytest.mark.parametrize("name", list(LOSSES))
def test_degenerate_batches(name, kind):
    fn, ref_fn = LOSSES[name]
    logits, y = degenerate(kind)
    loss, grad = check(fn, ref_fn, logits, y)
    if kind == "empty":
        assert loss.item() == 0.0 and grad.shape == (0,)
    if kind == "extreme":
        # wrong +-100 logits: CE of 100 each, normalised by the positives
        n_pos = int((y > 0.5).sum())
        wrong = int(((logits > 0) != (y > 0.5)).sum())
        if name == "ce":
            assert loss.item() == pytest.approx(100.0 * wrong / n_pos, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_gamma_below_one_has_finite_gradient_at_extremes(gamma):
    # g = 0 exactly (p = 1 for y = 1): d(g**gamma)/dg is infinite there for gamma < 1
    logits, y = degenerate("extreme")
    loss, grad = check(focal_loss, ref_focal, logits, y, gamma=gamma)
    assert torch.isfinite(loss)
    right = (logits > 0) == (y > 0.5)
    assert (grad[right].abs() < 1e-12).all() and (grad[~right] != 0).all()
