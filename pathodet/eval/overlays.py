"""Overlays of held-out real images for a pathologist: what was found, missed and new.

Detections are drawn at the fold's operating point (the score threshold giving 1 false
positive per NP image on that fold's held-out images). Colours:

- green: a detection that hits an annotated SRC (IoU >= 0.3);
- yellow: an annotated SRC no detection hits (a miss);
- cyan: a detection with no annotation under it: in an AP image an unannotated SRC or a
  false positive (annotation is partial, so only a reader can tell), in an NP image a
  false positive.

Each overlay is the whole image at half size beside a full-resolution crop (enlarged to
the same height, about 2x for these 2000 px images)
of the 512 x 512 px region holding the most annotated and detected cells.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pathodet.core.io import atomic_write_image
from pathodet.data.digestpath import read_manifest
from pathodet.data.images import read_image
from pathodet.data.overlay import draw_boxes
from pathodet.data.predictions import ImagePredictions, read_predictions
from pathodet.eval.annotations import load_annotations
from pathodet.eval.matching import greedy_match
from pathodet.model.boxes import SAME_CELL_IOU

GREEN, YELLOW, CYAN = (0, 200, 0), (255, 215, 0), (0, 220, 255)
CROP = 512


def classify(truth: np.ndarray, found: ImagePredictions, iou: float = SAME_CELL_IOU) -> dict:
    """Split into ``hits`` (detections on an annotated SRC), ``misses`` (annotated, not hit)
    and ``new`` (detections on no annotation); boxes ``(N, 4)`` in image pixels."""
    match = greedy_match(found.boxes, found.scores, truth, iou)
    hit = match >= 0
    missed = np.ones(len(truth), bool)
    missed[match[hit]] = False
    return {"hits": found.boxes[hit], "misses": truth[missed], "new": found.boxes[~hit]}


def _densest(boxes: np.ndarray, w: int, h: int) -> tuple[int, int]:
    """Top-left of the CROP x CROP window holding the most box centres (grid of CROP/4)."""
    if not len(boxes) or w <= CROP or h <= CROP:
        return max(0, (w - CROP) // 2), max(0, (h - CROP) // 2)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    best, at = -1, (0, 0)
    for y in range(0, h - CROP + 1, CROP // 4):
        for x in range(0, w - CROP + 1, CROP // 4):
            n = int(((cx >= x) & (cx < x + CROP) & (cy >= y) & (cy < y + CROP)).sum())
            if n > best:
                best, at = n, (x, y)
    return at


def overlay(rgb: np.ndarray, parts: dict) -> np.ndarray:
    """The drawn whole image (half size) beside the enlarged densest crop, ``(H, W, 3)``."""
    img = draw_boxes(rgb, parts["misses"], YELLOW, 3)
    img = draw_boxes(img, parts["new"], CYAN, 3)
    img = draw_boxes(img, parts["hits"], GREEN, 3)
    h, w = rgb.shape[:2]
    x, y = _densest(np.concatenate([parts["hits"], parts["misses"], parts["new"]]), w, h)
    crop = img[y : y + CROP, x : x + CROP]
    whole = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.LANCZOS))
    side = whole.shape[0]
    zoom = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.NEAREST))
    marked = draw_boxes(whole, np.array([[x, y, x + CROP, y + CROP]]) / 2, (255, 255, 255), 2)
    gap = np.full((side, 12, 3), 255, np.uint8)
    return np.concatenate([marked, gap, zoom], axis=1)


def cv_overlays(cv_out: Path, dest: Path, n_ap: int = 3, n_np: int = 1) -> list[dict]:
    """Overlays of held-out images of a ``pathodet cv`` folder into ``dest``.

    Picks the AP image with the most annotated boxes of each of the first ``n_ap`` finished
    folds (different cases) and the ``n_np`` NP images with the most detections at the
    operating point. Returns one dict per file: image, fold, counts.
    """
    chosen = []
    folds = [json.loads(p.read_text()) for p in sorted(cv_out.glob("fold-*/fold.json"))]
    nps = []
    for rec in folds:
        folder = cv_out / f"fold-{rec['fold']}"
        manifest = folder / "held-out.csv"
        gt = load_annotations(manifest)
        preds = read_predictions(folder / "predictions" / "predictions.csv", images=gt.annotated)
        t = rec.get("threshold_at_1fp")
        thr = np.inf if t is None else t
        records = read_manifest(manifest)
        ap = sorted((r for r in records if r.attribute == "AP"),
                    key=lambda r: (-len(gt.annotated[r.name].boxes), r.name))  # fmt: skip
        if ap and len(chosen) < n_ap:
            chosen.append((ap[0], rec["fold"], gt.annotated[ap[0].name].boxes, preds, thr))
        for r in records:
            if r.attribute == "NP":
                p = preds.get(r.name, ImagePredictions())
                nps.append((int((p.scores >= thr).sum()), r, rec["fold"], preds, thr))
    nps.sort(key=lambda x: (-x[0], x[1].name))
    chosen += [(r, f, np.zeros((0, 4)), p, t) for _, r, f, p, t in nps[:n_np]]
    items = []
    for k, (record, fold, truth, preds, thr) in enumerate(chosen):
        p = preds.get(record.name, ImagePredictions())
        keep = p.scores >= thr
        parts = classify(truth, ImagePredictions(p.boxes[keep], p.scores[keep]))
        path = dest / f"{record.attribute.lower()}-fold{fold}-{k + 1}.png"  # no spaces
        atomic_write_image(path, overlay(read_image(record.image), parts))
        items.append({"file": str(path), "image": record.name, "fold": fold,
                      "attribute": record.attribute, "threshold": None if thr == np.inf else thr,
                      **{k2: len(v) for k2, v in parts.items()}})  # fmt: skip
    return items
