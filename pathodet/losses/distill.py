"""Self-distillation of a one-stage detector (PU purification paper, Eq. 8-15), as pure
functions over tensors.

The paper distils a two-stage FPN detector; here the student and the teacher are the same
RetinaNet, so its three terms become:

- hint (Eq. 11): the student's FPN features, through one 3x3 adaptation conv per level,
  imitate the teacher's on every level, only inside an imitation mask around the
  annotated and pseudo boxes (Wang et al. 2019's fine-grained imitation region);
- classification (Eq. 14, binary): KL divergence between the teacher's and the student's
  per-anchor sigmoid at temperature ``T``, times ``T^2``, only on anchors the teacher
  classifies correctly with respect to the assigned label (``q_i = 1``);
- regression (Eq. 15): on positive anchors, ``min(|t' - t_teacher|_1, |t' - t_gt|_1)``:
  the student follows whichever of the teacher and the ground truth it is closer to.

Shapes: ``B`` images, ``A`` anchors, ``C`` FPN channels, level ``l`` of ``H_l x W_l``
locations with ``a`` anchors per location (anchors are ordered level, row, column, anchor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pathodet.model.boxes import box_iou


def imitation_mask(
    anchors: Tensor, level_shapes: list[tuple[int, int]], boxes: Tensor, psi: float = 0.5
) -> list[Tensor]:
    """Imitation region of one image on every FPN level (Wang et al. 2019, section 3.1).

    For each box and level, ``F = psi * (max IoU of the level's anchors with the box)``;
    a location imitates when one of its anchors has IoU above ``F`` with some box.

    Args:
        anchors: ``(A, 4)`` anchors of all levels, pixels.
        level_shapes: ``(H_l, W_l)`` of each level; ``sum(H_l * W_l) * a == A``.
        boxes: ``(K, 4)`` annotated and pseudo boxes, pixels.
        psi: the threshold factor (0.5 in Wang et al.).

    Returns:
        per level a ``(H_l, W_l)`` bool mask (all False without boxes).
    """
    locations = sum(h * w for h, w in level_shapes)
    if locations == 0 or anchors.shape[0] % locations:
        raise ValueError(f"{anchors.shape[0]} anchors do not fit levels {level_shapes}")
    per_loc = anchors.shape[0] // locations
    masks, start = [], 0
    for h, w in level_shapes:
        n = h * w * per_loc
        if boxes.numel() == 0:
            masks.append(torch.zeros((h, w), dtype=torch.bool, device=anchors.device))
        else:
            iou = box_iou(anchors[start : start + n], boxes.float().view(-1, 4))  # (n, K)
            threshold = psi * iou.max(dim=0).values  # (K,)
            hit = (iou > threshold) & (threshold > 0)
            masks.append(hit.any(dim=1).view(h, w, per_loc).any(dim=2))
        start += n
    return masks


def hint_loss(student: list[Tensor], teacher: list[Tensor], masks: list[Tensor]) -> Tensor:
    """Eq. 11: ``sum I (phi(S) - T)^2 / (2 N_I)``, ``N_I = C * sum I``; zero without mask.

    Args:
        student: per level ``(B, C, H_l, W_l)`` adapted student features ``phi_l(S_l)``.
        teacher: per level ``(B, C, H_l, W_l)`` teacher features.
        masks: per level ``(B, H_l, W_l)`` bool imitation masks.
    """
    total = student[0].new_zeros((), dtype=torch.float32)
    count = 0.0
    for s, t, m in zip(student, teacher, masks, strict=True):
        if s.shape != t.shape or m.shape != (s.shape[0], *s.shape[2:]):
            raise ValueError(f"hint shapes differ: {tuple(s.shape)}, {tuple(t.shape)}, "
                             f"{tuple(m.shape)}")  # fmt: skip
        sq = (s.float() - t.float()).pow(2).sum(dim=1)  # (B, H, W)
        total = total + (sq * m).sum()
        count += float(m.sum()) * s.shape[1]
    return total / (2.0 * count) if count > 0 else total * 0.0


def kd_cls_loss(
    student: Tensor, teacher: Tensor, targets: Tensor, temperature: float = 2.0,
    normalizer: Tensor | float | None = None,
) -> Tensor:  # fmt: skip
    """Eq. 14 in binary form: ``T^2 sum_i q_i KL(p_t || p_s) / normalizer``.

    ``p = sigmoid(z / T)`` for student and teacher; ``q_i = 1`` where the teacher's
    decision (``z_t >= 0``) equals the assigned label.

    Args:
        student, teacher: ``(N,)`` logits of the same (non-ignored) anchors.
        targets: ``(N,)`` assigned labels in ``{0, 1}``.
        normalizer: default ``sum q_i`` (a mean over the distilled anchors, as the paper's
            two-stage detector averages over its sampled proposals). Dividing a dense
            detector's ~10^4 anchors per tile by the positive count instead lets the easy
            negatives' KL swamp the detection loss (measured: 2237 against a classification
            loss of 0.01 on the first step of a student).
    """
    z_s, z_t = student.float() / temperature, teacher.detach().float() / temperature
    p_t = torch.sigmoid(z_t)
    kl = p_t * (F.logsigmoid(z_t) - F.logsigmoid(z_s)) + (1 - p_t) * (
        F.logsigmoid(-z_t) - F.logsigmoid(-z_s)
    )
    q = (teacher.detach() >= 0) == (targets > 0.5)
    if normalizer is None:
        normalizer = q.sum().clamp(min=1).to(torch.float32)
    return temperature**2 * (kl * q).sum() / normalizer


def kd_reg_loss(student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
    """Eq. 15: mean over positive anchors of ``min(|t' - t_t|_1, |t' - t*|_1)``.

    Args:
        student, teacher, target: ``(P, 4)`` encoded deltas of the ``P`` positive anchors:
            the student's, the teacher's and the ground truth's.
    """
    if student.shape[0] == 0:
        return student.float().sum() * 0.0
    s = student.float()
    to_teacher = (s - teacher.detach().float()).abs().sum(dim=1)
    to_truth = (s - target.float()).abs().sum(dim=1)
    return torch.minimum(to_teacher, to_truth).mean()
