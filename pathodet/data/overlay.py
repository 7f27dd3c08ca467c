"""Draw bounding boxes on images (sample figures, prediction overlays)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def box_outline_pixels(
    box: np.ndarray | tuple[float, float, float, float], height: int, width: int, line: int = 3
) -> tuple[slice, slice, slice, slice, slice, slice] | None:
    """Integer pixel extents of a box outline, clipped to a ``height x width`` image.

    The box ``(x1, y1, x2, y2)`` (continuous pixel coordinates, ``x2``/``y2`` exclusive)
    covers pixel columns ``round(x1) .. round(x2) - 1`` and rows likewise; the outline is
    the ``line`` outermost pixels of that area, inside it. Returns slices
    ``(rows, cols, top, bottom, left, right)``: the covered rows and columns, and the rows
    of the top and bottom bars and columns of the left and right bars; None when the box
    misses the image.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not np.all(np.isfinite([x1, y1, x2, y2])):
        return None
    c0, c1 = max(0, int(round(x1))), min(width, int(round(x2)))
    r0, r1 = max(0, int(round(y1))), min(height, int(round(y2)))
    if c0 >= c1 or r0 >= r1:
        return None
    rows, cols = slice(r0, r1), slice(c0, c1)
    top, bottom = slice(r0, min(r1, r0 + line)), slice(max(r0, r1 - line), r1)
    left, right = slice(c0, min(c1, c0 + line)), slice(max(c0, c1 - line), c1)
    return rows, cols, top, bottom, left, right


def draw_boxes(
    rgb: np.ndarray,
    boxes: np.ndarray,
    color: tuple[int, int, int],
    width: int = 3,
    labels: list[str] | None = None,
) -> np.ndarray:
    """Return a copy of ``rgb`` (``(H, W, 3)`` uint8) with rectangle outlines.

    Args:
        rgb: the image, not modified.
        boxes: ``(N, 4)`` ``x1, y1, x2, y2`` in pixels; clipped to the image, boxes outside
            it are skipped. The outline is ``width`` pixels thick, drawn inside the box.
        color: RGB outline colour.
        labels: optional text per box (e.g. a score), written just above its top-left
            corner (below it when there is no room above).
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    if out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {out.shape}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    h, w = out.shape[:2]
    col = np.asarray(color, dtype=np.uint8)
    width = max(1, int(width))
    anchors: list[tuple[int, int, str]] = []
    for k, box in enumerate(boxes):
        ext = box_outline_pixels(box, h, w, width)
        if ext is None:
            continue
        rows, cols, top, bottom, left, right = ext
        out[top, cols] = col
        out[bottom, cols] = col
        out[rows, left] = col
        out[rows, right] = col
        if labels is not None:
            anchors.append((cols.start, rows.start, str(labels[k])))
    if anchors:
        image = Image.fromarray(out)
        draw = ImageDraw.Draw(image)
        for x, y, text in anchors:
            ty = y - 12 if y >= 12 else y + width + 1
            draw.text((x + 1, ty), text, fill=tuple(int(c) for c in col))
        out = np.asarray(image).copy()
    return out
