"""nnPU risk (Eq. 5-6, Kiryo et al. 2017) and self-distillation losses (Eq. 11, 14, 15).

Expected values are computed by hand with ``math`` on small made-up numbers, or by slow
Python-loop references; nothing from ``pathodet`` is used to build them.
"""

from __future__ import annotations

import math

import pytest
import torch

from pathodet.losses.distill import hint_loss, imitation_mask, kd_cls_loss, kd_reg_loss
from pathodet.losses.nnpu import nnpu_risk, surrogate_loss, upu_risk


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def t(xs, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32, requires_grad=grad)


# Surrogates written out: l(g, +1) and l(g, -1).
SURR = {
    "sigmoid": (lambda g: 1.0 / (1.0 + math.exp(g)), lambda g: 1.0 / (1.0 + math.exp(-g))),
    "logistic": (lambda g: math.log(1.0 + math.exp(-g)), lambda g: math.log(1.0 + math.exp(g))),
}


def hand_parts(gp: list[float], gu: list[float], prior: float, kind: str):
    lpos, lneg = SURR[kind]
    positive = prior * mean([lpos(g) for g in gp])
    negative = mean([lneg(g) for g in gu]) - prior * mean([lneg(g) for g in gp])
    return positive, negative


# ---------------------------------------------------------------- nnPU


@pytest.mark.parametrize("kind", ["sigmoid", "logistic"])
def test_surrogate_loss_values(kind):
    lpos, lneg = SURR[kind]
    g = [2.0, -1.0, 0.0]
    assert surrogate_loss(t(g), 1, kind).tolist() == pytest.approx([lpos(v) for v in g], rel=1e-6)
    assert surrogate_loss(t(g), -1, kind).tolist() == pytest.approx([lneg(v) for v in g], rel=1e-6)


@pytest.mark.parametrize("kind", ["sigmoid", "logistic"])
def test_nnpu_risk_hand_values(kind):
    gp, gu, prior = [2.0, -1.0], [0.5, -0.5, 1.0], 0.3
    positive, negative = hand_parts(gp, gu, prior, kind)
    assert negative > 0  # not clamped: Eq. 6 equals Eq. 5 here
    r = nnpu_risk(t(gp), t(gu), prior, kind)
    assert r.positive.item() == pytest.approx(positive, rel=1e-6)
    assert r.negative.item() == pytest.approx(negative, rel=1e-6)
    assert r.risk.item() == pytest.approx(positive + negative, rel=1e-6)
    assert r.objective.item() == pytest.approx(positive + negative, rel=1e-6)
    assert r.clamped is False


@pytest.mark.parametrize("kind", ["sigmoid", "logistic"])
def test_nnpu_clamp_and_defocused_gradient(kind):
    # Unlabeled tiles look very negative, positives look positive: R_p^- is large and the
    # negative-risk estimate R_u^- - pi R_p^- drops below zero.
    gp, gu, prior, gamma = [3.0, 4.0], [-5.0, -5.0, -6.0], 0.3, 0.5
    positive, negative = hand_parts(gp, gu, prior, kind)
    assert negative < 0
    g_p, g_u = t(gp, grad=True), t(gu, grad=True)
    r = nnpu_risk(g_p, g_u, prior, kind, beta=0.0, gamma=gamma)
    assert r.clamped is True
    assert r.risk.item() == pytest.approx(positive, rel=1e-6)  # pi R_p^+ + max(0, <0)
    assert r.negative.item() == pytest.approx(negative, rel=1e-6)
    assert r.objective.item() == pytest.approx(-gamma * negative, rel=1e-6)
    grad_p, grad_u = torch.autograd.grad(r.objective, [g_p, g_u])
    # d l(g, -1) / dg: sigmoid -> s(1 - s); logistic (softplus(g)) -> s, with s = sigmoid(g).
    dneg = (lambda s: s * (1 - s)) if kind == "sigmoid" else (lambda s: s)
    exp_u = [-gamma / len(gu) * dneg(sig(g)) for g in gu]
    exp_p = [gamma * prior / len(gp) * dneg(sig(g)) for g in gp]
    assert grad_u.tolist() == pytest.approx(exp_u, rel=1e-5, abs=1e-9)
    assert grad_p.tolist() == pytest.approx(exp_p, rel=1e-5, abs=1e-9)
    # The unlabeled logits get pushed up (descending on -gamma*negative raises R_u^-).
    assert all(v < 0 for v in grad_u.tolist())


