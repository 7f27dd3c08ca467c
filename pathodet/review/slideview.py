"""Navigating a whole slide without loading it: OpenSlide deep-zoom tiles, stitched on demand.

The viewer shows a ``width`` x ``height`` window centred on a level-0 point, at a zoom of
``2**k`` level-0 pixels per screen pixel. It is assembled from the deep-zoom tiles of
:class:`openslide.deepzoom.DeepZoomGenerator` (256 px, no overlap) at the matching level,
with an LRU cache of decoded tiles, so panning re-reads only the tiles that come into view
and a 100,000-pixel slide costs no more than a small one.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

TILE = 256


class SlideViewer:
    """Deep-zoom access to one slide (open it once per app process, it is thread-safe)."""

    def __init__(self, path: Path, cache_tiles: int = 512) -> None:
        import openslide
        from openslide.deepzoom import DeepZoomGenerator

        self.path = Path(path)
        self.slide = openslide.open_slide(str(path))
        self.dz = DeepZoomGenerator(self.slide, tile_size=TILE, overlap=0, limit_bounds=False)
        self.width, self.height = self.slide.dimensions
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_size = cache_tiles

    @property
    def max_zoom_exponent(self) -> int:
        """The coarsest zoom: ``2**k`` level-0 pixels per screen pixel."""
        return self.dz.level_count - 1

    def thumbnail(self, side: int = 400) -> tuple[np.ndarray, float]:
        """An overview at most ``side`` pixels, and its level-0 pixels per overview pixel."""
        img = np.asarray(self.slide.get_thumbnail((side, side)).convert("RGB"))
        return img, self.width / img.shape[1]

    def _tile(self, level: int, col: int, row: int) -> np.ndarray:
        key = (level, col, row)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        tile = np.asarray(self.dz.get_tile(level, (col, row)).convert("RGB"))
        self._cache[key] = tile
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return tile

    def region(
        self, cx: float, cy: float, zoom_exponent: int, width: int = 1024, height: int = 768
    ) -> tuple[np.ndarray, tuple[float, float], float]:
        """``(height, width, 3)`` view centred on level-0 ``(cx, cy)``.

        Returns the pixels, the level-0 ``(x, y)`` of the view's top-left corner, and the
        screen pixels per level-0 pixel (``2 ** -zoom_exponent``).
        """
        k = int(np.clip(zoom_exponent, 0, self.max_zoom_exponent))
        level = self.dz.level_count - 1 - k
        z = 2.0**k
        cols, rows = self.dz.level_tiles[level]
        lw, lh = self.dz.level_dimensions[level]
        x0 = int(round(cx / z - width / 2))
        y0 = int(round(cy / z - height / 2))
        out = np.full((height, width, 3), 255, np.uint8)
        for row in range(max(0, y0 // TILE), min(rows, (y0 + height - 1) // TILE + 1)):
            for col in range(max(0, x0 // TILE), min(cols, (x0 + width - 1) // TILE + 1)):
                t = self._tile(level, col, row)
                tx, ty = col * TILE - x0, row * TILE - y0
                sx0, sy0 = max(0, -tx), max(0, -ty)
                sx1, sy1 = min(t.shape[1], width - tx), min(t.shape[0], height - ty)
                if sx1 > sx0 and sy1 > sy0:
                    out[ty + sy0 : ty + sy1, tx + sx0 : tx + sx1] = t[sy0:sy1, sx0:sx1]
        return out, (x0 * z, y0 * z), 1.0 / z

    def close(self) -> None:
        self.slide.close()
