"""Boxes against their image, and boxes as written: one rule for every reader and writer.

Readers (VOC and QuPath annotations, the predictions CSV once evaluation knows the image
size) call :func:`fit_to_image`: a box that overhangs its image a little is clipped and
counted, one that lies wholly outside or overhangs by more than :func:`overhang_allowance`
is left out and reported by its reader, naming the file and the object or line.

Writers (``predictions.csv``, VOC XML) call :func:`writable` first: a box that would be
written with zero width or height (a 0.003 px sliver written with two decimals) or with a
non-finite number is dropped, so that whatever pathodet writes, pathodet reads back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pathodet.data.digestpath import Problem

OVERHANG_PX = 2.0
"""Overhang always allowed, pixels per axis. Covers sub-pixel rounding and the one-pixel
difference between box conventions (VOC's 1-based inclusive ``xmax = width`` against
0-based continuous coordinates), whatever the box size."""

OVERHANG_FRACTION = 0.5
"""Overhang allowed as a fraction of the box side: a box with at least half its width and
half its height inside the image marks a cell cut by the image border, which the image
shows; the clipped box still covers its visible part. A box mostly outside marks a cell the
image does not show (misplaced coordinates, another image's box), so it is reported, not
clipped to a sliver. The same half as the tiles' default ``data.tiling.min_visible``."""


def overhang_allowance(side: np.ndarray | float) -> np.ndarray:
    """Largest overhang, pixels, clipped without complaint on an axis where the box is
    ``side`` pixels long: ``max(OVERHANG_PX, OVERHANG_FRACTION * side)``.

    >>> overhang_allowance(np.array([1.0, 40.0])).tolist()
    [2.0, 20.0]
    """
    return np.maximum(OVERHANG_PX, OVERHANG_FRACTION * np.asarray(side, np.float64))


def longer_side(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` the longer side, pixels, of each ``(N, 4)`` ``x1, y1, x2, y2`` box."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


@dataclass
class Fit:
    """Boxes fitted to their image by :func:`fit_to_image`, one row per input box.

    Attributes:
        boxes: ``(N, 4)`` the boxes clipped to ``[0, width] x [0, height]`` (same dtype).
        clipped: ``(N,)`` bool, the box overhung within the allowance and was clipped.
        outside: ``(N,)`` bool, nothing of the box is inside the image.
        overhang: ``(N,)`` float, pixels outside on the axis that overhangs most relative
            to its allowance (sum of both sides of that axis).
        allowance: ``(N,)`` float, the overhang allowed on that axis, pixels.
        too_far: ``(N,)`` bool, partly inside but overhanging more than the allowance.
    """

    boxes: np.ndarray
    clipped: np.ndarray
    outside: np.ndarray
    overhang: np.ndarray
    allowance: np.ndarray
    too_far: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """``(N,)`` bool: the boxes a reader keeps (inside, or clipped within the allowance)."""
        return ~self.outside & ~self.too_far


def fit_to_image(boxes: np.ndarray, width: float, height: float) -> Fit:
    """Clip well-formed boxes (``x1 < x2``, ``y1 < y2``, pixels) to a ``width x height`` image.

    On each axis the overhang is what lies outside on both sides together; it is allowed up
    to :func:`overhang_allowance` of the box side on that axis. Boxes wholly outside (zero
    area once clipped, e.g. touching the border from outside) are ``outside``; partly inside
    boxes overhanging more than allowed are ``too_far``; the others are kept, ``clipped``
    when any coordinate moved.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    b = boxes.astype(np.float64)
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    outside = (out[:, 0] >= out[:, 2]) | (out[:, 1] >= out[:, 3])
    over_x = np.maximum(0.0, -b[:, 0]) + np.maximum(0.0, b[:, 2] - width)
    over_y = np.maximum(0.0, -b[:, 1]) + np.maximum(0.0, b[:, 3] - height)
    allow_x = overhang_allowance(b[:, 2] - b[:, 0])
    allow_y = overhang_allowance(b[:, 3] - b[:, 1])
    x_worse = over_x / allow_x >= over_y / allow_y
    overhang = np.where(x_worse, over_x, over_y)
    allowance = np.where(x_worse, allow_x, allow_y)
    too_far = ~outside & ((over_x > allow_x) | (over_y > allow_y))
    clipped = ~outside & ~too_far & np.any(out != boxes, axis=1)
    return Fit(out, clipped, outside, overhang, allowance, too_far)


def written(values: np.ndarray, decimals: int | None) -> np.ndarray:
    """``values`` as they read back once written with ``decimals`` digits after the point
    (Python's ``f"{v:.{decimals}f}"``, the predictions CSV's format); ``None``: written
    exactly (VOC XML writes the shortest text that reads back to the same value)."""
    values = np.asarray(values, np.float64)
    if decimals is None:
        return values
    flat = [float(f"{v:.{decimals}f}") for v in values.ravel().tolist()]
    return np.asarray(flat, np.float64).reshape(values.shape)


def writable(
    boxes: np.ndarray, scores: np.ndarray | None = None, decimals: int | None = None
) -> np.ndarray:
    """``(N,)`` bool: the boxes a writer may write so that pathodet's readers accept them.

    A box is dropped when, as written with ``decimals`` digits (see :func:`written`), its
    width or height is zero or negative, or a coordinate or its score is NaN or infinite.
    Such boxes are slivers left by clipping at a window or image border (0.003 px wide:
    ``512.00,10.00,512.00,50.00``); the readers would refuse them.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ok = np.isfinite(boxes).all(axis=1)
    if scores is not None:
        ok &= np.isfinite(np.asarray(scores, np.float64).reshape(-1))
    w = written(np.where(np.isfinite(boxes), boxes, 0.0), decimals)
    return ok & (w[:, 2] > w[:, 0]) & (w[:, 3] > w[:, 1])


def validate_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    file: str,
    labels: Sequence[str] | None = None,
) -> tuple[np.ndarray, int, list[Problem]]:
    """Check raw boxes against the image; clip the ones that overhang it a little.

    Args:
        boxes: ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels as written in the file.
        width, height: image size in pixels.
        file: the annotation file, for problem messages.
        labels: what the file calls each box (``object 3``, ``feature 2``), for problem
            messages; default ``box i``.

    Returns:
        ``(kept, n_clipped, problems)``: kept boxes ``(K, 4)`` float32 clipped to
        ``[0, width] x [0, height]``; boxes with ``xmin >= xmax`` / ``ymin >= ymax``,
        entirely outside the image, or overhanging it by more than
        :func:`~pathodet.data.boxes.overhang_allowance` (half the box side, at least
        2 px) are not kept and each gives a problem.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    names = list(labels) if labels is not None else [f"box {i}" for i in range(len(boxes))]
    problems: list[Problem] = []
    degenerate = (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3])
    fit = fit_to_image(boxes, width, height)
    outside = ~degenerate & fit.outside
    too_far = ~degenerate & fit.too_far
    for i in np.flatnonzero(degenerate | outside | too_far):
        x1, y1, x2, y2 = boxes[i].tolist()
        what = f"{names[i]} ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
        if degenerate[i]:
            error = f"{what} has xmin >= xmax or ymin >= ymax"
        elif outside[i]:
            error = f"{what} lies outside the {width}x{height} image"
        else:
            error = (
                f"{what} overhangs the {width}x{height} image by {fit.overhang[i]:.4g} px, "
                f"more than the {fit.allowance[i]:.4g} px allowed (at most "
                f"{OVERHANG_FRACTION:g} of its side, or {OVERHANG_PX:g} px); left out"
            )
        problems.append(Problem(file, error))
    keep = ~degenerate & fit.kept
    return fit.boxes[keep], int((fit.clipped & ~degenerate).sum()), problems