def test_nnpu_beta_margin_keeps_risk_objective():
    # g_p = 0: R_p^- = 1/2, pi R_p^- = 0.15; sigmoid(-1.9) ~ 0.130 -> negative ~ -0.02.
    gp, gu, prior = [0.0, 0.0], [-1.9], 0.3
    positive, negative = hand_parts(gp, gu, prior, "sigmoid")
    assert -0.05 < negative < 0
    g_p, g_u = t(gp, grad=True), t(gu, grad=True)
    r = nnpu_risk(g_p, g_u, prior, beta=0.05, gamma=1.0)
    assert r.clamped is False
    assert r.objective.item() == r.risk.item()
    assert r.risk.item() == pytest.approx(positive, rel=1e-6)  # Eq. 6 clamp still applied
    assert r.negative.item() == pytest.approx(negative, rel=1e-5)
    # Eq. 6's gradient ignores the clamped negative part: nothing reaches g_u.
    grad_p, grad_u = torch.autograd.grad(r.objective, [g_p, g_u])
    assert grad_u.tolist() == [0.0]
    # d(pi * mean 1/(1+e^g))/dg at g = 0 is -pi * 1/4 / n_p.
    assert grad_p.tolist() == pytest.approx([-prior * 0.25 / 2] * 2, rel=1e-6)
    # Without the margin the same batch takes the defocused step.
    assert nnpu_risk(t(gp), t(gu), prior, beta=0.0).clamped is True


@pytest.mark.parametrize("kind", ["sigmoid", "logistic"])
def test_upu_risk_is_sum_and_can_be_negative(kind):
    gp, gu, prior = [3.0, 4.0], [-5.0, -5.0, -6.0], 0.3
    positive, negative = hand_parts(gp, gu, prior, kind)
    value = upu_risk(t(gp), t(gu), prior, kind).item()
    assert value == pytest.approx(positive + negative, rel=1e-5)
    assert value < 0
    gp2, gu2 = [2.0, -1.0], [0.5, -0.5, 1.0]
    positive2, negative2 = hand_parts(gp2, gu2, prior, kind)
    assert upu_risk(t(gp2), t(gu2), prior, kind).item() == pytest.approx(positive2 + negative2)


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.1, 1.5])
def test_prior_out_of_range(prior):
    with pytest.raises(ValueError, match="prior"):
        nnpu_risk(t([1.0]), t([0.0]), prior)
    with pytest.raises(ValueError, match="prior"):
        upu_risk(t([1.0]), t([0.0]), prior)


def test_empty_inputs_and_bad_labels():
    with pytest.raises(ValueError):
        nnpu_risk(t([]), t([0.0]), 0.3)
    with pytest.raises(ValueError):
        nnpu_risk(t([1.0]), t([]), 0.3)
    for y in (0, 2, -2):
        with pytest.raises(ValueError, match="y must be"):
            surrogate_loss(t([1.0]), y)
    with pytest.raises(ValueError, match="surrogate"):
        surrogate_loss(t([1.0]), 1, "hinge")  # type: ignore[arg-type]


# ---------------------------------------------------------------- imitation mask


