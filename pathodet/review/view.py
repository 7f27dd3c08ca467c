"""Pictures for the review app: an image or a slide region with its cells drawn.

Colours say what a box is, the same everywhere in the app:

* red: a detection not yet reviewed; green: accepted as SRC; grey: rejected;
* cyan: a cell added by a reviewer; yellow (dashed look, thin): annotated in the data;
* blue (thin): every real SRC, on synthetic data only;
* the selected detection gets a thick white-and-black frame.

Drawing works on a copy scaled to the display width, so a 2000 x 2000 image with 500
boxes is drawn in a few milliseconds; the decoded image itself is cached by the app.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "pending": (230, 30, 30),
    "accept": (20, 170, 60),
    "reject": (140, 140, 140),
    "add": (0, 200, 220),
    "annotated": (240, 200, 0),
    "full": (40, 90, 255),
}


@dataclass
class Layer:
    """Boxes ``(K, 4)`` in source pixels, one colour key per box, and a line width."""

    boxes: np.ndarray
    kinds: list[str]
    width: int = 2


def draw(
    rgb: np.ndarray, layers: list[Layer], scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0), selected: np.ndarray | None = None,
) -> Image.Image:  # fmt: skip
    """``rgb`` (already at display size) with ``layers`` drawn.

    A source box ``b`` lands at ``(b - offset) * scale`` display pixels.
    """
    img = Image.fromarray(np.ascontiguousarray(rgb))
    pen = ImageDraw.Draw(img)
    ox, oy = offset
    for layer in layers:
        for box, kind in zip(np.asarray(layer.boxes).reshape(-1, 4), layer.kinds, strict=True):
            x1, y1, x2, y2 = (box - [ox, oy, ox, oy]) * scale
            pen.rectangle((x1, y1, x2, y2), outline=COLOURS[kind], width=layer.width)
    if selected is not None:
        x1, y1, x2, y2 = (np.asarray(selected) - [ox, oy, ox, oy]) * scale
        pen.rectangle((x1 - 4, y1 - 4, x2 + 4, y2 + 4), outline=(0, 0, 0), width=2)
        pen.rectangle((x1 - 2, y1 - 2, x2 + 2, y2 + 2), outline=(255, 255, 255), width=2)
    return img


def box_at(boxes: np.ndarray, x: float, y: float) -> int | None:
    """Index of the smallest box containing ``(x, y)``, else of the nearest box centre
    within 40 pixels; None when there is none."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(b) == 0:
        return None
    inside = (b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3])
    if inside.any():
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        idx = np.flatnonzero(inside)
        return int(idx[np.argmin(area[idx])])
    d = np.hypot((b[:, 0] + b[:, 2]) / 2 - x, (b[:, 1] + b[:, 3]) / 2 - y)
    i = int(np.argmin(d))
    return i if d[i] <= 40 else None


def fit_width(rgb: np.ndarray, width: int) -> tuple[np.ndarray, float]:
    """``rgb`` shrunk to at most ``width`` pixels wide, and the scale applied."""
    h, w = rgb.shape[:2]
    if w <= width:
        return rgb, 1.0
    s = width / w
    small = Image.fromarray(rgb).resize((width, max(1, round(h * s))), Image.BILINEAR)
    return np.asarray(small), s
