"""How much of a recall the same detections would reach by chance: the shift baseline.

A detector that keeps many boxes "finds" annotated cells by covering tissue, whether or
not it recognises them. To tell the two apart, each image's detections are moved rigidly
by one random offset, uniform over the image and wrapped around its edges (a toroidal
shift of the box centres; sizes, number and spatial pattern of the boxes are kept, their
registration to the cells is lost), and the recall is measured again; the mean over
``draws`` shifts is the recall of boxes placed at random. Tissue is not the same
everywhere in an image, so a detector that merely blankets the SRC-rich region also beats
that baseline. A second, local baseline moves the boxes by one cell's diameter in a random
direction: they stay on the tissue they chose but miss the cells they were put on, so the
gap above it is what recognising single cells earns.

This is the toroidal-shift null of spatial statistics for the association of two point
patterns (Lotwick and Silverman 1982, J R Stat Soc B 44:406) applied to detection boxes.
pathodet uses it to read Table 4 of the DGHM paper fairly: R-recall at the 1-FP operating
point (:mod:`pathodet.bench.losses_real`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pathodet.data.predictions import ImagePredictions
from pathodet.eval.metrics import ImageBoxes, box_recall
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
    distance: float | None = None,
) -> dict[str, float | None]:
    """Mean recall (and R-recall with ``removed``) of ``preds`` shifted at random, per image,
    over ``draws`` shifts (seeded: the same ``seed`` gives the same figures).

    Each AP image of ``truth`` gets its own offset per draw; the removed boxes of that
    image are measured against the same shifted detections.

    Args:
        distance: None: the offset is uniform over the image's ``size`` (the boxes land
            anywhere: both their registration to the cells and their choice of tissue are
            lost). A length in pixels: the boxes move that far in a uniformly random
            direction (with one cell's diameter, registration to the cells is lost but the
            boxes stay on the tissue they chose).

    Returns:
        ``{"t_recall": mean recall of truth's boxes, "r_recall": mean recall of the removed
        boxes}``, each None when there are no such boxes (``r_recall`` without ``removed``).

    Raises:
        ValueError: ``draws`` < 1, ``distance`` < 0, or an AP image of ``truth`` has no
            ``size``.
    """
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    if distance is not None and distance < 0:
        raise ValueError(f"distance must be at least 0 pixels, got {distance}")
    ap = {n: t for n, t in truth.items() if t.attribute == "AP"}
    unsized = [n for n, t in ap.items() if t.size is None]
    if unsized:
        raise ValueError(f"{unsized[0]}: the image size is unknown, so boxes cannot be shifted")
    rng = np.random.default_rng(seed)
    t_recalls, r_recalls = [], []
    for _ in range(draws):
        moved = {}
        for name, t in ap.items():
            p = preds.get(name, ImagePredictions())
            if distance is None:
                dx, dy = rng.uniform(0, t.size[0]), rng.uniform(0, t.size[1])
            else:
                angle = rng.uniform(0, 2 * np.pi)
                dx, dy = distance * np.cos(angle), distance * np.sin(angle)
            moved[name] = ImagePredictions(shift_boxes(p.boxes, dx, dy, t.size), p.scores)
        t_recalls.append(box_recall(moved, ap, iou)[0])
        r_recalls.append(None if removed is None else box_recall(moved, removed, iou)[0])
    mean = lambda xs: None if xs[0] is None else float(np.mean(xs))  # noqa: E731
    return {"t_recall": mean(t_recalls), "r_recall": mean(r_recalls)}