def iou_ref(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_anchors(level_shapes, strides, sizes_per_level):
    """Anchors ordered level, row, column, anchor; centred on each location."""
    out = []
    for (h, w), stride, sizes in zip(level_shapes, strides, sizes_per_level, strict=True):
        for r in range(h):
            for c in range(w):
                cx, cy = (c + 0.5) * stride, (r + 0.5) * stride
                out += [[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2] for s in sizes]
    return out


def mask_ref(anchors, level_shapes, boxes, psi):
    locs = sum(h * w for h, w in level_shapes)
    a = len(anchors) // locs
    masks, start = [], 0
    for h, w in level_shapes:
        level = anchors[start : start + h * w * a]
        start += h * w * a
        m = [[False] * w for _ in range(h)]
        for box in boxes:
            ious = [iou_ref(anc, box) for anc in level]
            thr = psi * max(ious)
            for i, v in enumerate(ious):
                if v > thr:
                    loc = i // a
                    m[loc // w][loc % w] = True
        masks.append(m)
    return masks


SHAPES = [(2, 2), (1, 1)]


def test_imitation_mask_by_hand():
    anchors = make_anchors(SHAPES, [8, 16], [[8], [16]])
    assert anchors[:4] == [[0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]]
    # Box [0,0,10,10]: IoUs 64/100, 16/148, 16/148, 4/160 on level 0, 100/256 on level 1.
    # Box [9,9,16,16]: IoU 49/64 with anchor (1,1), 0 with the other three.
    boxes = [[0, 0, 10, 10], [9, 9, 16, 16]]
    m = imitation_mask(t(anchors), SHAPES, t(boxes), psi=0.5)
    assert m[0].tolist() == [[True, False], [False, True]]
    assert m[1].tolist() == [[True]]
    # psi = 0.1, first box only: threshold 0.064 < 16/148 but > 4/160.
    m = imitation_mask(t(anchors), SHAPES, t(boxes[:1]), psi=0.1)
    assert m[0].tolist() == [[True, True], [True, False]]
    assert [x.dtype for x in m] == [torch.bool, torch.bool]


@pytest.mark.parametrize("sizes", [[[8], [16]], [[8, 14], [16, 24]]])
@pytest.mark.parametrize("psi", [0.5, 0.8])
def test_imitation_mask_matches_reference(sizes, psi):
    anchors = make_anchors(SHAPES, [8, 16], sizes)
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        k = int(torch.randint(1, 4, (1,), generator=gen))
        xy = torch.rand(k, 2, generator=gen) * 14
        wh = 1 + torch.rand(k, 2, generator=gen) * 10
        boxes = torch.cat([xy, xy + wh], dim=1).round(decimals=1)
        got = imitation_mask(t(anchors), SHAPES, boxes, psi=psi)
        want = mask_ref(anchors, SHAPES, boxes.tolist(), psi)
        assert [g.tolist() for g in got] == want


def test_imitation_mask_no_boxes_and_bad_count():
    anchors = t(make_anchors(SHAPES, [8, 16], [[8, 14], [16, 24]]))
    m = imitation_mask(anchors, SHAPES, torch.zeros((0, 4)))
    assert [x.shape for x in m] == [(2, 2), (1, 1)]
    assert not any(x.any() for x in m)
    with pytest.raises(ValueError):
        imitation_mask(anchors[:7], SHAPES, t([[0, 0, 10, 10]]))
    with pytest.raises(ValueError):
        imitation_mask(anchors, [(0, 0)], t([[0, 0, 10, 10]]))


# ---------------------------------------------------------------- hint loss (Eq. 11)


def test_hint_loss_hand_numbers():
    s = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 2)]
    te = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 2)]
    te[0][0, :, 0, 0] = t([1.0, 2.0])
    te[0][0, :, 1, 1] = t([100.0, 100.0])  # outside the mask: ignored
    te[1][0, :, 0, 1] = t([3.0, 0.0])
    masks = [torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 1, 2, dtype=torch.bool)]
    masks[0][0, 0, 0] = masks[1][0, 0, 1] = True
    # (1 + 4 + 9) / (2 * C * 2 locations) = 14 / 8
    assert hint_loss(s, te, masks).item() == pytest.approx(1.75)


def test_hint_loss_reference_and_gradient():
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3), (1, 2)]
    s = [torch.randn(1, 2, h, w, generator=gen).requires_grad_() for h, w in shapes]
    te = [torch.randn(1, 2, h, w, generator=gen) for h, w in shapes]
    masks = [torch.zeros(1, 2, 3, dtype=torch.bool), torch.zeros(1, 1, 2, dtype=torch.bool)]
    on = [(0, 0, 1), (0, 1, 2), (1, 0, 0)]
    for lv, y, x in on:
        masks[lv][0, y, x] = True
    total = 0.0
    for lv, y, x in on:
        for c in range(2):
            total += (s[lv][0, c, y, x].item() - te[lv][0, c, y, x].item()) ** 2
    n_i = 2 * len(on)
    loss = hint_loss(s, te, masks)
    assert loss.item() == pytest.approx(total / (2 * n_i), rel=1e-5)
    loss.backward()
    for lv, (h, w) in enumerate(shapes):
        # d/ds (s - t)^2 / (2 N_I) = (s - t) / N_I inside the mask, zero outside.
        want = [
            [[(s[lv][0, c, y, x].item() - te[lv][0, c, y, x].item()) / n_i
              if (lv, y, x) in on else 0.0 for x in range(w)] for y in range(h)]
            for c in range(2)
        ]  # fmt: skip
        assert s[lv].grad[0].tolist() == [[pytest.approx(r, rel=1e-5) for r in ch] for ch in want]


