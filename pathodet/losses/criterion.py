"""The criterion: from head outputs and targets to the detection loss of a mini-batch.

:class:`Criterion` is built once from the ``loss:`` section and called as
``criterion(outputs, targets)`` by every training step (plain, co-mining, distillation).
The pieces, in order:

1. :meth:`Criterion.label`: RetinaNet labelling (or top-N for cleanliness) per image.
2. :class:`AnchorBatch`: what every classification loss sees, flat over the non-ignored
   anchors of the mini-batch: logit, label, AP attribute, max IoU with annotated boxes,
   and (score soft sampling) a prior detector's score.
3. :meth:`Criterion.classification`: the configured loss, an ``if`` chain over
   ``loss.name`` (the one place the name is read).
4. Smooth-L1 regression on positives, weighted where the loss supplies weights.
"""

from __future__ import annotations

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
        pseudo: ``(N,)`` bool, positives matched to a pseudo-label (co-mining, PU
            purification), or None.
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
    pseudo: Tensor | None = None
    normalizer: Tensor | None = None
    reduce: CountReduce | None = None
    ghm_acc_sum: Tensor | None = None


def _smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """``(P, 4)`` -> ``(P,)`` smooth-L1 summed over the four deltas."""
    return F.smooth_l1_loss(pred.float(), target, beta=beta, reduction="none").sum(dim=1)


@dataclass
class Targets:
    """What supervises a mini-batch of ``B`` tiles.

    Attributes:
        boxes: per tile ``(K_b, 4)`` boxes in input pixels: annotated, then any pseudo-labels.
        is_ap: ``(B,)`` bool, the tile's negatives are unannotated (AP or ``unknown``, not
            NP): the DGHM paper's noisy group.
        pseudo: per tile ``(K_b,)`` bool, which boxes are pseudo-labels (co-mining, PU
            purification), or None when none is.
        prior_scores: ``(B, A)`` scores of a first-round detector (score soft sampling).
    """

    boxes: list[Tensor]
    is_ap: Tensor
    pseudo: list[Tensor] | None = None
    prior_scores: Tensor | None = None


