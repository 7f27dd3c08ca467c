"""Opening whole-slide images: OpenSlide first, plain images as a one-level fallback.

OpenSlide reads SVS, NDPI, MRXS, SCN, BIF, Philips TIFF and generic tiled TIFF; anything
else Pillow can decode (a large JPEG or PNG, a strip TIFF) opens as a one-level slide
(openslide-python's ``ImageSlide``), decoded whole on first read. Microns per pixel come
from the slide's metadata (``openslide.mpp-x``/``-y``); a slide without it gets the
``assumed_mpp`` the caller passes, and :attr:`SlideInfo.mpp_source` says so.

All coordinates passed in and out are level-0 pixels unless a name says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# suffixes that mean "whole slide" on the command line (plain .tif/.tiff are checked by content)
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")


class SlideError(Exception):
    """A slide that cannot be opened or read; the message names the file."""


@dataclass(frozen=True)
class SlideInfo:
    """What a slide reports about itself.

    Attributes:
        path: the file.
        vendor: OpenSlide's format name (``aperio``, ``generic-tiff``, ...) or ``image``.
        level_dimensions: ``(width, height)`` pixels of every level, level 0 first.
        level_downsamples: level-0 pixels per level pixel, level 0 first (1.0).
        mpp: ``(x, y)`` microns per level-0 pixel.
        mpp_source: ``"metadata"`` or ``"assumed"`` (the slide carries no resolution).
        objective_power: the scanner's magnification, when the slide reports it.
    """

    path: Path
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float]
    mpp_source: str
    objective_power: float | None = None
    properties: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def level_mpp(self, level: int) -> float:
        """Microns per pixel of ``level`` (mean of x and y)."""
        return float(np.mean(self.mpp)) * self.level_downsamples[level]

    def as_dict(self) -> dict:
        return {
            "path": str(self.path.resolve()),
            "vendor": self.vendor,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": list(self.level_downsamples),
            "mpp": list(self.mpp),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
        }


def is_slide_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` should go through the slide pipeline: a whole-slide suffix, or a
    TIFF that OpenSlide recognises (tiled, pyramidal or vendor TIFF)."""
    import openslide

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix in (".tif", ".tiff") and p.is_file():
        try:
            return openslide.OpenSlide.detect_format(str(p)) is not None
        except Exception:  # unreadable: let the reader report it
            return True
    return False


class Slide:
    """An open slide. Not picklable: each DataLoader worker opens its own (see ``path``)."""

    def __init__(self, path: str | os.PathLike[str], assumed_mpp: float = 0.25) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise SlideError(f"{self.path}: empty file")
        try:
            self._osr = openslide.open_slide(str(self.path))
        except Exception as exc:  # OpenSlideError, PIL.UnidentifiedImageError, OSError
            raise SlideError(f"{self.path}: cannot open as a slide or image ({exc})") from exc
        self.info = _info(self.path, self._osr, assumed_mpp)

    def read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of ``level``; ``(x, y)`` is the top-left in level 0.

        Outside the slide, and where the scanner recorded nothing (transparent), is white.
        """
        try:
            region = self._osr.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        except Exception as exc:  # truncated tiles surface here, not at open
            raise SlideError(
                f"{self.path}: cannot read level {level} at ({x}, {y}): {exc}"
            ) from exc
        rgba = np.asarray(region, dtype=np.uint8)
        if rgba[..., 3].min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        a = rgba[..., 3:4].astype(
            np.uint32
        )  # openslide-python gives straight (not premultiplied) alpha
        rgb = (rgba[..., :3].astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _float(props: dict[str, str], key: str) -> float | None:
    try:
        v = float(props[key])
    except (KeyError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def _info(path: Path, osr: object, assumed_mpp: float) -> SlideInfo:
    props = dict(getattr(osr, "properties", {}))
    vendor = props.get("openslide.vendor", "image")
    mx, my = _float(props, "openslide.mpp-x"), _float(props, "openslide.mpp-y")
    if mx is not None and my is not None:
        mpp, source = (mx, my), "metadata"
    else:
        mpp, source = (float(assumed_mpp), float(assumed_mpp)), "assumed"
    dims = tuple((int(w), int(h)) for w, h in osr.level_dimensions)  # type: ignore[attr-defined]
    if dims[0][0] <= 0 or dims[0][1] <= 0:
        raise SlideError(f"{path}: level 0 has no pixels ({dims[0][0]}x{dims[0][1]})")
    return SlideInfo(
        path=path,
        vendor=vendor,
        level_dimensions=dims,
        level_downsamples=tuple(float(d) for d in osr.level_downsamples),  # type: ignore[attr-defined]
        mpp=mpp,
        mpp_source=source,
        objective_power=_float(props, "openslide.objective-power"),
        properties=props,
    )


def thumbnail(slide: Slide, downsample: float, chunk: int = 2048) -> np.ndarray:
    """``(ceil(H / downsample), ceil(W / downsample), 3)`` uint8 overview of the slide.

    Read from the coarsest level at least as fine as ``downsample``, ``chunk`` x ``chunk``
    level pixels at a time, each chunk shrunk with area averaging: memory stays at one chunk
    plus the thumbnail even for a slide without a pyramid.
    """
    import cv2

    info = slide.info
    w0, h0 = info.level_dimensions[0]
    tw, th = max(1, int(np.ceil(w0 / downsample))), max(1, int(np.ceil(h0 / downsample)))
    fine = [i for i, d in enumerate(info.level_downsamples) if d <= downsample * (1 + 1e-6)]
    level = max(fine, key=lambda i: info.level_downsamples[i]) if fine else 0
    ds = info.level_downsamples[level]
    lw, lh = info.level_dimensions[level]
    out = np.full((th, tw, 3), 255, np.uint8)
    scale = ds / downsample  # thumbnail pixels per level pixel
    for y in range(0, lh, chunk):
        for x in range(0, lw, chunk):
            w, h = min(chunk, lw - x), min(chunk, lh - y)
            rgb = slide.read(round(x * ds), round(y * ds), level, w, h)
            tx0, ty0 = int(round(x * scale)), int(round(y * scale))
            tx1, ty1 = min(tw, int(round((x + w) * scale))), min(th, int(round((y + h) * scale)))
            if tx1 > tx0 and ty1 > ty0:
                out[ty0:ty1, tx0:tx1] = cv2.resize(rgb, (tx1 - tx0, ty1 - ty0),
                                                   interpolation=cv2.INTER_AREA)  # fmt: skip
    return out
