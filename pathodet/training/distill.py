"""Self-distillation training step (PU purification paper, Eq. 8-15) for the RetinaNet.

:class:`Distiller` holds the frozen teacher and the student's trainable adaptation convs
``phi_l`` (one 3x3 conv per FPN level, Eq. 11); :func:`distill_losses` computes

    L = L_det + gamma * L_hint + lam * (L_kdc + L_kdr)

on one mini-batch, with the pure loss functions of :mod:`pathodet.losses.distill`. The
teacher sees the same (augmented) tiles as the student, so both have the same anchors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pathodet.core.machine import PrecisionSetting, autocast
from pathodet.losses.criterion import Criterion, Targets, gather_boxes
from pathodet.losses.distill import hint_loss, imitation_mask, kd_cls_loss, kd_reg_loss
from pathodet.model.assign import POSITIVE
from pathodet.model.boxes import encode
from pathodet.model.config import ModelConfig
from pathodet.model.retinanet import STRIDES, FrozenDetector
from pathodet.training.checkpoint import CheckpointError, load_detector
from pathodet.training.config import DistillConfig

DISTILL_KEYS = ("hint", "kdc", "kdr")


class Distiller(nn.Module):
    """The teacher (not a submodule: it is neither trained nor saved) and the adaptation
    convs ``phi_l`` (``adapters``, trained with the student and saved in its checkpoints).

    Raises:
        CheckpointError: the teacher cannot be loaded or its architecture differs from the
            student's (the features and anchors must correspond one to one).
    """

    def __init__(
        self,
        cfg: DistillConfig,
        student: ModelConfig,
        device: torch.device,
        precision: PrecisionSetting = "fp32",
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.teacher is None:
            raise CheckpointError("train.distill needs train.distill.teacher=RUN/last.pt")
        model, tcfg = load_detector(cfg.teacher)
        mine = student.model_dump(exclude={"weights", "init", "norm", "inference"})
        theirs = tcfg.model.model_dump(exclude={"weights", "init", "norm", "inference"})
        if mine != theirs:
            diff = sorted(k for k in mine if mine[k] != theirs.get(k))
            raise CheckpointError(
                f"{cfg.teacher}: the teacher's model differs from the student's in {diff}; "
                "self-distillation needs the same architecture"
            )
        self.teacher = FrozenDetector(model, device, precision)  # not a submodule: not saved
        c = student.fpn_channels
        self.adapters = nn.ModuleList(
            nn.Conv2d(c, c, kernel_size=3, padding=1) for _ in STRIDES
        ).to(device)


def distill_losses(
    net: nn.Module,
    distiller: Distiller,
    criterion: Criterion,
    images: Tensor,
    targets: Targets,
    precision: PrecisionSetting = "fp32",
) -> dict[str, Tensor]:
    """Detection loss plus the three distillation terms of one mini-batch (Eq. 8).

    Args:
        net: the student (may be DDP-wrapped); put in train mode here.
        images: ``(B, 3, H, W)`` in ``[0, 1]``. targets: annotated and pseudo boxes (their
            positives join ``loss.dghm.pseudo_group`` under DGHM-C) and the AP attribute.

    Returns:
        ``{"loss", "cls", "reg", "positives", "hint", "kdc", "kdr"}``; ``loss`` is the total.
    """
    dc = distiller.cfg
    net.train()
    with autocast(precision, images.device):
        out = net(images)
        adapted = [phi(f) for phi, f in zip(distiller.adapters, out.features, strict=True)]
    t_out = distiller.teacher(images)
    losses = criterion(out, targets)
    boxes = targets.boxes
    anchors = out.anchors
    shapes = [(f.shape[-2], f.shape[-1]) for f in out.features]
    per_image = [imitation_mask(anchors, shapes, b, dc.psi) for b in boxes]
    masks = [torch.stack([m[level] for m in per_image]) for level in range(len(shapes))]
    hint = hint_loss(adapted, t_out.features, masks)

    labelled = criterion.label(anchors, boxes)
    labels = torch.stack([x.labels for x in labelled])  # (B, A)
    valid, pos = labels >= 0, labels == POSITIVE
    kdc = kd_cls_loss(out.cls_logits[valid], t_out.cls_logits[valid], pos[valid].float(),
                      dc.temperature)  # fmt: skip
    img_idx, anc_idx = pos.nonzero(as_tuple=True)
    gt = gather_boxes(boxes, img_idx, torch.stack([x.matched for x in labelled])[pos])
    kdr = kd_reg_loss(out.bbox_deltas[pos], t_out.bbox_deltas[pos], encode(gt, anchors[anc_idx]))
    total = losses["loss"] + dc.gamma * hint + dc.lam * (kdc + kdr)
    return {**losses, "loss": total, "hint": hint, "kdc": kdc, "kdr": kdr}
