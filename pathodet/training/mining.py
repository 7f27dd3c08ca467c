"""Co-generation (co-mining paper, Algorithm 1 lines 6-14 and eq. 1): from one view's
detached predictions to pseudo-labels for the other view.

Per tile, from the dense predictions of one view:

1. keep boxes with score ``>= tau`` (step 1);
2. NMS at IoU ``theta1``, keeping the highest score per cell (step 2);
3. drop every box that is the same cell as an annotated box (step 3: it is an annotated
   SRC already): IoU >= ``theta2``, by default pathodet's one "same cell" rule
   (:func:`pathodet.model.boxes.same_cell`, IoU >= 0.3, the challenge's matching IoU), so
   a mined box is never a second box of a cell evaluation would match to the annotation.
   With pathodet's earlier theta2 (0.5, strict ">"), a box at IoU 0.3-0.5 with an
   annotated box was mined as a second positive of one cell. Algorithm 1 writes the
   condition with "for all" annotated boxes; the text ("remove the bounding boxes
   representing the annotated instances") means any one of them, which is what is done
   here. Step 2's NMS (``theta1``) is a different idea: how much two detections may
   overlap.

The survivors ``P^g`` join the annotations: ``C = Y ∪ P^g`` (eq. 1). With attribute-aware
mining (pathodet's default) nothing is mined in NP tiles, whose labels are known clean.
Everything here runs without gradient: pseudo-labels are constants to the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from pathodet.model.boxes import SAME_CELL_IOU, same_cell
from pathodet.model.retinanet import HeadOutputs, decode_clipped


@torch.no_grad()
def co_generate(
    boxes: Tensor,
    scores: Tensor,
    annotated: Tensor,
    tau: float = 0.6,
    theta1: float = 0.5,
    theta2: float = SAME_CELL_IOU,
    max_candidates: int = 1000,
) -> tuple[Tensor, Tensor]:
    """Pseudo-labels of one tile from one view's predictions.

    Args:
        boxes: ``(A, 4)`` predicted boxes ``x1, y1, x2, y2`` in tile pixels (degenerate
            boxes, with no area, are never kept).
        scores: ``(A,)`` SRC probabilities in ``[0, 1]``.
        annotated: ``(K, 4)`` annotated boxes of the tile.
        tau, theta1, theta2: score threshold, NMS IoU, and the IoU with an annotated box
            from which a box is the same cell and dropped (default
            :data:`~pathodet.model.boxes.SAME_CELL_IOU`).
        max_candidates: at most this many highest-scoring boxes enter NMS (a cost bound
            for an untrained detector that scores everything high).

    Returns:
        ``(M, 4)`` mined boxes and ``(M,)`` their scores, highest score first.
    """
    boxes, scores = boxes.detach().float(), scores.detach().float()
    keep = (scores >= tau) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[keep], scores[keep]
    if scores.numel() > max_candidates:
        top = scores.topk(max_candidates).indices
        boxes, scores = boxes[top], scores[top]
    keep = nms(boxes, scores, theta1)  # sorted by decreasing score
    boxes, scores = boxes[keep], scores[keep]
    if annotated.numel() and boxes.numel():
        keep = ~same_cell(boxes, annotated.to(boxes).view(-1, 4), theta2).any(dim=1)
        boxes, scores = boxes[keep], scores[keep]
    return boxes, scores


@torch.no_grad()
def mine_batch(
    outputs: HeadOutputs,
    annotated: list[Tensor],
    ap_image: Tensor,
    tau: float = 0.6,
    theta1: float = 0.5,
    theta2: float = SAME_CELL_IOU,
    attribute_aware: bool = True,
    max_candidates: int = 1000,
) -> list[Tensor]:
    """Co-generation over a mini-batch of one view.

    Args:
        outputs: the view's :class:`HeadOutputs` for ``B`` tiles (detached here).
        annotated: per tile ``(K_b, 4)`` annotated boxes. ap_image: ``(B,)`` bool.
        attribute_aware: mine nothing in NP tiles.

    Returns:
        per tile ``(M_b, 4)`` float32 mined boxes in tile pixels, clipped to the tile.
    """
    scores = outputs.cls_logits.detach().float().sigmoid()
    mined = []
    for b in range(scores.shape[0]):
        if attribute_aware and not bool(ap_image[b]):
            mined.append(scores.new_zeros((0, 4)))
            continue
        candidates = scores[b] >= tau  # decode only what can pass step 1
        boxes = decode_clipped(outputs.bbox_deltas[b][candidates].detach(),
                               outputs.anchors[candidates], outputs.image_size)  # fmt: skip
        found, _ = co_generate(boxes, scores[b][candidates], annotated[b], tau, theta1, theta2,
                               max_candidates)  # fmt: skip
        mined.append(found)
    return mined


def complete_sets(
    annotated: list[Tensor], mined: list[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Eq. 1, ``C = Y ∪ P^g`` per tile: the boxes, annotated first, and which are mined.

    Returns:
        per tile ``(K_b + M_b, 4)`` boxes and ``(K_b + M_b,)`` bool (True for mined boxes).
    """
    boxes, flags = [], []
    for y, p in zip(annotated, mined, strict=True):
        y = y.float().view(-1, 4)
        boxes.append(torch.cat([y, p.to(y)]))
        flags.append(torch.cat([torch.zeros(len(y), dtype=torch.bool, device=y.device),
                                torch.ones(len(p), dtype=torch.bool, device=y.device)]))  # fmt: skip
    return boxes, flags
