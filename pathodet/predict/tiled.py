"""One slide level stored as a grid of segments (DICOM frames, TIFF strips), read by region.

:class:`TiledLevel` gives a one-level reader OpenSlide's interface (``level_dimensions``,
``level_downsamples``, ``properties``, ``read_region``, ``close``) from one method, ``_decode``
(segment index -> pixels). Segments are ``tile_w`` x ``tile_h`` pixels, row by row, left to
right; those on the right and bottom edge may hold padding, which is never shown. The last
``cached`` decoded segments are kept.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PIL import Image


class TiledLevel:
    """Base of the one-level readers :class:`~pathodet.predict.dicom.DicomSlide` and
    :class:`~pathodet.predict.striptiff.StripTiff`; subclasses call :meth:`_layout` and
    implement :meth:`_decode`."""

    properties: dict[str, str]

    def _layout(self, width: int, height: int, tile_w: int, tile_h: int, cached: int) -> None:
        self.width, self.height, self.tile_w, self.tile_h = width, height, tile_w, tile_h
        self.cols = -(-width // tile_w)
        self.level_dimensions = ((width, height),)
        self.level_downsamples = (1.0,)
        self._cached = cached
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _decode(self, index: int) -> np.ndarray:
        """``(>= rows, >= cols, >= 3)`` uint8 pixels of segment ``index`` (row-major)."""
        raise NotImplementedError

    def _segment(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
        else:
            self._cache[index] = self._decode(index)
            if len(self._cache) > self._cached:
                self._cache.popitem(last=False)
        return self._cache[index]

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """RGBA region ``size = (w, h)`` at level-0 ``location = (x, y)``; transparent outside.

        Raises:
            ValueError: ``level`` is not 0.
        """
        if level != 0:
            raise ValueError(f"level {level}: this reader has one level")
        (x, y), (w, h) = location, size
        out = np.zeros((h, w, 4), np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return Image.fromarray(out, "RGBA")
        for r in range(y0 // self.tile_h, -(-y1 // self.tile_h)):
            for c in range(x0 // self.tile_w, -(-x1 // self.tile_w)):
                seg = self._segment(r * self.cols + c)
                fx, fy = c * self.tile_w, r * self.tile_h
                ax, ay = max(x0, fx), max(y0, fy)
                bx, by = min(x1, fx + self.tile_w), min(y1, fy + self.tile_h)
                out[ay - y : by - y, ax - x : bx - x, :3] = seg[
                    ay - fy : by - fy, ax - fx : bx - fx, :3
                ]
                out[ay - y : by - y, ax - x : bx - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        self._cache.clear()
