"""``detection_loss``: every configured classification loss on fake head outputs.

The network is not run: ``HeadOutputs`` are random tensors over the real anchors of a
128 x 128 input, so the whole file takes well under a second.
"""

from __future__ import annotations

import typing

import pytest
import torch

from pathodet.losses import ce_loss, dghm_c_loss
from pathodet.losses.config import LossConfig, LossName, SoftSamplingParams
from pathodet.losses.criterion import detection_loss
from pathodet.model.anchors import make_anchors
from pathodet.model.assign import POSITIVE, assign_retinanet, assign_topn
from pathodet.model.boxes import encode
from pathodet.model.config import AnchorConfig, AssignConfig
from pathodet.model.retinanet import STRIDES, HeadOutputs

SIZE = 128
FEATURES = [(SIZE // s, SIZE // s) for s in (8, 16, 32, 64)] + [(1, 1)]
ALL_NAMES = list(typing.get_args(LossName))

# image 0: AP with two boxes, image 1: NP, image 2: AP with one small box
BOXES = [
    torch.tensor([[10.0, 12.0, 44.0, 40.0], [60.0, 58.0, 100.0, 104.0]]),
    torch.zeros((0, 4)),
    torch.tensor([[80.0, 20.0, 92.0, 31.0]]),
]
AP = torch.tensor([True, False, True])


def anchors() -> torch.Tensor:
    return make_anchors(FEATURES, STRIDES, AnchorConfig())


def fake_outputs(seed: int = 0, n_images: int = 3, logit_scale: float = 2.0) -> HeadOutputs:
    a = anchors()
    gen = torch.Generator().manual_seed(seed)
    return HeadOutputs(
        cls_logits=(torch.randn(n_images, len(a), generator=gen) * logit_scale - 3.0),
        bbox_deltas=torch.randn(n_images, len(a), 4, generator=gen) * 0.3,
        anchors=a,
        image_size=(SIZE, SIZE),
        level_sizes=[h * w * 9 for h, w in FEATURES],
    )


def make_cfg(name: str) -> LossConfig:
    return LossConfig(name=name, soft_sampling=SoftSamplingParams(threshold=0.4))


def with_grad(out: HeadOutputs) -> HeadOutputs:
    out.cls_logits.requires_grad_(True)
    out.bbox_deltas.requires_grad_(True)
    return out


def labels_for(name: str, boxes=BOXES):
    a = anchors()
    if name == "cleanliness":
        return [assign_topn(a, b, 30) for b in boxes]
    return [assign_retinanet(a, b) for b in boxes]


def exact_deltas(out: HeadOutputs, name: str, boxes=BOXES) -> HeadOutputs:
    """Set the predicted deltas of every positive anchor to its encoded target."""
    deltas = out.bbox_deltas.detach().clone()
    for i, lab in enumerate(labels_for(name, boxes)):
        pos = lab.labels == POSITIVE
        deltas[i, pos] = encode(boxes[i][lab.matched[pos]], out.anchors[pos])
    out.bbox_deltas = deltas
    return out


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_loss_runs_and_is_finite(name):
    out = with_grad(fake_outputs())
    prior = torch.rand(out.cls_logits.shape, generator=torch.Generator().manual_seed(1))
    res = detection_loss(out, BOXES, AP, make_cfg(name), prior_scores=prior)
    assert set(res) == {"cls", "reg", "loss", "positives"}
    for key in ("cls", "reg", "loss"):
        assert res[key].dim() == 0 and torch.isfinite(res[key]), key
    assert res["cls"].item() > 0 and res["reg"].item() > 0
    assert res["loss"].item() == pytest.approx(res["cls"].item() + res["reg"].item(), rel=1e-6)
    n_pos = int(res["positives"])
    assert n_pos >= 3  # every box has at least one positive anchor
    if name == "cleanliness":
        assert n_pos <= 30 * 3
    res["loss"].backward()
    for t in (out.cls_logits, out.bbox_deltas):
        assert torch.isfinite(t.grad).all() and (t.grad != 0).any()
    # the NP image has no positive, so its deltas get no gradient
    assert (out.bbox_deltas.grad[1] == 0).all()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_regression_is_zero_for_exact_predictions(name):
    out = exact_deltas(fake_outputs(2), name)
    prior = torch.rand(out.cls_logits.shape, generator=torch.Generator().manual_seed(3))
    res = detection_loss(out, BOXES, AP, make_cfg(name), prior_scores=prior)
    assert res["positives"] > 0
    assert res["reg"].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(res["cls"]) and res["cls"].item() > 0
    # and one wrong delta makes it positive again
    out.bbox_deltas[0] += 0.5
    assert detection_loss(out, BOXES, AP, make_cfg(name), prior_scores=prior)["reg"].item() > 0


@pytest.mark.parametrize("name", ALL_NAMES)
def test_all_np_batch(name):
    out = with_grad(fake_outputs(4))
    boxes = [torch.zeros((0, 4))] * 3
    ap = torch.zeros(3, dtype=torch.bool)
    prior = torch.rand(out.cls_logits.shape, generator=torch.Generator().manual_seed(5))
    res = detection_loss(out, boxes, ap, make_cfg(name), prior_scores=prior)
    assert int(res["positives"]) == 0
    assert res["reg"].item() == 0.0
    assert torch.isfinite(res["cls"]) and res["cls"].item() > 0
    res["loss"].backward()
    assert torch.isfinite(out.cls_logits.grad).all() and (out.cls_logits.grad != 0).any()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_extreme_logits(name):
    out = fake_outputs(6)
    sign = torch.where(torch.rand(out.cls_logits.shape) < 0.5, -1.0, 1.0)
    out.cls_logits = (100.0 * sign).requires_grad_(True)
    prior = torch.rand(out.cls_logits.shape, generator=torch.Generator().manual_seed(7))
    res = detection_loss(out, BOXES, AP, make_cfg(name), prior_scores=prior)
    assert all(torch.isfinite(res[k]) for k in ("cls", "reg", "loss"))
    res["loss"].backward()
    assert torch.isfinite(out.cls_logits.grad).all()


def test_flattening_matches_manual_batch():
    """CE and DGHM-C see exactly the non-ignored anchors, each with its own image's attribute."""
    out = fake_outputs(8)
    labs = labels_for("ce")
    valid = torch.stack([lab.labels >= 0 for lab in labs])
    assert (~valid).any()  # some anchors are ignored
    pos = torch.stack([lab.labels == POSITIVE for lab in labs])
    logits = out.cls_logits[valid]
    targets = pos[valid].float()
    ap = AP.view(3, 1).expand_as(valid)[valid]
    res = detection_loss(out, BOXES, AP, LossConfig(name="ce"))
    torch.testing.assert_close(res["cls"], ce_loss(logits, targets))
    res = detection_loss(out, BOXES, AP, LossConfig(name="dghm"))
    torch.testing.assert_close(res["cls"], dghm_c_loss(logits, targets, ap))
    # the AP attribute matters: flipping it changes DGHM-C but not CE
    flipped = detection_loss(out, BOXES, ~AP, LossConfig(name="dghm"))["cls"]
    assert abs(flipped.item() - res["cls"].item()) > 1e-4 * res["cls"].item()


def test_regression_loss_is_smooth_l1_mean_over_positives():
    out = fake_outputs(9)
    beta = 1 / 9
    labs = labels_for("focal")
    total, n_pos = 0.0, 0
    for i, lab in enumerate(labs):
        for a in (lab.labels == POSITIVE).nonzero().flatten().tolist():
            target = encode(BOXES[i][lab.matched[a]].view(1, 4), out.anchors[a].view(1, 4))[0]
            for d in (out.bbox_deltas[i, a] - target).abs().tolist():
                total += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
            n_pos += 1
    res = detection_loss(out, BOXES, AP, LossConfig(name="focal"))
    assert int(res["positives"]) == n_pos
    assert res["reg"].item() == pytest.approx(total / n_pos, rel=1e-5)
    cfg = LossConfig(name="focal", reg_weight=2.5)
    res2 = detection_loss(out, BOXES, AP, cfg)
    assert res2["loss"].item() == pytest.approx(res2["cls"].item() + 2.5 * res2["reg"].item())


def test_cleanliness_weights_regression_by_r():
    out = fake_outputs(10)
    res = detection_loss(out, BOXES, AP, LossConfig(name="cleanliness"))
    labs = labels_for("cleanliness")
    pos = torch.stack([lab.labels == POSITIVE for lab in labs])
    assert int(res["positives"]) == int(pos.sum())
    # regression: sum_i r_i smooth_l1_i / |A_pos|, with r from eq. 4 normalised to mean 1
    reg_each, loc_a, cls_c = [], [], []
    for i, lab in enumerate(labs):
        for a in (lab.labels == POSITIVE).nonzero().flatten().tolist():
            anchor = out.anchors[a]
            gt = BOXES[i][lab.matched[a]]
            d = out.bbox_deltas[i, a]
            target = encode(gt.view(1, 4), anchor.view(1, 4))[0]
            diff = (d - target).abs()
            beta = 1 / 9
            reg_each.append(torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum())
            aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
            cx, cy = anchor[0] + aw / 2 + d[0] * aw, anchor[1] + ah / 2 + d[1] * ah
            w, h = aw * torch.exp(d[2]), ah * torch.exp(d[3])
            box = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            iw = (torch.minimum(box[2], gt[2]) - torch.maximum(box[0], gt[0])).clamp(min=0)
            ih = (torch.minimum(box[3], gt[3]) - torch.maximum(box[1], gt[1])).clamp(min=0)
            inter = iw * ih
            union = w * h + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter
            loc_a.append(float(inter / union))
            cls_c.append(float(torch.sigmoid(out.cls_logits[i, a])))
    r = [0.75 / (1 - la) + 0.25 / (1 - cc) for la, cc in zip(loc_a, cls_c, strict=True)]
    mean = sum(r) / len(r)
    expected = sum(ri / mean * float(e) for ri, e in zip(r, reg_each, strict=True)) / len(r)
    assert res["reg"].item() == pytest.approx(expected, rel=1e-4)
    plain = sum(float(e) for e in reg_each) / len(r)
    assert abs(plain - expected) > 1e-3 * plain  # r really re-weights
    # classification (eq. 5, focal-weighted): soft label c and weight r on A_pos, 0 and 1 else
    pos = torch.stack([lab.labels == POSITIVE for lab in labs])
    soft = torch.zeros(pos.shape, dtype=torch.float64)
    weight = torch.ones(pos.shape, dtype=torch.float64)
    soft[pos] = torch.tensor(
        [0.75 * la + 0.25 * cc for la, cc in zip(loc_a, cls_c, strict=True)]
    ).double()
    weight[pos] = torch.tensor(r).double() / mean
    x = out.cls_logits.double()
    p = torch.sigmoid(x)
    bce = -(soft * torch.log(p) + (1 - soft) * torch.log1p(-p))
    alpha_t = torch.where(pos, 0.25, 0.75).double()
    cls = (weight * alpha_t * (p - soft).abs() ** 2 * bce).sum() / len(r)
    assert res["cls"].item() == pytest.approx(cls.item(), rel=1e-4)


def test_assign_config_is_used():
    out = fake_outputs(11)
    loose = detection_loss(
        out, BOXES, AP, LossConfig(name="ce"), AssignConfig(fg_iou=0.3, bg_iou=0.2)
    )
    strict = detection_loss(
        out, BOXES, AP, LossConfig(name="ce"), AssignConfig(allow_low_quality=False)
    )
    default = detection_loss(out, BOXES, AP, LossConfig(name="ce"))
    assert int(loose["positives"]) > int(default["positives"]) >= int(strict["positives"])


def test_ghm_momentum_reaches_the_loss_through_the_criterion():
    """loss.ghm.momentum is honoured: the caller's buffer is updated and changes the loss."""
    import pytest
    import torch

    from pathodet.losses.config import LossConfig
    from pathodet.losses.criterion import detection_loss
    from pathodet.model.retinanet import HeadOutputs

    g = torch.Generator().manual_seed(0)
    anchors = torch.tensor([[0.0, 0, 40, 40], [100, 100, 140, 140], [200, 0, 240, 40]] * 10)
    anchors = anchors + torch.arange(30).view(-1, 1).float() * 3
    out = HeadOutputs(
        cls_logits=torch.randn(2, 30, generator=g),
        bbox_deltas=torch.zeros(2, 30, 4),
        anchors=anchors,
        image_size=(400, 400),
        level_sizes=[30],
    )
    boxes = [torch.tensor([[0.0, 0, 40, 40]]), torch.zeros(0, 4)]
    ap = torch.tensor([True, False])
    cfg = LossConfig(name="ghm", ghm={"momentum": 0.75})
    with pytest.raises(ValueError, match="acc_sum"):
        detection_loss(out, boxes, ap, cfg)
    acc = torch.zeros(cfg.ghm.bins)
    first = detection_loss(out, boxes, ap, cfg, ghm_acc_sum=acc)["cls"]
    assert acc.sum() > 0  # the buffer was filled
    no_mmt = detection_loss(out, boxes, ap, LossConfig(name="ghm"))["cls"]
    # first step with a zero buffer: acc = (1 - m) * counts, so the loss is 1/(1-m) times larger
    assert torch.isclose(first, no_mmt / (1 - 0.75), rtol=1e-5)
