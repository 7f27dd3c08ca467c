"""Soft sampling (overlap and score based) and cleanliness against references from the papers.

References are float64 per-element loops (scalar torch ops where a gradient is needed) and
use nothing from ``pathodet``.
"""

from __future__ import annotations

import math

import pytest
import torch

from pathodet.losses import gompertz, overlap_weights, score_weights
from pathodet.losses.cleanliness import cleanliness_loss, cleanliness_targets
from pathodet.losses.config import LossConfig, SoftSamplingParams
from pathodet.losses.criterion import AnchorBatch, Criterion

A, B, C = 0.25, 50.0, 20.0

# ---------------------------------------------------------------- references


def ref_gompertz(x: float, a=A, b=B, c=C) -> float:
    return a + (1 - a) * math.exp(-b * math.exp(-c * x))


def ref_oss_weights(targets, iou, ap, ap_only=False, a=A, b=B, c=C) -> list[float]:
    out = []
    for y, o, is_ap in zip(targets.tolist(), iou.tolist(), ap.tolist(), strict=True):
        if y > 0.5 or (ap_only and not is_ap):
            out.append(1.0)
        else:
            out.append(ref_gompertz(o, a, b, c))
    return out


def ref_score_weights(targets, score, t, ap, ap_only=False, a=A, b=B, c=C) -> list[float]:
    out = []
    for y, s, is_ap in zip(targets.tolist(), score.tolist(), ap.tolist(), strict=True):
        if y > 0.5 or (ap_only and not is_ap):
            out.append(1.0)
        else:
            out.append(a + (1 - a) * math.exp(-b * math.exp(-c * (t - s))))
    return out


def _log_sig(x: torch.Tensor) -> torch.Tensor:
    return -(torch.clamp(-x, min=0) + torch.log1p(torch.exp(-x.abs())))


def ref_weighted(logits, targets, weights, base="focal", alpha=0.25, gamma=2.0):
    """sum_i w_i * base_i / max(1, #positives) and its gradient (weights are constants)."""
    x = logits.detach().double().clone().requires_grad_(True)
    ys = targets.tolist()
    total = x.new_zeros(())
    for i, (y, w) in enumerate(zip(ys, weights, strict=True)):
        p = torch.sigmoid(x[i])
        if base == "ce":
            term = -(y * _log_sig(x[i]) + (1 - y) * _log_sig(-x[i]))
        elif y > 0.5:
            term = -alpha * (1 - p) ** gamma * _log_sig(x[i])
        else:
            term = -(1 - alpha) * p**gamma * _log_sig(-x[i])
        total = total + w * term
    loss = total / max(1, sum(1 for y in ys if y > 0.5))
    grad = torch.autograd.grad(loss, x)[0] if x.numel() else x.new_zeros(0)
    return loss.item(), grad


def ref_cleanliness_targets(loc_a, cls_c, alpha=0.75, gamma=1.0):
    """Eq. 3 and 4 with r normalised to mean 1 (inputs below 1, so f needs no clamp)."""
    c, r = [], []
    for la, cc in zip(loc_a.tolist(), cls_c.tolist(), strict=True):
        c.append(alpha * la + (1 - alpha) * cc)
        r.append((alpha / (1 - la) + (1 - alpha) / (1 - cc)) ** gamma)
    mean = sum(r) / len(r)
    return c, [v / mean for v in r]


def ref_cleanliness_loss(logits, soft, weight, focal_alpha=0.25, focal_gamma=2.0, norm=None):
    """sum_i r_i * alpha_t * |p - c|^gamma * BCE(p, c) / normaliser (eq. 5, focal-weighted)."""
    x = logits.detach().double().clone().requires_grad_(True)
    cs, ws = soft.tolist(), weight.tolist()
    total = x.new_zeros(())
    for i, (c, w) in enumerate(zip(cs, ws, strict=True)):
        p = torch.sigmoid(x[i])
        bce = -(c * _log_sig(x[i]) + (1 - c) * _log_sig(-x[i]))
        a_t = 1.0 if focal_alpha < 0 else (focal_alpha if c > 0 else 1 - focal_alpha)
        total = total + w * a_t * (p - c).abs() ** focal_gamma * bce
    if norm is None:
        norm = max(1, sum(1 for c in cs if c > 0))
    loss = total / norm
    grad = torch.autograd.grad(loss, x)[0] if x.numel() else x.new_zeros(0)
    return loss.item(), grad


