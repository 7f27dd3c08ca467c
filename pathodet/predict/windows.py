"""The one detection path of images and slides: windows -> detector -> keep the core -> merge.

An image or a slide is cut into ``tile`` x ``tile`` windows overlapping by ``overlap``
pixels (the last window of a row or column aligned to the border). Each window is detected
on its own; a detection is kept only when its centre lies in the window's *core*: the part
of the window closer to its own centre than to the neighbour's, i.e. the overlap is split
at its middle. Every point lies in exactly one core, so a cell is reported by one window
only; when ``overlap`` is at least the cell size, that window sees the whole cell. A final
NMS over the whole image or slide (:func:`merge`) removes what remains (cells straddling a
core border with boxes from both sides).

A plain image is a one-level slide: :func:`image_plan` lays its windows as
:func:`~pathodet.predict.plan.plan_slide` lays a slide's, and both go through
:func:`detect_windows` and :func:`merge`. Coordinates out of here are *level 0*: the
image's own pixels, or the slide's full-resolution pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from torch import Tensor
from torchvision.ops import nms

from pathodet.core.machine import share_cores
from pathodet.data.boxes import longer_side
from pathodet.data.tiling import window_starts
from pathodet.model.boxes import paired_iou

MIN_BOX_SIDE = 1.0
"""Level-0 pixels: a detection clipped to the image edge that is narrower or lower than
this is dropped. It is no cell, and written with two decimals it could become an empty box."""

WindowDetector = Callable[[Tensor], list[dict[str, Tensor]]]
"""``(B, 3, h, w)`` float images in [0, 1] -> per window ``{"boxes" (K, 4), "scores" (K,)}``
in window pixels: :meth:`pathodet.model.retinanet.FrozenDetector.detect`, or any function
(tests use pixel-rule detectors)."""


def big_enough(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: boxes ``(N, 4)`` at least :data:`MIN_BOX_SIDE` wide and high."""
    return (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE)


def core_bounds(starts: Sequence[int], tile: int) -> list[tuple[float, float]]:
    """Per window along one axis, ``[lo, hi)`` of its core (the windows' pixels).

    >>> core_bounds([0, 896, 976], 1024)
    [(-inf, 960.0), (960.0, 1000.0), (1000.0, inf)]
    """
    cuts = [(s + t + tile) / 2 for s, t in zip(starts[:-1], starts[1:], strict=True)]
    lo = [-np.inf, *cuts]
    hi = [*cuts, np.inf]
    return list(zip(lo, hi, strict=True))


class WindowPlan(Protocol):
    """Where the windows of one image or slide are (see :class:`ImagePlan` and
    :class:`~pathodet.predict.plan.SlidePlan`).

    Attributes:
        cores: ``(T, 4)`` float64 ``x_lo, x_hi, y_lo, y_hi`` of each window's core, level-0
            pixels (infinite at the border).
        size0: ``(width, height)`` of level 0, pixels.
    """

    cores: np.ndarray
    size0: tuple[int, int]

    def to_level0(self, i: int) -> tuple[float, float, float, float]:
        """``(kx, ky, ox, oy)``: window ``i``'s pixel ``(x, y)`` is level-0 ``(ox + kx x, oy + ky y)``."""
        ...


@dataclass(frozen=True)
class ImagePlan:
    """The windows of one image, after resizing by the detection scale and padding.

    Attributes:
        tile_h, tile_w: window side, pixels of the resized image (the whole image, padded
            to a multiple of 32, when it is smaller than the tile).
        windows: ``(T, 2)`` top-left ``x, y`` of each window in the resized, padded image.
        cores: ``(T, 4)`` level-0 (image pixel) cores. size0: the image's ``(w, h)``.
        fx, fy: image pixels per resized pixel along x and y.
    """

    tile_h: int
    tile_w: int
    windows: np.ndarray
    cores: np.ndarray
    size0: tuple[int, int]
    fx: float = 1.0
    fy: float = 1.0

    def to_level0(self, i: int) -> tuple[float, float, float, float]:
        x, y = self.windows[i]
        return self.fx, self.fy, float(x) * self.fx, float(y) * self.fy


