"""The detector side: anchors, box coding, anchor assignment, head layout and postprocess.

Assignment and postprocess are checked against brute-force references (Python loops over
anchors and boxes, float64 IoU). The ResNet-18 forward runs twice in the whole file.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pathodet.model import ModelConfig, SRCRetinaNet
from pathodet.model.anchors import cell_anchors, make_anchors
from pathodet.model.assign import IGNORED, NEGATIVE, POSITIVE, assign_retinanet, assign_topn
from pathodet.model.boxes import decode, encode, paired_iou
from pathodet.model.config import AnchorConfig, InferenceConfig
from pathodet.model.retinanet import STRIDES, HeadOutputs, postprocess

# ---------------------------------------------------------------- references


def ref_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_table(anchors: torch.Tensor, boxes: torch.Tensor) -> list[list[float]]:
    """ious[k][j] = IoU(box k, anchor j) in float64."""
    al = anchors.double().tolist()
    return [[ref_iou(b, a) for a in al] for b in boxes.double().tolist()]


def ref_assign_retinanet(anchors, boxes, fg=0.5, bg=0.4, low_quality=True):
    """Threshold rule, then every box claims all anchors of its best IoU (ties included).

    Returns labels, matched, max IoU and, per anchor, the set of boxes that claimed it.
    """
    n_a = len(anchors)
    if len(boxes) == 0:
        return [NEGATIVE] * n_a, [-1] * n_a, [0.0] * n_a, [set() for _ in range(n_a)]
    ious = iou_table(anchors, boxes)
    labels, matched, max_iou = [], [], []
    for j in range(n_a):
        col = [ious[k][j] for k in range(len(boxes))]
        m = max(col)
        max_iou.append(m)
        matched.append(col.index(m))
        labels.append(POSITIVE if m >= fg else NEGATIVE if m < bg else IGNORED)
    claimed = [set() for _ in range(n_a)]
    if low_quality:
        for k in range(len(boxes)):
            best = max(ious[k])
            if best <= 0:
                continue
            for j in range(n_a):
                if ious[k][j] == best:
                    labels[j], matched[j] = POSITIVE, k
                    claimed[j].add(k)
    return labels, matched, max_iou, claimed


def ref_assign_topn(anchors, boxes, n):
    n_a = len(anchors)
    if len(boxes) == 0:
        return [NEGATIVE] * n_a, [-1] * n_a
    ious = iou_table(anchors, boxes)
    candidates = []
    for k in range(len(boxes)):
        order = sorted(range(n_a), key=lambda j: -ious[k][j])
        candidates.append({j for j in order[:n] if ious[k][j] > 0})
    labels, matched = [NEGATIVE] * n_a, [-1] * n_a
    for j in range(n_a):
        claims = [(ious[k][j], k) for k in range(len(boxes)) if j in candidates[k]]
        if claims:
            labels[j], matched[j] = POSITIVE, max(claims)[1]
    return labels, matched, candidates


def near_ties(values: list[float], points: list[float], eps: float = 1e-5) -> bool:
    return any(abs(v - p) < eps for v in values for p in points if v > 0)


def random_boxes(seed: int, k: int, size: float, lo: float = 8.0, hi: float = 60.0):
    gen = torch.Generator().manual_seed(seed)
    wh = lo + (hi - lo) * torch.rand(k, 2, generator=gen, dtype=torch.float64)
    xy = (size - wh) * torch.rand(k, 2, generator=gen, dtype=torch.float64)
    return torch.cat([xy, xy + wh], dim=1).float()


def feature_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """P3..P7 sizes: every stride-2 stage maps s to ceil(s / 2)."""
    sizes = []
    for level in range(1, 8):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        if level >= 3:
            sizes.append((h, w))
    return sizes


# ---------------------------------------------------------------- anchors


def test_cell_anchors_areas_ratios_and_order():
    cfg = AnchorConfig()
    for size in cfg.sizes:
        cell = cell_anchors(size, cfg.scales, cfg.aspect_ratios)
        assert cell.shape == (9, 4)
        w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        k = 0
        for s in cfg.scales:  # scale-major, ratio-minor
            for r in cfg.aspect_ratios:
                assert (w[k] * h[k]).item() == pytest.approx((size * s) ** 2, rel=1e-5)
                assert (h[k] / w[k]).item() == pytest.approx(r, rel=1e-5)
                k += 1
        torch.testing.assert_close(cell[:, :2], -cell[:, 2:])  # centred at 0
    # the configured range: 16^2 at P3 to (256 * 2^(2/3))^2 at P7
    assert cfg.sizes[0] == 16 and cfg.sizes[-1] == 256


@pytest.mark.parametrize(("h", "w"), [(256, 256), (320, 384), (100, 60)])
def test_make_anchors_layout(h, w):
    cfg = AnchorConfig()
    sizes = feature_sizes(h, w)
    anchors = make_anchors(sizes, STRIDES, cfg)
    assert anchors.shape == (sum(fh * fw * 9 for fh, fw in sizes), 4)
    start = 0
    gen = torch.Generator().manual_seed(h * w)
    for (fh, fw), stride, size in zip(sizes, STRIDES, cfg.sizes, strict=True):
        cell = cell_anchors(size, cfg.scales, cfg.aspect_ratios)
        for _ in range(20):  # spot checks: index = start + (y * fw + x) * 9 + k
            y = int(torch.randint(fh, (1,), generator=gen))
            x = int(torch.randint(fw, (1,), generator=gen))
            k = int(torch.randint(9, (1,), generator=gen))
            a = anchors[start + (y * fw + x) * 9 + k]
            centre = torch.tensor([(x + 0.5) * stride, (y + 0.5) * stride] * 2)
            torch.testing.assert_close(a, centre + cell[k])
        start += fh * fw * 9
    assert start == len(anchors)


def test_make_anchors_rejects_level_mismatch():
    with pytest.raises(ValueError):
        make_anchors([(4, 4)] * 4, STRIDES, AnchorConfig())


# ---------------------------------------------------------------- head layout


def _probe_model(cfg: ModelConfig) -> SRCRetinaNet:
    """A model whose head outputs (x cell, y cell) as deltas and 100*level + anchor as logit.

    The backbone is replaced by hand-made features and the conv towers by identities, so
    what comes out at each flat index says which level, cell and anchor it was computed for.
    """
    model = SRCRetinaNet(cfg).eval()
    k = cfg.anchors.per_location
    c = cfg.fpn_channels

    class Features(nn.Module):
        out_channels = c

        def forward(self, x):
            feats = {}
            h, w = x.shape[-2:]
            for level, (fh, fw) in enumerate(feature_sizes(h, w)):
                f = torch.zeros(x.shape[0], c, fh, fw)
                f[:, 0] = torch.arange(fw).view(1, fw).float()
                f[:, 1] = torch.arange(fh).view(fh, 1).float()
                f[:, 2] = 100.0 * level
                feats[str(level)] = f
            return feats

    model.backbone = Features()
    head = model.head
    head.classification_head.conv = nn.Identity()
    head.regression_head.conv = nn.Identity()
    with torch.no_grad():
        cls = head.classification_head.cls_logits
        cls.weight.zero_()
        cls.weight[:, 2, 1, 1] = 1.0
        cls.bias.copy_(torch.arange(k).float())
        reg = head.regression_head.bbox_reg
        reg.weight.zero_()
        reg.bias.zero_()
        for a in range(k):
            reg.weight[4 * a + 0, 0, 1, 1] = 1.0
            reg.weight[4 * a + 1, 1, 1, 1] = 1.0
    return model


@pytest.mark.parametrize(
    ("h", "w", "anchor_cfg"),
    [
        (256, 256, AnchorConfig()),
        (320, 384, AnchorConfig()),
        (
            96,
            160,
            AnchorConfig(sizes=[20, 40, 80, 160, 320], scales=[1.0, 1.5], aspect_ratios=[1.0]),
        ),
    ],
)
def test_head_outputs_line_up_with_anchors(h, w, anchor_cfg):
    cfg = ModelConfig(anchors=anchor_cfg, fpn_channels=32)
    model = _probe_model(cfg)
    k = anchor_cfg.per_location
    with torch.no_grad():
        out = model(torch.rand(2, 3, h, w))
    a = len(out.anchors)
    assert out.cls_logits.shape == (2, a) and out.bbox_deltas.shape == (2, a, 4)
    assert sum(out.level_sizes) == a
    assert out.level_sizes == [fh * fw * k for fh, fw in feature_sizes(h, w)]
    assert out.image_size == (h, w)
    level = torch.cat([torch.full((n,), i) for i, n in enumerate(out.level_sizes)])
    stride = torch.tensor(STRIDES, dtype=torch.float32)[level]
    size = torch.tensor(anchor_cfg.sizes)[level]
    # the logit encodes (level, anchor index within the cell)
    torch.testing.assert_close(out.cls_logits[0], out.cls_logits[1])
    logit = out.cls_logits[0].round().long()
    assert torch.equal(logit // 100, level)
    idx = logit % 100
    assert torch.equal(idx, torch.arange(a) % k)
    # the deltas encode the cell: its centre must be the anchor's centre
    cx = (out.anchors[:, 0] + out.anchors[:, 2]) / 2
    cy = (out.anchors[:, 1] + out.anchors[:, 3]) / 2
    torch.testing.assert_close(cx, (out.bbox_deltas[0, :, 0] + 0.5) * stride)
    torch.testing.assert_close(cy, (out.bbox_deltas[0, :, 1] + 0.5) * stride)
    # and the anchor's shape is the configured one for that index
    aw, ah = out.anchors[:, 2] - out.anchors[:, 0], out.anchors[:, 3] - out.anchors[:, 1]
    scales = torch.tensor(anchor_cfg.scales).repeat_interleave(len(anchor_cfg.aspect_ratios))
    ratios = torch.tensor(anchor_cfg.aspect_ratios).repeat(len(anchor_cfg.scales))
    torch.testing.assert_close(aw * ah, (size * scales[idx]) ** 2, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(ah / aw, ratios[idx], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def resnet_outputs():
    """The real network once on 2 x 256 x 256 and once on 1 x 320 x 384 (scratch weights)."""
    torch.manual_seed(0)
    model = SRCRetinaNet(ModelConfig()).eval()
    with torch.no_grad():
        return model, [model(torch.rand(2, 3, 256, 256)), model(torch.rand(1, 3, 320, 384))]


def test_real_forward_shapes(resnet_outputs):
    _, outs = resnet_outputs
    for out, (b, h, w) in zip(outs, [(2, 256, 256), (1, 320, 384)], strict=True):
        sizes = feature_sizes(h, w)
        expected = make_anchors(sizes, STRIDES, AnchorConfig())
        assert out.cls_logits.shape == (b, len(expected))
        assert out.bbox_deltas.shape == (b, len(expected), 4)
        assert torch.equal(out.anchors, expected)
        assert out.level_sizes == [fh * fw * 9 for fh, fw in sizes]
        assert torch.isfinite(out.cls_logits).all() and torch.isfinite(out.bbox_deltas).all()
        # RetinaNet's prior: every anchor starts near p = 0.01
        assert out.cls_logits.sigmoid().mean().item() == pytest.approx(0.01, abs=0.02)
    assert len(outs[0].anchors) == 12276 and len(outs[1].anchors) == 23031


def test_real_detect_scores(resnet_outputs):
    model, outs = resnet_outputs
    cfg = InferenceConfig(score_threshold=0.0, max_detections=50)
    dets = postprocess(outs[0], cfg)
    assert len(dets) == 2
    for d in dets:
        assert 0 < len(d["scores"]) <= 50
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
    with pytest.raises(ValueError):
        model(torch.rand(3, 256, 256))


# ---------------------------------------------------------------- box coding


def test_encode_known_values():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    boxes = torch.tensor([[5.0, 0.0, 25.0, 10.0]])
    # anchor centre (5, 10) size 10 x 20; box centre (15, 5) size 20 x 10
    expected = torch.tensor([[1.0, -0.25, math.log(2.0), math.log(0.5)]])
    torch.testing.assert_close(encode(boxes, anchors), expected)
    torch.testing.assert_close(decode(expected, anchors), boxes)
    assert torch.equal(encode(anchors, anchors), torch.zeros(1, 4))


def test_encode_decode_round_trip():
    gen = torch.Generator().manual_seed(0)
    # size ratios up to 25, below the cap exp(dw) <= 1000 / 16 of decode
    anchors = random_boxes(1, 500, 800.0, 16.0, 300.0)
    boxes = random_boxes(2, 500, 800.0, 4.0, 400.0)
    torch.testing.assert_close(decode(encode(boxes, anchors), anchors), boxes, rtol=1e-5, atol=1e-3)
    deltas = torch.randn(500, 4, generator=gen)
    torch.testing.assert_close(
        encode(decode(deltas, anchors), anchors), deltas, rtol=1e-4, atol=1e-4
    )
    # huge size changes are capped, never inf
    big = decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), anchors[:1])
    assert torch.isfinite(big).all()


def test_paired_iou_matches_reference():
    a, b = random_boxes(3, 200, 100.0), random_boxes(4, 200, 100.0)
    ref = [ref_iou(x, y) for x, y in zip(a.double().tolist(), b.double().tolist(), strict=True)]
    torch.testing.assert_close(
        paired_iou(a, b).double(), torch.tensor(ref).double(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(paired_iou(a, a), torch.ones(200))


# ---------------------------------------------------------------- assignment


def small_anchors() -> torch.Tensor:
    return make_anchors(feature_sizes(96, 96), STRIDES, AnchorConfig())


def jittered_anchors(seed: int = 0) -> torch.Tensor:
    """Default anchors moved by up to 0.01 px: no two IoUs with a box are tied any more, so
    the float64 brute force and the float32 library must agree exactly."""
    gen = torch.Generator().manual_seed(seed)
    a = small_anchors()
    return a + 0.02 * (torch.rand(a.shape, generator=gen) - 0.5)


def exact_anchors() -> torch.Tensor:
    """Anchors with integer coordinates (sides 16 * {1, 1.5} * {1/2, 1, 2}), so that with
    quarter-pixel boxes every IoU is a ratio of exact float32 numbers and equal IoUs (ties)
    are equal in float32 and in the float64 reference alike."""
    cfg = AnchorConfig(
        sizes=[16, 32, 64, 128, 256], scales=[1.0, 1.5], aspect_ratios=[0.25, 1.0, 4.0]
    )
    return make_anchors(feature_sizes(96, 96), STRIDES, cfg)


def quarter_boxes(seed: int, k: int, size: float, lo: float, hi: float) -> torch.Tensor:
    return (random_boxes(seed, k, size, lo, hi) * 4).round() / 4


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("low_quality", [True, False])
def test_assign_retinanet_matches_brute_force(seed, low_quality):
    anchors = exact_anchors()
    assert torch.equal(anchors, anchors.round())
    # a mix of large boxes (real positives) and tiny ones (only low-quality matches, tied
    # across every same-shaped anchor that contains them)
    boxes = torch.cat(
        [quarter_boxes(seed, 4, 96.0, 14.0, 60.0), quarter_boxes(seed + 10, 2, 96.0, 3.0, 7.0)]
    )
    lab = assign_retinanet(anchors, boxes, 0.5, 0.4, low_quality)
    labels, matched, max_iou, claimed = ref_assign_retinanet(anchors, boxes, 0.5, 0.4, low_quality)
    assert lab.labels.tolist() == labels
    for j in (lab.labels == POSITIVE).nonzero().flatten().tolist():
        if claimed[j]:  # claimed by several boxes: any of them
            assert lab.matched[j].item() in claimed[j]
        else:
            assert lab.matched[j].item() == matched[j]
    torch.testing.assert_close(
        lab.max_iou.double(), torch.tensor(max_iou).double(), rtol=1e-6, atol=1e-7
    )
    assert set(lab.labels.unique().tolist()) == {POSITIVE, NEGATIVE, IGNORED}
    # tiny boxes have no anchor >= 0.5: they are positive only through low-quality matches
    tiny_claimed = set(lab.matched[lab.labels == POSITIVE].tolist()) & {4, 5}
    assert tiny_claimed == ({4, 5} if low_quality else set())
    if low_quality:
        assert sum(1 for c in claimed if 4 in c) > 1  # a tie, all of it claimed


@pytest.mark.parametrize("seed", [3, 4])
def test_assign_retinanet_default_anchors_brute_force(seed):
    anchors = jittered_anchors(seed)
    boxes = random_boxes(seed, 5, 96.0, 14.0, 60.0)
    lab = assign_retinanet(anchors, boxes, 0.5, 0.4, allow_low_quality=False)
    labels, matched, max_iou, _ = ref_assign_retinanet(anchors, boxes, 0.5, 0.4, False)
    assert not near_ties(max_iou, [0.4, 0.5])
    assert lab.labels.tolist() == labels
    pos = lab.labels == POSITIVE
    assert pos.sum() > 5
    lq_ref = ref_assign_retinanet(anchors, boxes)
    lq = assign_retinanet(anchors, boxes)
    assert lq.labels.tolist() == lq_ref[0]
    assert lq.matched[lq.labels == POSITIVE].tolist() == [
        m for m, lb in zip(lq_ref[1], lq_ref[0], strict=True) if lb == POSITIVE
    ]
    assert lab.matched[pos].tolist() == [
        m for m, lb in zip(matched, labels, strict=True) if lb == POSITIVE
    ]
    # with low-quality matches every box gets at least one anchor, and only more positives
    assert set(lq.matched[lq.labels == POSITIVE].tolist()) == set(range(5))
    assert (lq.labels[pos] == POSITIVE).all()


def test_assign_retinanet_low_quality_ties_and_thresholds():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [10.0, 0.0, 20.0, 10.0],
            [30.0, 30.0, 40.0, 40.0],
            [31.0, 30.0, 41.0, 40.0],
        ]
    )
    boxes = torch.tensor([[5.0, 0.0, 15.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    lab = assign_retinanet(anchors, boxes)
    # box 0 overlaps anchors 0 and 1 equally (1/3): both claimed; box 1 = anchor 2 exactly;
    # anchor 3 has IoU 90/110 with box 1, a normal positive
    assert lab.labels.tolist() == [POSITIVE] * 4
    assert lab.matched.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(lab.max_iou, torch.tensor([1 / 3, 1 / 3, 1.0, 90 / 110]))
    strict = assign_retinanet(anchors, boxes, allow_low_quality=False)
    assert strict.labels.tolist() == [NEGATIVE, NEGATIVE, POSITIVE, POSITIVE]
    ignored = assign_retinanet(anchors, boxes, fg_iou=0.9, bg_iou=0.3, allow_low_quality=False)
    # IoU 1/3 and 90/110 lie between the thresholds
    assert ignored.labels.tolist() == [IGNORED, IGNORED, POSITIVE, IGNORED]
    # IoU exactly 0.4 is not negative (ignored), exactly 0.5 is positive
    square = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    at_bg = assign_retinanet(square, torch.tensor([[0.0, 0.0, 4.0, 10.0]]), allow_low_quality=False)
    at_fg = assign_retinanet(square, torch.tensor([[0.0, 0.0, 5.0, 10.0]]), allow_low_quality=False)
    assert at_bg.labels.tolist() == [IGNORED] and at_fg.labels.tolist() == [POSITIVE]
    # a box overlapping nothing claims nothing
    far = assign_retinanet(anchors, torch.tensor([[100.0, 100.0, 110.0, 110.0]]))
    assert far.labels.tolist() == [NEGATIVE] * 4


def test_assign_topn_ties_and_small_n():
    # four anchors tied with the box (IoU 1/4 each), one better; N = 3 takes exactly three
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [10.0, 0.0, 20.0, 10.0],
            [0.0, 10.0, 10.0, 20.0],
            [10.0, 10.0, 20.0, 20.0],
            [2.0, 2.0, 18.0, 18.0],
            [50.0, 50.0, 60.0, 60.0],
        ]
    )
    box = torch.tensor([[5.0, 5.0, 15.0, 15.0]])
    lab = assign_topn(anchors, box, 3)
    assert lab.labels[4] == POSITIVE and lab.labels[5] == NEGATIVE
    assert lab.labels[:4].sum().item() == 2 and lab.labels.sum().item() == 3
    assert (lab.matched[lab.labels == POSITIVE] == 0).all()
    assert (lab.matched[lab.labels == NEGATIVE] == -1).all()
    # N larger than the overlapping anchors: the zero-IoU anchor stays negative
    lab = assign_topn(anchors, box, 10)
    assert lab.labels.tolist() == [1, 1, 1, 1, 1, 0]


@pytest.mark.parametrize("assign", [assign_retinanet, assign_topn])
def test_assign_image_without_boxes(assign):
    anchors = small_anchors()
    for empty in (torch.zeros((0, 4)), torch.zeros(0)):
        lab = assign(anchors, empty)
        assert lab.labels.shape == (len(anchors),) and (lab.labels == NEGATIVE).all()
        assert (lab.matched == -1).all() and (lab.max_iou == 0).all()
        assert lab.labels.dtype == torch.int64 and lab.max_iou.dtype == torch.float32


@pytest.mark.parametrize(("seed", "n"), [(0, 30), (1, 10), (2, 5000)])
def test_assign_topn_matches_brute_force(seed, n):
    anchors = jittered_anchors(seed)
    base = random_boxes(seed, 3, 96.0, 12.0, 50.0)
    # a fourth box overlapping the first: their top-N sets share anchors
    shifted = base[:1] + torch.tensor([[4.0, 3.0, 6.0, 2.0]])
    boxes = torch.cat([base, shifted])
    lab = assign_topn(anchors, boxes, n)
    labels, matched, candidates = ref_assign_topn(anchors, boxes, n)
    ious = iou_table(anchors, boxes)
    for k, row in enumerate(ious):  # no tie at the N-th place
        ranked = sorted(row, reverse=True)
        if n < len(row) and ranked[n - 1] > 0:
            assert ranked[n - 1] - ranked[n] > 1e-6, k
    assert lab.labels.tolist() == labels
    assert lab.matched.tolist() == matched
    assert candidates[0] & candidates[3]  # the conflict case is exercised
    for k in range(len(boxes)):
        got = (lab.matched == k).sum().item()
        assert got <= min(n, len(candidates[k]))
    # a shared anchor goes to the box it overlaps most among those that picked it
    for j in candidates[0] & candidates[3]:
        pickers = [k for k in range(len(boxes)) if j in candidates[k]]
        assert lab.matched[j].item() == max(pickers, key=lambda k: ious[k][j])
    assert not (lab.labels == IGNORED).any()
    # zero-IoU anchors are never candidates, even when N exceeds the overlapping ones
    zero = torch.tensor(
        [max(ious[k][j] for k in range(len(boxes))) == 0 for j in range(len(anchors))]
    )
    assert (lab.labels[zero] == NEGATIVE).all()
    if n > len(anchors):
        assert (lab.labels[~zero] == POSITIVE).all()


# ---------------------------------------------------------------- postprocess


def ref_postprocess(out: HeadOutputs, cfg: InferenceConfig):
    h, w = out.image_size
    results = []
    for logits, deltas in zip(out.cls_logits.double(), out.bbox_deltas.double(), strict=True):
        cands = []
        start = 0
        for n in out.level_sizes:
            level = []
            for j in range(start, start + n):
                s = 1 / (1 + math.exp(-float(logits[j])))
                if s > cfg.score_threshold:
                    level.append((s, j))
            level.sort(reverse=True)
            cands += level[: cfg.topk_per_level]
            start += n
        boxes = []
        for s, j in cands:
            a = out.anchors[j].double().tolist()
            dx, dy, dw, dh = deltas[j].tolist()
            aw, ah = a[2] - a[0], a[3] - a[1]
            cx, cy = a[0] + aw / 2 + dx * aw, a[1] + ah / 2 + dy * ah
            bw, bh = (
                aw * math.exp(min(dw, math.log(1000 / 16))),
                ah * math.exp(min(dh, math.log(1000 / 16))),
            )
            x1, y1 = min(max(cx - bw / 2, 0), w), min(max(cy - bh / 2, 0), h)
            x2, y2 = min(max(cx + bw / 2, 0), w), min(max(cy + bh / 2, 0), h)
            if x2 > x1 and y2 > y1:
                boxes.append((s, [x1, y1, x2, y2]))
        boxes.sort(key=lambda t: -t[0])
        kept = []
        for s, b in boxes:
            if all(ref_iou(b, kb) <= cfg.nms_iou for _, kb in kept):
                kept.append((s, b))
        kept = kept[: cfg.max_detections]
        results.append(kept)
    return results


def fake_outputs(seed: int, size: int = 96, logit_scale: float = 2.0) -> HeadOutputs:
    sizes = feature_sizes(size, size)
    anchors = make_anchors(sizes, STRIDES, AnchorConfig())
    gen = torch.Generator().manual_seed(seed)
    return HeadOutputs(
        cls_logits=torch.randn(2, len(anchors), generator=gen) * logit_scale - 1.0,
        bbox_deltas=torch.randn(2, len(anchors), 4, generator=gen) * 0.5,
        anchors=anchors,
        image_size=(size, size),
        level_sizes=[fh * fw * 9 for fh, fw in sizes],
    )


@pytest.mark.parametrize(
    "cfg",
    [
        InferenceConfig(score_threshold=0.5, topk_per_level=1000, nms_iou=0.5, max_detections=300),
        InferenceConfig(score_threshold=0.3, topk_per_level=20, nms_iou=0.3, max_detections=15),
    ],
)
def test_postprocess_matches_brute_force(cfg):
    out = fake_outputs(0)
    got = postprocess(out, cfg)
    ref = ref_postprocess(out, cfg)
    for g, r in zip(got, ref, strict=True):
        assert len(g["scores"]) == len(r) > 0
        torch.testing.assert_close(g["scores"].double(), torch.tensor([s for s, _ in r]).double())
        torch.testing.assert_close(
            g["boxes"].double(), torch.tensor([b for _, b in r]).double(), rtol=1e-5, atol=1e-3
        )
        s = g["scores"]
        assert ((s > cfg.score_threshold) & (s <= 1)).all() and (s[:-1] >= s[1:]).all()
        b = g["boxes"]
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 2] <= 96).all()
            and (b[:, 1] >= 0).all()
            and (b[:, 3] <= 96).all()
        )
        assert len(s) <= cfg.max_detections


def test_postprocess_extreme_and_empty():
    out = fake_outputs(1)
    out.cls_logits = torch.where(torch.rand(out.cls_logits.shape) < 0.5, -100.0, 100.0)
    out.bbox_deltas = out.bbox_deltas * 0
    dets = postprocess(out, InferenceConfig(topk_per_level=5, max_detections=300))
    for d in dets:
        assert 0 < len(d["scores"]) <= 5 * len(out.level_sizes)
        assert torch.isfinite(d["scores"]).all() and ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
        assert torch.isfinite(d["boxes"]).all()
    out.cls_logits = torch.full_like(out.cls_logits, -100.0)
    for d in postprocess(out, InferenceConfig()):
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,)


def test_fpn_width_and_frozen_layers_follow_config():
    # fpn_channels other than 256 used to crash: the FPN was always 256 wide
    model = SRCRetinaNet(ModelConfig(fpn_channels=64, trainable_layers=2)).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.cls_logits.shape == (1, len(out.anchors)) and torch.isfinite(out.cls_logits).all()
    assert model.backbone.out_channels == 64
    trainable = {
        n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.requires_grad
    }
    assert trainable == {"layer3", "layer4"}
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    frozen = SRCRetinaNet(ModelConfig(trainable_layers=0))
    assert not any(p.requires_grad for p in frozen.backbone.body.parameters())
    full = SRCRetinaNet(ModelConfig(trainable_layers=5))
    assert all(p.requires_grad for p in full.backbone.body.parameters())


def test_imagenet_weights_are_loaded_from_a_local_file(tmp_path):
    """model.weights points to a ResNet-18 state dict: the backbone starts from it."""
    import torch
    from torchvision.models import resnet18

    from pathodet.model import ModelConfig, build_retinanet

    torch.manual_seed(123)
    reference = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    model = build_retinanet(ModelConfig(weights=path))
    assert model.pretrained
    body = model.backbone.body.state_dict()
    assert torch.equal(body["conv1.weight"], reference["conv1.weight"])
    assert torch.equal(body["layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"])
    # frozen BatchNorm carries the file's running statistics
    assert torch.equal(body["layer1.0.bn1.running_mean"], reference["layer1.0.bn1.running_mean"])


def test_a_file_that_is_not_resnet18_is_refused(tmp_path):
    import pytest
    import torch

    from pathodet.model import ModelConfig, build_retinanet

    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="other.pth"):
        build_retinanet(ModelConfig(weights=path))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_retinanet(ModelConfig(weights=tmp_path / "missing.pth"))


def test_a_corrupt_weights_file_is_a_clear_error(tmp_path):
    import pytest

    from pathodet.model import ModelConfig, build_retinanet

    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth: cannot load"):
        build_retinanet(ModelConfig(weights=path))
