"""From head outputs and annotations to the detection loss, with the classification loss as a plug-in.

The pieces, in order:
1. :func:`label_anchors`: RetinaNet labelling (or top-N for cleanliness) per image.
2. :class:`AnchorBatch`: what every classification loss sees, flat over the non-ignored
   anchors of the mini-batch: logit, label, AP attribute, max IoU with annotated boxes,
   and (score soft sampling) a prior detector's score.
3. ``CLASSIFICATION_LOSSES[name](batch, cfg)``: a plain dict from config names to functions.
4. Smooth-L1 regression on positives, weighted where the loss supplies weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pathodet.losses.ce import ce_loss
from pathodet.losses.cleanliness import cleanliness_loss, cleanliness_targets
from pathodet.losses.config import LossConfig
from pathodet.losses.dghm import dghm_c_loss
from pathodet.losses.focal import focal_loss
from pathodet.losses.ghm import CountReduce, ghm_c_loss
from pathodet.losses.sce import sce_loss
from pathodet.losses.soft_sampling import overlap_weights, score_weights
from pathodet.model.assign import POSITIVE, AnchorLabels, assign_retinanet, assign_topn
from pathodet.model.boxes import decode, encode, paired_iou
from pathodet.model.config import AssignConfig
from pathodet.model.retinanet import HeadOutputs


@dataclass
class AnchorBatch:
    """Per-anchor inputs of a classification loss, flat over the ``N`` non-ignored anchors.

    Attributes:
        logits: ``(N,)``. targets: ``(N,)`` float labels (0/1). ap_image: ``(N,)`` bool.
        iou: ``(N,)`` max IoU with the annotated boxes of the anchor's image.
        prior_score: ``(N,)`` scores of a first-round detector (score soft sampling) or None.
        mined: ``(N,)`` bool, positives matched to a co-mining pseudo-label, or None.
        normalizer: the (global) number of positive anchors, at least 1: CE-like losses divide
            by it (under DDP the count of the whole global batch, so rank losses add up).
        reduce: sums statistics across processes (DDP), or None.
        ghm_acc_sum: ``(bins,)`` GHM-C moving bin counts, updated in place (momentum > 0).
    """

    logits: Tensor
    targets: Tensor
    ap_image: Tensor
    iou: Tensor
    prior_score: Tensor | None = None
    mined: Tensor | None = None
    normalizer: Tensor | None = None
    reduce: CountReduce | None = None
    ghm_acc_sum: Tensor | None = None


def _base(batch: AnchorBatch, cfg: LossConfig, weight: Tensor) -> Tensor:
    if cfg.soft_sampling.base == "ce":
        return ce_loss(batch.logits, batch.targets, weight=weight, normalizer=batch.normalizer)
    f = cfg.focal
    return focal_loss(batch.logits, batch.targets, f.alpha, f.gamma, weight, batch.normalizer)


def _oss(batch: AnchorBatch, cfg: LossConfig) -> Tensor:
    ss = cfg.soft_sampling
    w = overlap_weights(batch.targets, batch.iou, batch.ap_image, ss.ap_only, ss.a, ss.b, ss.c)
    return _base(batch, cfg, w)


def _score_ss(batch: AnchorBatch, cfg: LossConfig) -> Tensor:
    ss = cfg.soft_sampling
    if batch.prior_score is None or ss.threshold is None:
        raise ValueError(
            "loss score_ss needs prior scores and loss.soft_sampling.threshold: train a first "
            "round and set loss.soft_sampling.prior_checkpoint"
        )
    w = score_weights(
        batch.targets, batch.prior_score, ss.threshold, batch.ap_image, ss.ap_only, ss.a, ss.b, ss.c
    )
    return _base(batch, cfg, w)


def _dghm(batch: AnchorBatch, cfg: LossConfig, star: bool) -> Tensor:
    d = cfg.dghm
    noisy = batch.mined if d.mined_group == "noisy" else None
    return dghm_c_loss(
        batch.logits, batch.targets, batch.ap_image, d.mu_n, d.mu_c, d.lam, d.bins,
        star=star, reduce=batch.reduce, noisy_positive=noisy,
    )  # fmt: skip


ClassificationLoss = Callable[[AnchorBatch, LossConfig], Tensor]

CLASSIFICATION_LOSSES: dict[str, ClassificationLoss] = {
    "ce": lambda b, c: ce_loss(b.logits, b.targets, normalizer=b.normalizer),
    "focal": lambda b, c: focal_loss(
        b.logits, b.targets, c.focal.alpha, c.focal.gamma, normalizer=b.normalizer
    ),
    "ghm": lambda b, c: ghm_c_loss(
        b.logits, b.targets, c.ghm.bins, c.ghm.momentum, b.ghm_acc_sum, reduce=b.reduce
    ),
    "sce": lambda b, c: sce_loss(
        b.logits, b.targets, c.sce.alpha, c.sce.beta, c.sce.log_zero, normalizer=b.normalizer
    ),
    "dghm": lambda b, c: _dghm(b, c, star=False),
    "dghm_star": lambda b, c: _dghm(b, c, star=True),
    "oss": _oss,
    "score_ss": _score_ss,
}


def label_anchors(
    anchors: Tensor, boxes: list[Tensor], cfg: LossConfig, assign: AssignConfig
) -> list[AnchorLabels]:
    """Label every anchor of every image (top-N rule for cleanliness, RetinaNet's otherwise)."""
    if cfg.name == "cleanliness":
        return [assign_topn(anchors, b, cfg.cleanliness.top_n) for b in boxes]
    return [
        assign_retinanet(anchors, b, assign.fg_iou, assign.bg_iou, assign.allow_low_quality)
        for b in boxes
    ]


def _smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """``(P, 4)`` -> ``(P,)`` smooth-L1 summed over the four deltas."""
    return F.smooth_l1_loss(pred.float(), target, beta=beta, reduction="none").sum(dim=1)


def detection_loss(
    outputs: HeadOutputs,
    boxes: list[Tensor],
    ap_image: Tensor,
    cfg: LossConfig,
    assign: AssignConfig | None = None,
    prior_scores: Tensor | None = None,
    reduce: CountReduce | None = None,
    ghm_acc_sum: Tensor | None = None,
    mined: list[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Classification and regression loss of a mini-batch.

    Args:
        outputs: the detector's :class:`HeadOutputs` for ``B`` images.
        boxes: per image ``(K_b, 4)`` annotated boxes in input pixels.
        ap_image: ``(B,)`` bool, the image (tile) comes from an AP image.
        cfg: the loss section. assign: anchor labelling thresholds.
        prior_scores: ``(B, A)`` scores of a first-round detector (score soft sampling).
        reduce: sum over processes (all-reduce) under DDP. Every statistic that couples
            the images of a batch (positive count, GHM/DGHM bin counts, cleanliness weight
            mean) is then global, and each rank returns its share of the loss of the global
            batch: the sum over ranks equals the loss one process computes on all of it.
        ghm_acc_sum: the trainer's ``(bins,)`` buffer of moving GHM-C bin counts, needed when
            ``loss.ghm.momentum > 0`` (start it at zeros; it is updated in place).
        mined: per image ``(K_b,)`` bool, which of ``boxes`` are co-mining pseudo-labels
            (DGHM-C may group their positives as noisy: ``loss.dghm.mined_group``).

    Returns:
        ``{"cls": ..., "reg": ..., "loss": cls + reg_weight * reg, "positives": P}``.
    """
    assign = assign or AssignConfig()
    anchors = outputs.anchors
    b, a = outputs.cls_logits.shape
    labelled = label_anchors(anchors, boxes, cfg, assign)
    labels = torch.stack([x.labels for x in labelled])  # (B, A)
    matched = torch.stack([x.matched for x in labelled])
    max_iou = torch.stack([x.max_iou for x in labelled])
    pos = labels == POSITIVE
    n_pos = pos.sum()

    # regression targets of positives
    img_idx, anc_idx = pos.nonzero(as_tuple=True)
    gt = gather_boxes(boxes, img_idx, matched[pos])
    pred_deltas = outputs.bbox_deltas[pos]
    reg_each = _smooth_l1(pred_deltas, encode(gt, anchors[anc_idx]), cfg.smooth_l1_beta)
    n_pos_global = n_pos.to(torch.float32) if reduce is None else reduce(n_pos.to(torch.float32))
    normalizer = n_pos_global.clamp(min=1)

    logits = outputs.cls_logits.float()
    if cfg.name == "cleanliness":
        with torch.no_grad():
            loc_a = paired_iou(decode(pred_deltas.detach(), anchors[anc_idx]), gt)
            cls_c = logits[pos].detach().sigmoid()
            c, r = cleanliness_targets(
                loc_a, cls_c, cfg.cleanliness.alpha, cfg.cleanliness.gamma, normalize=False
            )
            r_sum = r.sum() if reduce is None else reduce(r.sum())
            if r.numel():
                r = r * (normalizer / r_sum.clamp(min=1e-12))  # mean 1 over the global A_pos
        soft = torch.zeros_like(logits)
        weight = torch.ones_like(logits)
        soft[pos], weight[pos] = c, r
        cls = cleanliness_loss(
            logits.flatten(), soft.flatten(), weight.flatten(), cfg.focal.alpha, cfg.focal.gamma,
            normalizer=normalizer,
        )  # fmt: skip
        reg = (r * reg_each).sum() / normalizer
    else:
        valid = labels >= 0
        batch = AnchorBatch(
            logits=logits[valid],
            targets=pos[valid].float(),
            ap_image=ap_image.bool().view(b, 1).expand(b, a)[valid],
            iou=max_iou[valid],
            prior_score=None if prior_scores is None else prior_scores[valid],
            mined=None if mined is None else _mined_anchors(mined, matched, pos)[valid],
            normalizer=normalizer,
            reduce=reduce,
            ghm_acc_sum=ghm_acc_sum,
        )
        cls = CLASSIFICATION_LOSSES[cfg.name](batch, cfg)
        reg = reg_each.sum() / normalizer
    return {"cls": cls, "reg": reg, "loss": cls + cfg.reg_weight * reg, "positives": n_pos}


def _mined_anchors(mined: list[Tensor], matched: Tensor, pos: Tensor) -> Tensor:
    """``(B, A)`` bool: positive anchors whose matched box is a mined one."""
    out = torch.zeros_like(pos)
    for b, flags in enumerate(mined):
        if flags.numel():
            out[b] = pos[b] & flags.bool()[matched[b].clamp(min=0, max=flags.numel() - 1)]
    return out


def gather_boxes(boxes: list[Tensor], img_idx: Tensor, box_idx: Tensor) -> Tensor:
    """``(P, 4)`` annotated box of each positive anchor, from per-image box lists."""
    if img_idx.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=img_idx.device)
    offsets = torch.tensor([0] + [len(x) for x in boxes[:-1]], device=img_idx.device).cumsum(0)
    flat = torch.cat([x.float().view(-1, 4) for x in boxes])
    return flat[offsets[img_idx] + box_idx]
