"""Box overlays: exactly the outline pixels, clipped to the image."""

from __future__ import annotations

import numpy as np
import pytest

from pathodet.data.overlay import draw_boxes


def _expected(h, w, box, line):
    """Outline mask by brute force: pixel (r, c) is drawn when its centre is inside the box
    (rounded to whole pixels) and within ``line`` pixels of one of its edges."""
    x1, y1, x2, y2 = (round(v) for v in box)
    mask = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            if x1 <= c < x2 and y1 <= r < y2:
                mask[r, c] = min(c - x1, x2 - 1 - c, r - y1, y2 - 1 - r) < line
    return mask


@pytest.mark.parametrize("line", [1, 3])
def test_outline_pixels_exactly(line):
    img = np.full((60, 80, 3), 17, np.uint8)
    box = (10.2, 20.7, 50.0, 44.4)
    out = draw_boxes(img, np.array([box]), (255, 0, 0), width=line)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (img == 17).all(), "input untouched"
    drawn = (out != 17).any(axis=2)
    np.testing.assert_array_equal(drawn, _expected(60, 80, box, line))
    assert (out[drawn] == (255, 0, 0)).all()


def test_boxes_are_clipped_and_outside_boxes_skipped():
    img = np.zeros((40, 50, 3), np.uint8)
    boxes = np.array([[-10, -5, 20, 15], [45, 30, 70, 60], [100, 100, 120, 130]], np.float32)
    out = draw_boxes(img, boxes, (0, 255, 0), width=2)
    drawn = (out != 0).any(axis=2)
    expect = _expected(40, 50, (0, 0, 20, 15), 2) | _expected(40, 50, (45, 30, 50, 40), 2)
    np.testing.assert_array_equal(drawn, expect)


def test_no_boxes_and_labels():
    img = np.zeros((64, 64, 3), np.uint8)
    np.testing.assert_array_equal(draw_boxes(img, np.zeros((0, 4)), (1, 2, 3)), img)
    plain = draw_boxes(img, np.array([[20, 30, 50, 60]]), (255, 255, 0))
    labelled = draw_boxes(img, np.array([[20, 30, 50, 60]]), (255, 255, 0), labels=["0.93"])
    extra = (labelled != 0).any(axis=2) & ~(plain != 0).any(axis=2)
    assert extra[:30].any() and not extra[30:].any(), "text goes above the box"
    with pytest.raises(ValueError):
        draw_boxes(img, np.array([[1, 1, 5, 5]]), (1, 1, 1), labels=["a", "b"])