def test_hint_loss_empty_mask_and_shape_error():
    s, te = [torch.ones(1, 2, 2, 2)], [torch.zeros(1, 2, 2, 2)]
    assert hint_loss(s, te, [torch.zeros(1, 2, 2, dtype=torch.bool)]).item() == 0.0
    with pytest.raises(ValueError):
        hint_loss(s, [torch.zeros(1, 2, 2, 3)], [torch.zeros(1, 2, 2, dtype=torch.bool)])


# ---------------------------------------------------------------- KD classification (Eq. 14)


def kl_bin(zt: float, zs: float, temp: float) -> float:
    pt, ps = sig(zt / temp), sig(zs / temp)
    return pt * math.log(pt / ps) + (1 - pt) * math.log((1 - pt) / (1 - ps))


def test_kd_cls_hand_values_and_gradients():
    zs, zt, y = [1.0, -2.0, 0.5, 3.0, -1.0], [2.0, -1.0, -0.5, 1.0, 0.0], [1, 0, 1, 0, 1]
    # teacher decision z_t >= 0: T, F, F, T, T vs labels 1, 0, 1, 0, 1 -> q = 1, 1, 0, 0, 1
    q = [1, 1, 0, 0, 1]
    temp, norm = 2.0, 3.0
    expected = temp**2 * sum(kl_bin(zt[i], zs[i], temp) for i in range(5) if q[i]) / norm
    s, te = t(zs, grad=True), t(zt, grad=True)
    loss = kd_cls_loss(s, te, t(y), temperature=temp, normalizer=norm)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert te.grad is None
    # d/dz_s T^2 KL = T (p_s - p_t), masked by q, over the normalizer.
    exp_grad = [q[i] * temp * (sig(zs[i] / temp) - sig(zt[i] / temp)) / norm for i in range(5)]
    assert s.grad.tolist() == pytest.approx(exp_grad, rel=1e-5, abs=1e-8)
    # Moving the student logit of a disagreeing anchor changes nothing.
    moved = t([1.0, -2.0, 9.0, -7.0, -1.0])
    same = kd_cls_loss(moved, t(zt), t(y), temperature=temp, normalizer=norm)
    assert same.item() == pytest.approx(loss.item(), rel=1e-6)


def test_kd_cls_identical_is_zero():
    z = t([2.0, -1.0, 0.3, -4.0])
    assert kd_cls_loss(z, z.clone(), t([1, 0, 1, 0]), 2.0).item() == pytest.approx(0.0, abs=1e-7)
    # ... but a different student on agreeing anchors is positive.
    assert kd_cls_loss(z + 1.0, z, t([1, 0, 1, 0]), 2.0).item() > 1e-3


# ---------------------------------------------------------------- KD regression (Eq. 15)


def test_kd_reg_hand_values():
    s = t([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], grad=True)
    te = t([[0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], grad=True)
    gt = t([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.5]])
    # row 0: teacher 0.1 vs truth 2.0 -> 0.1; row 1: teacher 4.0 vs truth 0.5 -> 0.5
    loss = kd_reg_loss(s, te, gt)
    assert loss.item() == pytest.approx((0.1 + 0.5) / 2, rel=1e-6)
    loss.backward()
    assert te.grad is None
    # sign(s - closer) / P: row 0 follows the teacher, row 1 the ground truth.
    assert s.grad.tolist() == [[-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]]


def test_kd_reg_empty_is_zero():
    empty = torch.zeros((0, 4), requires_grad=True)
    loss = kd_reg_loss(empty, torch.zeros((0, 4)), torch.zeros((0, 4)))
    assert loss.item() == 0.0
    assert loss.shape == ()
