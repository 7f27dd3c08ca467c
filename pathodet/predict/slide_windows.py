"""Streaming detection over a slide's windows, and the merge in level-0 coordinates.

Windows are read by a DataLoader (each worker opens the slide itself), batched, passed to
a :data:`~pathodet.predict.windows.WindowDetector`, and reduced at once to the detections
whose centre lies in the window's core, mapped to level 0. Only these candidates are kept
in memory (a few numbers per cell), never pixels beyond the batches in flight, so memory
does not grow with the slide. :func:`merge` then applies NMS across the whole slide with
spatial buckets, exact and near-linear in the number of boxes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from pathodet.predict.plan import SlidePlan
from pathodet.predict.reader import Slide
from pathodet.predict.windows import WindowDetector, big_enough


class SlideWindows(torch.utils.data.Dataset):
    """Windows of one slide as ``{"index", "image" (3, tile, tile) uint8}``.

    The slide is opened lazily, once per process, so the dataset can be sent to workers.
    """

    def __init__(self, path: Path, plan: SlidePlan, indices: Sequence[int], assumed_mpp: float):
        self.path, self.plan, self.indices = Path(path), plan, list(indices)
        self.assumed_mpp = assumed_mpp
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        if self._slide is None:
            self._slide = Slide(self.path, self.assumed_mpp)
        i = self.indices[k]
        p = self.plan
        x0, y0 = p.origin(i)
        rgb = self._slide.read(round(x0), round(y0), p.level, p.read, p.read)
        if p.read != p.tile:
            interp = cv2.INTER_AREA if p.read > p.tile else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (p.tile, p.tile), interpolation=interp)
        return {"index": i, "image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous()}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_slide": None}


@dataclass
class Timings:
    """Wall-clock seconds of one slide, by stage."""

    total: float = 0.0
    waiting: float = 0.0  # the main process waiting for tiles from the loader
    detect: float = 0.0  # inside the detector (forward pass and per-window postprocess)
    gather: float = 0.0  # core filtering and mapping to level 0
    merge: float = 0.0  # slide-wide NMS

    def as_dict(self) -> dict[str, float]:
        return {"total": self.total, "waiting": self.waiting, "detect": self.detect,
                "gather": self.gather, "merge": self.merge}  # fmt: skip


def detect_windows(
    detector: WindowDetector,
    path: Path,
    plan: SlidePlan,
    indices: Sequence[int],
    batch_size: int,
    num_workers: int = 1,
    assumed_mpp: float = 0.25,
    progress: Callable[[int, int], None] | None = None,
    timings: Timings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of windows ``indices``: ``(K, 4)`` float64 level-0 boxes and ``(K,)`` scores.

    A candidate is a detection whose centre lies in its window's core; candidates still
    overlap across core borders until :func:`merge`.
    """
    timings = timings if timings is not None else Timings()
    loader = torch.utils.data.DataLoader(
        SlideWindows(path, plan, indices, assumed_mpp), batch_size=batch_size,
        num_workers=num_workers, prefetch_factor=2 if num_workers else None,
    )  # fmt: skip
    scale = plan.det_to_level0
    w0, h0 = plan.size0
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    done = 0
    t = time.perf_counter()
    for batch in loader:
        t1 = time.perf_counter()
        timings.waiting += t1 - t
        dets = detector(batch["image"].float().div_(255.0))
        t2 = time.perf_counter()
        timings.detect += t2 - t1
        for i, det in zip(batch["index"].tolist(), dets, strict=True):
            ox, oy = plan.origin(i)
            b = det["boxes"].float().cpu().numpy().astype(np.float64) * scale + [ox, oy, ox, oy]
            b[:, 0::2] = b[:, 0::2].clip(0, w0)  # a window may run past the slide: white
            b[:, 1::2] = b[:, 1::2].clip(0, h0)  # padding is not slide
            mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            x_lo, x_hi, y_lo, y_hi = plan.cores[i]
            keep = (mx >= x_lo) & (mx < x_hi) & (my >= y_lo) & (my < y_hi)
            keep &= big_enough(b)
            boxes.append(b[keep])
            scores.append(det["scores"].float().cpu().numpy().astype(np.float64)[keep])
        done += len(dets)
        t = time.perf_counter()
        timings.gather += t - t2
        if progress:
            progress(done, len(indices))
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    s = np.concatenate(scores) if scores else np.zeros(0)
    return b, s


def _iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    ix = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    iy = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def merge(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS over ``(K, 4)`` boxes, highest score first.

    The same result as :func:`torchvision.ops.nms` (a box is dropped when its IoU with a
    higher-scoring kept box exceeds ``iou_threshold``), computed with buckets of the
    largest box side: two boxes that overlap have centres at most that far apart, so each
    box is compared only with kept boxes in its own and the 8 neighbouring buckets.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    side = float(max(np.max(boxes[:, 2] - boxes[:, 0]), np.max(boxes[:, 3] - boxes[:, 1]), 1.0))
    cx = np.floor((boxes[:, 0] + boxes[:, 2]) / 2 / side).astype(np.int64)
    cy = np.floor((boxes[:, 1] + boxes[:, 3]) / 2 / side).astype(np.int64)
    kept_in: dict[tuple[int, int], list[int]] = {}
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        bx, by = int(cx[i]), int(cy[i])
        near = [
            j for dy in (-1, 0, 1) for dx in (-1, 0, 1) for j in kept_in.get((bx + dx, by + dy), ())
        ]
        if near and (_iou_one(boxes[i], boxes[near]) > iou_threshold).any():
            continue
        keep.append(int(i))
        kept_in.setdefault((bx, by), []).append(int(i))
    return np.asarray(keep, np.int64)