# ---------------------------------------------------------------- data


def classify(name: str, batch: AnchorBatch, cfg: LossConfig):
    """The classification loss ``name`` of the criterion built from ``cfg``."""
    return Criterion(cfg.model_copy(update={"name": name})).classification(batch)


def anchor_batch(seed: int, n: int = 150, kind: str = "random") -> AnchorBatch:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=gen) * 3
    y = (torch.rand(n, generator=gen) < 0.15).float()
    ap = torch.rand(n, generator=gen) < 0.6
    if kind == "empty":
        logits, y, ap = torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    elif kind == "all_np":
        y, ap = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    elif kind == "no_positives":
        y = torch.zeros(n)
    elif kind == "single_bin":
        p = torch.where(y > 0.5, torch.full((n,), 0.65), torch.full((n,), 0.35))
        logits = torch.log(p / (1 - p))
    elif kind == "extreme":
        logits = torch.tensor([100.0, -100.0] * (n // 2))
        y = (torch.arange(n) % 4 < 2).float()
    n = len(y)
    # positives overlap >= 0.5, negatives < 0.4 (many near 0, some hard ones)
    iou = torch.where(
        y > 0.5, 0.5 + 0.5 * torch.rand(n, generator=gen), 0.4 * torch.rand(n, generator=gen) ** 2
    )
    iou = torch.where(ap, iou, torch.zeros(n))  # NP images have no annotated box
    prior = torch.rand(n, generator=gen)
    return AnchorBatch(logits=logits, targets=y, ap_image=ap, iou=iou, prior_score=prior)


def cfg_for(name: str, **ss) -> LossConfig:
    ss.setdefault("threshold", 0.6)
    return LossConfig(name=name, soft_sampling=SoftSamplingParams(**ss))


# ---------------------------------------------------------------- Gompertz and weights


def test_gompertz_matches_formula_and_shape():
    x = torch.linspace(-1, 1, 41)
    torch.testing.assert_close(
        gompertz(x).double(), torch.tensor([ref_gompertz(v) for v in x.tolist()]).double()
    )
    torch.testing.assert_close(
        gompertz(x, 0.1, 5.0, 3.0).double(),
        torch.tensor([ref_gompertz(v, 0.1, 5.0, 3.0) for v in x.tolist()]).double(),
    )
    g = gompertz(torch.linspace(0, 1, 101))
    assert (g[1:] >= g[:-1]).all()  # rising
    assert g[0].item() == pytest.approx(0.25, abs=1e-12)  # o = 0: about a
    assert g[-1].item() == pytest.approx(1.0, abs=1e-6)  # o = 1: about 1
    assert 0.3 < gompertz(torch.tensor(0.2)).item() < 0.9  # the rise is around ln(b)/c ~ 0.2


@pytest.mark.parametrize("ap_only", [False, True])
def test_overlap_weights(ap_only):
    batch = anchor_batch(0)
    w = overlap_weights(batch.targets, batch.iou, batch.ap_image, ap_only)
    ref = ref_oss_weights(batch.targets, batch.iou, batch.ap_image, ap_only)
    torch.testing.assert_close(
        w.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    assert (w[batch.targets > 0.5] == 1).all()
    np_neg = ~batch.ap_image & (batch.targets < 0.5)
    assert np_neg.any()
    expected_np = 1.0 if ap_only else pytest.approx(0.25, abs=1e-9)
    assert all(v == expected_np for v in w[np_neg].tolist())


def test_ap_only_needs_the_attribute():
    with pytest.raises(ValueError):
        overlap_weights(torch.zeros(3), torch.zeros(3), None, ap_only=True)
    with pytest.raises(ValueError):
        score_weights(torch.zeros(3), torch.zeros(3), 0.5, None, ap_only=True)


@pytest.mark.parametrize("ap_only", [False, True])
def test_score_weights(ap_only):
    batch = anchor_batch(1)
    t = 0.6
    w = score_weights(batch.targets, batch.prior_score, t, batch.ap_image, ap_only)
    ref = ref_score_weights(batch.targets, batch.prior_score, t, batch.ap_image, ap_only)
    torch.testing.assert_close(
        w.double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-6
    )
    # a negative the prior detector believes in (s >> T) gets about a, one it rejects about 1
    y0, ap1 = torch.zeros(2), torch.ones(2, dtype=torch.bool)
    w2 = score_weights(y0, torch.tensor([1.0, 0.0]), 0.6, ap1)
    assert w2[0].item() == pytest.approx(0.25, abs=1e-6)
    assert w2[1].item() == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------- OSS / score SS losses


@pytest.mark.parametrize("base", ["focal", "ce"])
@pytest.mark.parametrize("ap_only", [False, True])
@pytest.mark.parametrize("name", ["oss", "score_ss"])
def test_soft_sampling_loss_matches_reference(name, ap_only, base):
    batch = anchor_batch(2)
    cfg = cfg_for(name, ap_only=ap_only, base=base)
    if name == "oss":
        w = ref_oss_weights(batch.targets, batch.iou, batch.ap_image, ap_only)
    else:
        w = ref_score_weights(batch.targets, batch.prior_score, 0.6, batch.ap_image, ap_only)
    x = batch.logits.clone().requires_grad_(True)
    batch.logits = x
    loss = classify(name, batch, cfg)
    ref, grad = ref_weighted(x, batch.targets, w, base)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(x.grad.double(), grad, rtol=1e-4, atol=1e-8)
    # soft sampling only ever lowers the loss of the base loss
    plain = ref_weighted(x, batch.targets, [1.0] * len(w), base)[0]
    assert loss.item() < plain


def test_score_ss_needs_prior_and_threshold():
    batch = anchor_batch(3)
    with pytest.raises(ValueError, match="score_ss"):
        classify("score_ss", batch, LossConfig(name="score_ss"))
    batch.prior_score = None
    with pytest.raises(ValueError, match="score_ss"):
        classify("score_ss", batch, cfg_for("score_ss"))


# ---------------------------------------------------------------- cleanliness


@pytest.mark.parametrize(("alpha", "gamma"), [(0.75, 1.0), (0.5, 2.0), (1.0, 1.0), (0.0, 0.5)])
def test_cleanliness_targets_match_reference(alpha, gamma):
    gen = torch.Generator().manual_seed(4)
    loc_a = torch.rand(40, generator=gen) * 0.98
    cls_c = torch.rand(40, generator=gen) * 0.98
    c, r = cleanliness_targets(loc_a, cls_c, alpha, gamma)
    ref_c, ref_r = ref_cleanliness_targets(loc_a, cls_c, alpha, gamma)
    torch.testing.assert_close(c.double(), torch.tensor(ref_c, dtype=torch.float64))
    torch.testing.assert_close(
        r.double(), torch.tensor(ref_r, dtype=torch.float64), rtol=1e-5, atol=1e-7
    )
    assert r.mean().item() == pytest.approx(1.0, rel=1e-5)


def test_cleanliness_targets_are_detached_and_finite_at_one():
    loc_a = torch.tensor([1.0, 0.9, 0.3, 0.0], requires_grad=True)
    cls_c = torch.tensor([1.0, 0.99, 0.2, 0.0], requires_grad=True)
    c, r = cleanliness_targets(loc_a, cls_c)
    assert not c.requires_grad and not r.requires_grad
    assert torch.isfinite(r).all() and torch.isfinite(c).all()
    assert c[0].item() == pytest.approx(1.0)
    # f is clamped below 1, yet still the largest: r decreases with cleanliness
    assert (r[:-1] > r[1:]).all()
    ref = ref_cleanliness_targets(torch.tensor([0.99, 0.3, 0.0]), torch.tensor([0.99, 0.2, 0.0]))
    ratio = ref[1][0] / ref[1][1]  # clamp at 0.99 would give at least this
    assert (r[0] / r[2]).item() >= ratio
    # empty A_pos (no annotated box in the batch)
    c0, r0 = cleanliness_targets(torch.zeros(0), torch.zeros(0))
    assert c0.shape == (0,) and r0.shape == (0,)


@pytest.mark.parametrize(("focal_alpha", "focal_gamma"), [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.0)])
def test_cleanliness_loss_matches_reference(focal_alpha, focal_gamma):
    gen = torch.Generator().manual_seed(5)
    n, p = 120, 25
    logits = torch.randn(n, generator=gen) * 3
    soft = torch.zeros(n)
    weight = torch.ones(n)
    idx = torch.randperm(n, generator=gen)[:p]
    c, r = cleanliness_targets(torch.rand(p, generator=gen), torch.rand(p, generator=gen))
    soft[idx], weight[idx] = c, r
    x = logits.clone().requires_grad_(True)
    loss = cleanliness_loss(x, soft, weight, focal_alpha, focal_gamma)
    ref, grad = ref_cleanliness_loss(logits, soft, weight, focal_alpha, focal_gamma)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    torch.testing.assert_close(x.grad.double(), grad, rtol=1e-4, atol=1e-8)
    assert (x.grad != 0).all()
    normed = cleanliness_loss(logits, soft, weight, focal_alpha, focal_gamma, normalizer=3.0)
    assert normed.item() == pytest.approx(ref * p / 3, rel=1e-5)


def test_cleanliness_loss_without_focal_is_equation_5():
    # sum over A_pos of r_i BCE(p_i, c_i) plus sum over A_neg of BCE(p_j, 0)
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(30, generator=gen)
    soft = torch.zeros(30)
    weight = torch.ones(30)
    soft[:10] = torch.rand(10, generator=gen) * 0.9 + 0.05
    weight[:10] = torch.rand(10, generator=gen) + 0.5
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, soft, reduction="none")
    expected = (weight[:10] * bce[:10]).sum() + bce[10:].sum()
    got = cleanliness_loss(logits, soft, weight, focal_alpha=-1, focal_gamma=0.0, normalizer=1.0)
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------- degenerate batches


@pytest.mark.parametrize("kind", ["empty", "all_np", "no_positives", "single_bin", "extreme"])
@pytest.mark.parametrize("name", ["oss", "oss_ap_only", "score_ss", "cleanliness"])
def test_degenerate_batches(name, kind):
    batch = anchor_batch(7, kind=kind)
    x = batch.logits.clone().requires_grad_(True)
    batch.logits = x
    if name == "cleanliness":
        pos = batch.targets > 0.5
        c, r = cleanliness_targets(batch.iou[pos], torch.sigmoid(batch.logits[pos]))
        soft, weight = torch.zeros_like(x), torch.ones_like(x)
        soft[pos], weight[pos] = c.clamp(min=1e-3), r
        loss = cleanliness_loss(x, soft.detach(), weight.detach())
        ref, grad = ref_cleanliness_loss(x, soft, weight)
    else:
        ap_only = name == "oss_ap_only"
        key = "score_ss" if name == "score_ss" else "oss"
        loss = classify(key, batch, cfg_for(key, ap_only=ap_only))
        if key == "oss":
            w = ref_oss_weights(batch.targets, batch.iou, batch.ap_image, ap_only)
        else:
            w = ref_score_weights(batch.targets, batch.prior_score, 0.6, batch.ap_image)
        ref, grad = ref_weighted(x, batch.targets, w)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.double(), grad, rtol=1e-4, atol=1e-8)
    if kind == "empty":
        assert loss.item() == 0.0


@pytest.mark.parametrize("focal_gamma", [0.5, 2.0])
def test_cleanliness_loss_gradient_finite_when_prediction_equals_label(focal_gamma):
    logits = torch.tensor([100.0, -120.0, 0.0, 3.0], requires_grad=True)
    soft = torch.tensor([1.0, 0.0, 0.5, 0.0])
    weight = torch.tensor([0.5, 1.0, 1.5, 1.0])
    loss = cleanliness_loss(logits, soft, weight, focal_gamma=focal_gamma)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[:3].abs() < 1e-12).all() and logits.grad[3] > 0