def image_plan(size0: tuple[int, int], size: tuple[int, int], tile: int, overlap: int) -> ImagePlan:
    """Windows over an image of level-0 size ``size0 = (w, h)`` resized to ``size = (w, h)``.

    An image smaller than the tile is padded up to a multiple of 32 and run as one window.
    """
    (w0, h0), (w, h) = size0, size
    th = min(tile, -(-h // 32) * 32)
    tw = min(tile, -(-w // 32) * 32)
    ys = window_starts(max(h, th), th, th - overlap)
    xs = window_starts(max(w, tw), tw, tw - overlap)
    fx, fy = w0 / w, h0 / h
    cx = [(lo * fx, hi * fx) for lo, hi in core_bounds(xs, tw)]
    cy = [(lo * fy, hi * fy) for lo, hi in core_bounds(ys, th)]
    windows = [(x, y) for y in ys for x in xs]
    cores = [(*cx[i], *cy[j]) for j in range(len(ys)) for i in range(len(xs))]
    return ImagePlan(th, tw, np.asarray(windows, np.int64), np.asarray(cores, np.float64),
                     (w0, h0), fx, fy)  # fmt: skip


def pad_to(
    rgb: np.ndarray, h: int, w: int, mode: Literal["reflect", "white"] = "reflect"
) -> np.ndarray:
    """Pad bottom/right to at least ``h`` x ``w``: mirrored tissue (``reflect``) or white.

    White padding makes a straight edge between tissue and a white strip, which a detector
    trained on crops inside images never saw: on real DigestPath images at 20x (1000 px,
    padded to 1024) a column of false positives lined the right edge of normal images.
    Mirrored tissue has no such edge; what is found in the padding is clipped away.
    """
    ph, pw = max(0, h - rgb.shape[0]), max(0, w - rgb.shape[1])
    if ph or pw:
        pads = ((0, ph), (0, pw), (0, 0))
        if mode == "white":
            return np.pad(rgb, pads, constant_values=255)
        return np.pad(rgb, pads, mode="symmetric")
    return rgb


@dataclass
class Timings:
    """Wall-clock seconds of one image or slide, by stage."""

    total: float = 0.0
    waiting: float = 0.0  # waiting for windows from the reader
    detect: float = 0.0  # inside the detector (forward pass and per-window postprocess)
    gather: float = 0.0  # core filtering and mapping to level 0
    merge: float = 0.0  # whole-image NMS

    def as_dict(self) -> dict[str, float]:
        return {"total": self.total, "waiting": self.waiting, "detect": self.detect,
                "gather": self.gather, "merge": self.merge}  # fmt: skip


def detect_windows(
    detector: WindowDetector,
    batches: Iterable[dict[str, Tensor]],
    plan: WindowPlan,
    total: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    timings: Timings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of the windows in ``batches``: ``(K, 4)`` float64 level-0 boxes, ``(K,)`` scores.

    A candidate is a detection whose centre (before clipping) lies in its window's core,
    clipped to level 0 (windows may run past the border: padding is not image) and at least
    :data:`MIN_BOX_SIDE` wide and high. Candidates still overlap across core borders until
    :func:`merge`.

    Args:
        batches: ``{"index" (B,) window numbers, "image" (B, 3, h, w) uint8}``.
        total: number of windows, for ``progress(done, total)``.
    """
    timings = timings if timings is not None else Timings()
    w0, h0 = plan.size0
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    done = 0
    t = time.perf_counter()
    for batch in batches:
        t1 = time.perf_counter()
        timings.waiting += t1 - t
        share_cores()  # another pathodet process may have started or ended
        dets = detector(batch["image"].float().div_(255.0))
        t2 = time.perf_counter()
        timings.detect += t2 - t1
        for i, det in zip(batch["index"].tolist(), dets, strict=True):
            kx, ky, ox, oy = plan.to_level0(i)
            b = det["boxes"].float().cpu().numpy().astype(np.float64)
            b = b * [kx, ky, kx, ky] + [ox, oy, ox, oy]
            mx, my = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            x_lo, x_hi, y_lo, y_hi = plan.cores[i]
            keep = (mx >= x_lo) & (mx < x_hi) & (my >= y_lo) & (my < y_hi)
            b[:, 0::2] = b[:, 0::2].clip(0, w0)
            b[:, 1::2] = b[:, 1::2].clip(0, h0)
            keep &= big_enough(b)
            boxes.append(b[keep])
            scores.append(det["scores"].float().cpu().numpy().astype(np.float64)[keep])
        done += len(dets)
        t = time.perf_counter()
        timings.gather += t - t2
        if progress:
            progress(done, total if total is not None else done)
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    s = np.concatenate(scores) if scores else np.zeros(0)
    return b, s


DIRECT_NMS_MAX = 20_000
"""Candidates up to which :func:`merge` calls torchvision's NMS on all of them at once
(0.6 s for 20,000 scattered boxes on this development CPU, against 0.2 s split by
components; the split wins beyond, and all-pairs NMS on a slide's 10^5-10^6 would not end)."""


STRIPE_BOXES = 4096
"""Boxes per stripe of :func:`overlapping_pairs`: bounds the candidate pairs held at once."""


def overlapping_pairs(boxes: np.ndarray, t: Tensor, iou_threshold: float) -> np.ndarray:
    """``(P, 2)`` index pairs of the ``(K, 4)`` boxes whose IoU exceeds the threshold, each
    pair once (in either order).

    Candidates are the pairs whose centres lie within one box side (the largest) of each
    other in x and in y (a k-d tree's ``query_pairs``, Chebyshev distance); any pair with a
    positive IoU is one. They are enumerated stripe by stripe along x, :data:`STRIPE_BOXES`
    boxes at a time (with the boxes up to one side beyond the stripe), and filtered by IoU
    before the next stripe, so memory follows the stripe, not the slide: at a slide's
    density all candidate pairs at once took 10.6 GB for 200,000 boxes. A pair belongs to
    the stripe of its box with the smaller x centre, so each is found once. The reach is the
    largest box's side, so one large box widens every stripe: memory is bounded by the
    stripe's boxes and that side, not by the slide.
    ``t``: the same boxes as a float64 tensor.
    """
    side = max(float(longer_side(boxes).max()), 1.0)
    centres = np.column_stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]]) / 2
    order = np.argsort(centres[:, 0], kind="stable")
    cx = centres[order, 0]
    found = [np.zeros((0, 2), np.int64)]
    for i0 in range(0, len(order), STRIPE_BOXES):
        i1 = min(i0 + STRIPE_BOXES, len(order))
        end = int(np.searchsorted(cx, cx[i1 - 1] + side, side="right"))
        local = cKDTree(centres[order[i0:end]]).query_pairs(r=side, p=np.inf,
                                                            output_type="ndarray")  # fmt: skip
        local = local[local.min(axis=1) < i1 - i0]  # the others belong to a later stripe
        if not len(local):
            continue
        pairs = order[i0 + local]
        iou = paired_iou(t[pairs[:, 0]], t[pairs[:, 1]]).numpy()
        found.append(pairs[iou > iou_threshold])
    return np.concatenate(found)


def merge(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy NMS over ``(K, 4)`` boxes, highest score first.

    The result of :func:`torchvision.ops.nms` on all the boxes at once (a box is dropped
    when its IoU with a higher-scoring kept box exceeds ``iou_threshold``), computed so
    that it scales to a slide's 10^5-10^6 candidates, where all-pairs NMS would not end.
    A box can only be suppressed by a box it overlaps by more than the threshold, so greedy
    NMS splits exactly over the connected components of that overlap graph. The pairs of
    boxes whose centres lie within one box side of each other are found with a k-d tree
    (:class:`scipy.spatial.cKDTree`). The components come from
    :func:`scipy.sparse.csgraph.connected_components`. torchvision's NMS then runs on each
    component of more than one box; a lone box is kept. Up to :data:`DIRECT_NMS_MAX`
    boxes (an image, a slide with few candidates) one call of torchvision's NMS is faster.
    """
    n = len(boxes)
    if n == 0:
        return np.zeros(0, np.int64)
    if n <= DIRECT_NMS_MAX:
        b, s = (
            torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in (boxes, scores)
        )
        return nms(b, s, iou_threshold).numpy().astype(np.int64)
    t = torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float64))
    pairs = overlapping_pairs(boxes, t, iou_threshold)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    starts = np.flatnonzero(np.diff(label[order], prepend=-1))
    keep = []
    s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64))
    for group in np.split(order, starts[1:]):
        if len(group) == 1:
            keep.append(group)
        else:
            idx = torch.from_numpy(group)
            keep.append(group[nms(t[idx], s[idx], iou_threshold).numpy()])
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)