class Criterion:
    """The detection loss of a run: ``criterion(outputs, targets)`` -> loss terms.

    Args:
        cfg: the ``loss:`` section. assign: anchor labelling thresholds (``model.assign``).
        reduce: sum over processes (all-reduce) under DDP. Every statistic that couples
            the images of a batch (positive count, GHM/DGHM bin counts, cleanliness weight
            mean) is then global, and each rank returns its share of the loss of the global
            batch: the sum over ranks equals the loss one process computes on all of it.
        ghm_acc_sum: ``(bins,)`` moving GHM-C bin counts, updated in place; by default a
            zero buffer when ``loss.ghm.momentum > 0`` (a run saves it in its checkpoints).
    """

    def __init__(
        self,
        cfg: LossConfig,
        assign: AssignConfig | None = None,
        reduce: CountReduce | None = None,
        ghm_acc_sum: Tensor | None = None,
    ) -> None:
        self.cfg = cfg
        self.assign = assign or AssignConfig()
        self.reduce = reduce
        if ghm_acc_sum is None and cfg.ghm.momentum > 0:
            ghm_acc_sum = torch.zeros(cfg.ghm.bins)
        self.ghm_acc_sum = ghm_acc_sum

    @property
    def needs_prior(self) -> bool:
        """Score soft sampling weighs negatives by a first-round detector's scores."""
        return self.cfg.name == "score_ss"

    def to(self, device: torch.device | str) -> Criterion:
        """Move the criterion's state (the GHM-C buffer) to ``device``; returns ``self``."""
        if self.ghm_acc_sum is not None:
            self.ghm_acc_sum = self.ghm_acc_sum.to(device)
        return self

    def label(self, anchors: Tensor, boxes: list[Tensor]) -> list[AnchorLabels]:
        """Label every anchor of every image (top-N rule for cleanliness, RetinaNet's otherwise)."""
        if self.cfg.name == "cleanliness":
            return [assign_topn(anchors, b, self.cfg.cleanliness.top_n) for b in boxes]
        a = self.assign
        return [assign_retinanet(anchors, b, a.fg_iou, a.bg_iou, a.allow_low_quality)
                for b in boxes]  # fmt: skip

    def classification(self, batch: AnchorBatch) -> Tensor:
        """The configured classification loss on the non-ignored anchors of a mini-batch."""
        c, name = self.cfg, self.cfg.name
        if name == "ce":
            return ce_loss(batch.logits, batch.targets, normalizer=batch.normalizer)
        if name == "focal":
            return focal_loss(batch.logits, batch.targets, c.focal.alpha, c.focal.gamma,
                              normalizer=batch.normalizer)  # fmt: skip
        if name == "ghm":
            return ghm_c_loss(batch.logits, batch.targets, c.ghm.bins, c.ghm.momentum,
                              batch.ghm_acc_sum, reduce=batch.reduce)  # fmt: skip
        if name == "sce":
            return sce_loss(batch.logits, batch.targets, c.sce.alpha, c.sce.beta, c.sce.log_zero,
                            normalizer=batch.normalizer)  # fmt: skip
        if name in ("dghm", "dghm_star"):
            d = c.dghm
            pseudo = batch.pseudo if d.pseudo_group == "noisy" else None
            return dghm_c_loss(batch.logits, batch.targets, batch.ap_image, d.mu_n, d.mu_c, d.lam,
                               d.bins, star=name == "dghm_star", reduce=batch.reduce,
                               pseudo_positive=pseudo)  # fmt: skip
        ss = c.soft_sampling
        if name == "oss":
            w = overlap_weights(batch.targets, batch.iou, batch.ap_image, ss.ap_only, ss.a, ss.b,
                                ss.c)  # fmt: skip
        elif name == "score_ss":
            if batch.prior_score is None or ss.threshold is None:
                raise ValueError(
                    "loss score_ss needs prior scores and loss.soft_sampling.threshold: train "
                    "a first round and set loss.soft_sampling.prior_checkpoint"
                )
            w = score_weights(batch.targets, batch.prior_score, ss.threshold, batch.ap_image,
                              ss.ap_only, ss.a, ss.b, ss.c)  # fmt: skip
        else:
            raise ValueError(f"loss {name!r} has no per-anchor classification loss")
        if ss.base == "ce":  # soft sampling weighs the negatives of a base loss
            return ce_loss(batch.logits, batch.targets, weight=w, normalizer=batch.normalizer)
        return focal_loss(batch.logits, batch.targets, c.focal.alpha, c.focal.gamma, w,
                          batch.normalizer)  # fmt: skip

    def __call__(self, outputs: HeadOutputs, targets: Targets) -> dict[str, Tensor]:
        """Classification and regression loss of a mini-batch.

        Args:
            outputs: the detector's :class:`HeadOutputs` for ``B`` images.
            targets: boxes, AP attribute, pseudo-label flags and prior scores of the batch.

        Returns:
            ``{"cls": ..., "reg": ..., "loss": cls + reg_weight * reg, "positives": P}``.
        """
        cfg, reduce = self.cfg, self.reduce
        boxes = targets.boxes
        anchors = outputs.anchors
        b, a = outputs.cls_logits.shape
        labelled = self.label(anchors, boxes)
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
        n_pos_f = n_pos.to(torch.float32)
        normalizer = (n_pos_f if reduce is None else reduce(n_pos_f)).clamp(min=1)

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
                logits.flatten(), soft.flatten(), weight.flatten(), cfg.focal.alpha,
                cfg.focal.gamma, normalizer=normalizer,
            )  # fmt: skip
            reg = (r * reg_each).sum() / normalizer
        else:
            valid = labels >= 0
            pseudo = targets.pseudo
            prior = targets.prior_scores
            batch = AnchorBatch(
                logits=logits[valid],
                targets=pos[valid].float(),
                ap_image=targets.is_ap.bool().view(b, 1).expand(b, a)[valid],
                iou=max_iou[valid],
                prior_score=None if prior is None else prior[valid],
                pseudo=None if pseudo is None else _pseudo_anchors(pseudo, matched, pos)[valid],
                normalizer=normalizer,
                reduce=reduce,
                ghm_acc_sum=self.ghm_acc_sum,
            )
            cls = self.classification(batch)
            reg = reg_each.sum() / normalizer
        return {"cls": cls, "reg": reg, "loss": cls + cfg.reg_weight * reg, "positives": n_pos}


def detection_loss(
    outputs: HeadOutputs,
    boxes: list[Tensor],
    is_ap: Tensor,
    cfg: LossConfig,
    assign: AssignConfig | None = None,
    prior_scores: Tensor | None = None,
    reduce: CountReduce | None = None,
    ghm_acc_sum: Tensor | None = None,
    pseudo: list[Tensor] | None = None,
) -> dict[str, Tensor]:
    """One call of a fresh :class:`Criterion` (tests and one-off use). GHM-C with momentum
    needs the caller's ``ghm_acc_sum`` (updated in place): a one-off buffer would forget."""
    criterion = Criterion(cfg, assign, reduce)
    criterion.ghm_acc_sum = ghm_acc_sum
    return criterion(outputs, Targets(boxes, is_ap, pseudo, prior_scores))


def _pseudo_anchors(pseudo: list[Tensor], matched: Tensor, pos: Tensor) -> Tensor:
    """``(B, A)`` bool: positive anchors whose matched box is a pseudo-label."""
    out = torch.zeros_like(pos)
    for b, flags in enumerate(pseudo):
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
