"""A large strip (non-tiled) TIFF read strip by strip with tifffile, as a one-level slide.

OpenSlide reads tiled TIFFs only; a strip TIFF falls back to a plain image, decoded whole
on first read. Under the pixel guard (:func:`pathodet.data.samples.max_pixels_limit`) that
is fine; above it, :class:`StripTiff` decodes only the strips a read touches (tifffile's
``TiffPage.decode``), so memory stays at a few strips whatever the image's size. A strip
TIFF whose single strip is itself above the guard cannot be read in parts and is refused.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

CACHED_STRIPS = 16
"""Decoded strips kept: a window of a few hundred rows spans a handful."""


class StripTiff:
    """The first page of a strip TIFF with OpenSlide's interface (one level).

    Raises:
        ValueError: not an 8-bit RGB(A) strip TIFF with interleaved samples, or one strip is
            above ``max_pixels`` (the message says which and how to convert the file).
    """

    def __init__(self, path: str | os.PathLike[str], max_pixels: int) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        page = self._tif.pages[0]
        try:
            if page.is_tiled:
                raise ValueError("a tiled TIFF: OpenSlide reads those")
            if page.dtype != np.uint8 or page.samplesperpixel not in (3, 4):
                raise ValueError(f"{page.samplesperpixel} samples of {page.dtype}; 8-bit RGB "
                                 "is read")  # fmt: skip
            if page.planarconfig != 1:
                raise ValueError("separate colour planes; interleaved RGB is read")
            self.height, self.width = int(page.imagelength), int(page.imagewidth)
            self.rows = int(min(page.rowsperstrip, self.height))
            if self.rows * self.width > max_pixels:
                raise ValueError(
                    f"one strip holds {self.rows} rows of {self.width} pixels, above the "
                    f"{max_pixels:,}-pixel guard, so it cannot be read in parts; convert it to a "
                    "tiled pyramidal TIFF (e.g. vips tiffsave IN OUT --tile --pyramid)"
                )
        except Exception:
            self._tif.close()
            raise
        self._page = page
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.level_dimensions = ((self.width, self.height),)
        self.level_downsamples = (1.0,)
        self.properties: dict[str, str] = {"openslide.vendor": "strip-tiff"}

    def _strip(self, k: int) -> np.ndarray:
        """``(rows, width, 3)`` uint8 of strip ``k`` (the last may have fewer rows)."""
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        page, fh = self._page, self._tif.filehandle
        fh.seek(page.dataoffsets[k])
        data = fh.read(page.databytecounts[k])
        segment, _, _ = page.decode(data, k, jpegtables=page.jpegtables)
        rows = min(self.rows, self.height - k * self.rows)
        strip = np.ascontiguousarray(segment[0, :rows, : self.width, :3])
        self._cache[k] = strip
        if len(self._cache) > CACHED_STRIPS:
            self._cache.popitem(last=False)
        return strip

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """RGBA region ``size = (w, h)`` at level-0 ``location = (x, y)``; transparent outside."""
        if level != 0:
            raise ValueError(f"level {level}: a strip TIFF has one level")
        (x, y), (w, h) = location, size
        out = np.zeros((h, w, 4), np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.width), min(y + h, self.height)
        if x1 > x0 and y1 > y0:
            for k in range(y0 // self.rows, -(-y1 // self.rows)):
                strip = self._strip(k)
                top = k * self.rows
                a, b = max(y0, top), min(y1, top + len(strip))
                out[a - y : b - y, x0 - x : x1 - x, :3] = strip[a - top : b - top, x0:x1]
                out[a - y : b - y, x0 - x : x1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        self._cache.clear()
        self._tif.close()
