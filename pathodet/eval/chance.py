"""How much of a recall the same detections would reach by chance: the shift baseline.

A detector that keeps many boxes "finds" annotated cells by covering tissue, whether or
not it recognises them. To tell the two apart, each image's detections are moved rigidly
by one random offset, uniform over the image and wrapped around its edges (a toroidal
shift of the box centres; sizes, number and spatial pattern of the boxes are kept, their
registration to the cells is lost), and the recall is measured again. The mean over
``draws`` shifts is the recall that coverage alone earns; the gap between the real recall
and it is what the detector's placement of its boxes earns.

This is the toroidal-shift null of spatial statistics for the association of two point
patterns (Lotwick and Silverman 1982, J R Stat Soc B 44:406) applied to detection boxes. pathodet uses it to read Table 4 of the DGHM
paper fairly: R-recall at the 1-FP operating point (:mod:`pathodet.bench.losses_real`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pathodet.data.predictions import ImagePredictions
from pathodet.eval.metrics import ImageBoxes, evaluate
from pathodet.model.boxes import SAME_CELL_IOU


def shift_boxes(boxes: np.ndarray, dx: float, dy: float, size: tuple[int, int]) -> np.ndarray:
    """``boxes (N, 4)`` ``x1, y1, x2, y2`` pixels moved by ``(dx, dy)`` pixels with their
    centres wrapped into ``[0, width) x [0, height)`` (``size = (width, height)``); sizes
    are kept, so a box whose centre lands near an edge may reach past it."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = size
    half = (boxes[:, 2:] - boxes[:, :2]) / 2
    centre = boxes[:, :2] + half
    centre = np.mod(centre + np.array([dx, dy]), np.array([w, h], np.float64))
    return np.concatenate([centre - half, centre + half], axis=1)


def chance_recall(
    preds: Mapping[str, ImagePredictions],
    truth: Mapping[str, ImageBoxes],
    iou: float = SAME_CELL_IOU,
    removed: Mapping[str, ImageBoxes] | None = None,
    draws: int = 8,
    seed: int = 0,
) -> dict[str, float | None]:
    """Mean recall (and R-recall with ``removed``) of ``preds`` shifted at random, per image,
    over ``draws`` shifts (seeded: the same ``seed`` gives the same figures).

    Each AP image of ``truth`` gets its own offset per draw, uniform over its ``size``;
    the removed boxes of that image are measured against the same shifted detections.

    Returns:
        ``{"t_recall": mean recall of truth's boxes, "r_recall": mean recall of the removed
        boxes (None without ``removed`` or removed boxes)}``; ``t_recall`` is None without
        annotated boxes.

    Raises:
        ValueError: ``draws`` < 1, or an AP image of ``truth`` has no ``size``.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    ap = {n: t for n, t in truth.items() if t.attribute == "AP"}
    unsized = [n for n, t in ap.items() if t.size is None]
    if unsized:
        raise ValueError(f"{unsized[0]}: the image size is unknown, so boxes cannot be shifted")
    rng = np.random.default_rng(seed)
    t_sum, r_sum, r_defined = 0.0, 0.0, True
    for _ in range(draws):
        moved = {}
        for name, t in ap.items():
            p = preds.get(name, ImagePredictions())
            dx, dy = rng.uniform(0, t.size[0]), rng.uniform(0, t.size[1])
            moved[name] = ImagePredictions(shift_boxes(p.boxes, dx, dy, t.size), p.scores)
        m = evaluate(moved, ap, iou, removed)
        if m["recall"] is None:
            return {"t_recall": None, "r_recall": None}
        t_sum += m["recall"]
        if m.get("r_recall") is None:
            r_defined = False
        else:
            r_sum += m["r_recall"]
    return {"t_recall": t_sum / draws, "r_recall": r_sum / draws if removed and r_defined else None}
