"""A large strip (non-tiled) TIFF read strip by strip with tifffile, as a one-level slide.

OpenSlide reads tiled TIFFs only; a strip TIFF falls back to a plain image, decoded whole
on first read. Under the pixel guard (:func:`pathodet.data.images.max_pixels_limit`) that
is fine; above it, :class:`StripTiff` decodes only the strips a read touches (tifffile's
``TiffPage.decode``), so memory stays at a few strips whatever the image's size. A strip
TIFF whose single strip is itself above the guard cannot be read in parts and is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathodet.predict.tiled import TiledLevel

CACHED_STRIPS = 16
"""Decoded strips kept: a window of a few hundred rows spans a handful."""


class StripTiff(TiledLevel):
    """The first page of a strip TIFF with OpenSlide's interface, one level
    (:class:`TiledLevel`, a strip being a tile as wide as the image).

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
            height, width = int(page.imagelength), int(page.imagewidth)
            rows = int(min(page.rowsperstrip, height))
            if rows * width > max_pixels:
                raise ValueError(
                    f"one strip holds {rows} rows of {width} pixels, above the "
                    f"{max_pixels:,}-pixel guard, so it cannot be read in parts; convert it to a "
                    "tiled pyramidal TIFF (e.g. vips tiffsave IN OUT --tile --pyramid)"
                )
        except Exception:
            self._tif.close()
            raise
        self._page = page
        self._layout(width, height, width, rows, cached=CACHED_STRIPS)  # a strip is a tile
        self.properties: dict[str, str] = {"openslide.vendor": "strip-tiff"}

    def _decode(self, index: int) -> np.ndarray:
        """``(rows, width, samples)`` uint8 of strip ``index`` (tifffile's ``TiffPage.decode``)."""
        page, fh = self._page, self._tif.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(page.databytecounts[index])
        segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        return segment[0]

    def close(self) -> None:
        super().close()
        self._tif.close()
