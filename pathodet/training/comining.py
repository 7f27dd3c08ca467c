"""One co-mining step (co-mining paper, Algorithm 1; eq. 1-2) and what it mined.

Both views of a mini-batch, the tiles as they are (``o``) and their colour view (``a``),
go through the one detector in a single forward pass (shared weights, one batch of
``2B``). Each view's detached predictions are turned into pseudo-labels by
:func:`~pathodet.training.mining.mine_batch`; those of view ``o`` join the annotations
supervising view ``a`` and vice versa, and the loss is the sum of the two views' detection
losses (any loss of the family, ``loss.name``).

On synthetic data every tile also carries the full truth, and each step counts how many
mined boxes are real SRCs (:func:`mining_counts`); the trainer logs the sums per epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from pathodet.core.machine import PrecisionSetting, autocast
from pathodet.losses.criterion import Criterion, Targets
from pathodet.model.boxes import SAME_CELL_IOU, box_iou
from pathodet.model.retinanet import HeadOutputs
from pathodet.training.batch import collate
from pathodet.training.config import CominingConfig
from pathodet.training.mining import complete_sets, mine_batch

MATCH_IOU = SAME_CELL_IOU
"""A mined box is a real SRC when it is the same cell as a true SRC box
(:data:`~pathodet.model.boxes.SAME_CELL_IOU`, the challenge's instance-matching IoU)."""
ANNOTATED_IOU = SAME_CELL_IOU
"""A true SRC counts as annotated when an annotated box is the same cell."""
MINING_KEYS = ("mined", "mined_real", "missed", "missed_found")
"""Counts per step and epoch: boxes mined (both views), of them real SRCs, unannotated true
SRCs in the tiles, of them found by a mined box of either view."""


def collate_views(
    items: list[dict],
) -> tuple[Tensor, list[Tensor], Tensor, Tensor, list[Tensor] | None]:
    """:func:`~pathodet.training.batch.collate` plus the colour view and the full truth.

    Returns:
        ``images (B, 3, H, W)``, boxes, ``is_ap (B,)``, ``images_a (B, 3, H, W)`` (the
        ``image_a`` of each item), and per tile ``(T_b, 4)`` every true SRC box (synthetic
        data) or None when the items carry no ``full_truth_boxes``.
    """
    images, boxes, is_ap = collate(items)
    views = np.stack([it["image_a"] for it in items])
    images_a = torch.from_numpy(views).permute(0, 3, 1, 2).float().div_(255.0)
    full_truth = None
    if all("full_truth_boxes" in it for it in items):
        full_truth = [torch.as_tensor(it["full_truth_boxes"], dtype=torch.float32).view(-1, 4)
                      for it in items]  # fmt: skip
    return images, boxes, is_ap, images_a, full_truth


def split_views(outputs: HeadOutputs, b: int) -> tuple[HeadOutputs, HeadOutputs]:
    """The outputs of a ``2B`` batch as those of its first and its second ``B`` images."""

    def part(sl: slice) -> HeadOutputs:
        return HeadOutputs(outputs.cls_logits[sl], outputs.bbox_deltas[sl], outputs.anchors,
                           outputs.image_size, outputs.level_sizes)  # fmt: skip

    return part(slice(0, b)), part(slice(b, 2 * b))


def comining_losses(
    model: torch.nn.Module,
    criterion: Criterion,
    images: Tensor,
    images_a: Tensor,
    targets: Targets,
    co: CominingConfig,
    precision: PrecisionSetting = "fp32",
    prior: Callable[[Tensor], Tensor] | None = None,
) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]]:
    """Eq. 2: ``L = L(P_o, C_o) + L(P_a, C_a)`` with ``C_o = Y ∪ P_a^g``, ``C_a = Y ∪ P_o^g``.

    Args:
        images, images_a: ``(B, 3, H, W)`` the tiles and their colour view (pixel-aligned).
        targets: the annotated boxes ``Y`` and the AP attribute of the tiles.
        prior: score soft sampling's first-round detector scores, applied to each view.

    Returns:
        the loss terms summed over the views (``positives`` counts both), and the boxes
        mined from view ``o`` and from view ``a`` (per tile ``(M_b, 4)``, no gradient).
    """
    b = images.shape[0]
    boxes, is_ap = targets.boxes, targets.is_ap
    model.train()
    with autocast(precision, images.device):
        outputs = model(torch.cat([images, images_a]))
    out_o, out_a = split_views(outputs, b)
    if co.mine:
        args = (co.tau, co.theta1, co.theta2, co.attribute_aware, co.max_candidates)
        mined_o = mine_batch(out_o, boxes, is_ap, *args)
        mined_a = mine_batch(out_a, boxes, is_ap, *args)
    else:  # 'Joint': both views on the annotations alone
        mined_o = mined_a = [box.new_zeros((0, 4)) for box in boxes]
    total: dict[str, Tensor] = {}
    for out, view, mined in ((out_o, images, mined_a), (out_a, images_a, mined_o)):
        complete, pseudo = complete_sets(boxes, mined)
        scores = prior(view) if prior is not None else None
        terms = criterion(out, Targets(complete, is_ap, pseudo, scores))
        for k, v in terms.items():
            total[k] = total[k] + v if k in total else v
    return total, mined_o, mined_a


def mining_counts(
    mined_o: list[Tensor],
    mined_a: list[Tensor],
    annotated: list[Tensor],
    full_truth: list[Tensor] | None,
) -> dict[str, float]:
    """:data:`MINING_KEYS` of one mini-batch (only ``mined`` without the full truth).

    Args:
        mined_o, mined_a: per tile ``(M_b, 4)`` boxes mined from each view.
        annotated: per tile ``(K_b, 4)``. full_truth: per tile ``(T_b, 4)`` every true SRC.
    """
    out = {"mined": float(sum(len(m) for m in mined_o) + sum(len(m) for m in mined_a))}
    if full_truth is None:
        return out
    real = missed = found = 0
    for mo, ma, y, t in zip(mined_o, mined_a, annotated, full_truth, strict=True):
        mined = torch.cat([mo, ma]).float().cpu()
        t, y = t.float().cpu(), y.float().view(-1, 4).cpu()
        if len(t) == 0:
            continue
        if len(mined):
            real += int((box_iou(mined, t).max(dim=1).values >= MATCH_IOU).sum())
        unannotated = torch.ones(len(t), dtype=torch.bool)
        if len(y):
            unannotated = box_iou(t, y).max(dim=1).values < ANNOTATED_IOU
        missed += int(unannotated.sum())
        if len(mined) and unannotated.any():
            hit = box_iou(t[unannotated], mined).max(dim=1).values >= MATCH_IOU
            found += int(hit.sum())
    out.update(mined_real=float(real), missed=float(missed), missed_found=float(found))
    return out


def mining_summary(sums: dict[str, float]) -> str:
    """One log line from an epoch's :data:`MINING_KEYS` sums."""
    n = int(sums.get("mined", 0))
    if "mined_real" not in sums:
        return f"mined {n} boxes"
    real, missed, found = (int(sums[k]) for k in ("mined_real", "missed", "missed_found"))
    precision = f"{real / n:.3f}" if n else "-"
    return (
        f"mined {n} boxes, {real} real SRCs (mining precision {precision}); "
        f"{found} of {missed} unannotated SRC sightings found"
    )
