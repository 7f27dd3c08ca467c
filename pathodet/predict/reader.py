"""Opening whole-slide images: OpenSlide first, plain images as a one-level fallback.

OpenSlide reads SVS, NDPI, MRXS, SCN, BIF, Philips TIFF and generic tiled TIFF; anything
else Pillow can decode (a large JPEG or PNG, a strip TIFF) opens as a one-level slide
(openslide-python's ``ImageSlide``), decoded whole on first read.

The level-0 pixel size is a measurement, not a guess (:func:`resolve_mpp`). In order:

1. ``mpp`` given by the caller (``pathodet predict --mpp``) overrides any source;
2. the file's own (``openslide.mpp-x``/``-y``) when it is plausible (:data:`MPP_PLAUSIBLE`):
   a converter that writes TIFF resolution tags by default gives 72 dpi (352.8 µm/px) or
   1 pixel/cm (10,000 µm/px), which is no scanner's;
3. the objective power (``openslide.objective-power``, Aperio's ``AppMag``) as
   ``10 / power`` µm/px (:func:`objective_mpp`): 20x is 0.5, 40x 0.25;
4. ``assumed_mpp``.

:attr:`SlideInfo.mpp_source` says which one was used and :attr:`SlideInfo.mpp_note` why,
whenever it was not the file's own value.

All coordinates passed in and out are level-0 pixels unless a name says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# suffixes that mean "whole slide" on the command line (plain .tif/.tiff are checked by content)
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm")


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
        mpp_source: ``"override"`` (``--mpp``), ``"metadata"``, ``"objective-power"`` or
            ``"assumed"``; see :func:`resolve_mpp`.
        objective_power: the scanner's magnification, when the slide reports it.
        mpp_note: why the file's own pixel size was not used (None when it was).
    """

    path: Path
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float]
    mpp_source: str
    objective_power: float | None = None
    mpp_note: str | None = None
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
            "mpp_note": self.mpp_note,
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
    """An open slide. Not picklable: each DataLoader worker opens its own (see ``path``).

    Args:
        assumed_mpp: level-0 µm/px when the file gives neither a plausible pixel size nor
            an objective power.
        mpp: level-0 µm/px that overrides whatever the file says.

    Raises:
        SlideError: the file is missing, empty, or no slide or image.
    """

    def __init__(
        self, path: str | os.PathLike[str], assumed_mpp: float = 0.25, mpp: float | None = None
    ) -> None:

        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError(f"{self.path}: no such file")
        if self.path.stat().st_size == 0:
            raise SlideError(f"{self.path}: empty file")
        try:
            self._osr = _open(self.path)
        except SlideError:
            raise
        except Exception as exc:  # OpenSlideError, PIL.UnidentifiedImageError, OSError
            raise SlideError(f"{self.path}: cannot open as a slide or image ({exc})") from exc
        self.info = _info(self.path, self._osr, assumed_mpp, mpp)

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


def _open(path: Path) -> object:
    """The reader of a file, with OpenSlide's interface.

    * What OpenSlide recognises: OpenSlide; a DICOM instance it refuses (a lone or
      non-conformant one): :class:`~pathodet.predict.dicom.DicomSlide`.
    * Any other image (a plain image, a strip TIFF) is a one-level slide. Up to the pixel
      guard (:func:`~pathodet.data.images.max_pixels_limit`) OpenSlide's ``ImageSlide``
      decodes it whole; above it a strip TIFF is read strip by strip
      (:class:`~pathodet.predict.striptiff.StripTiff`), and anything else is refused.

    Raises:
        SlideError: the file is over the guard and cannot be read in parts; a DICOM file
            that neither reader takes.
    """
    import openslide
    from PIL import Image

    from pathodet.data.images import max_pixels_limit
    from pathodet.predict.dicom import DicomSlide, is_dicom

    fmt = openslide.OpenSlide.detect_format(str(path))
    if fmt == "dicom" or (fmt is None and is_dicom(path)):
        try:
            return openslide.OpenSlide(str(path))
        except openslide.OpenSlideError as first:
            try:
                return DicomSlide(path)
            except ValueError as exc:
                raise SlideError(f"{path}: cannot read this DICOM file: OpenSlide: {first}; "
                                 f"pathodet: {exc}") from exc  # fmt: skip
    if fmt is not None:
        return openslide.OpenSlide(str(path))
    guard = max_pixels_limit()
    with Image.open(path) as im:  # header only
        w, h = im.size
        is_tiff = im.format == "TIFF"
    if w * h <= guard:
        return openslide.ImageSlide(str(path))
    if not is_tiff:
        raise SlideError(f"{path}: {w}x{h} pixels, above the {guard:,}-pixel guard, and a "
                         f"{Path(path).suffix or 'plain'} image can only be decoded whole; "
                         "raise the guard with PATHODET_MAX_PIXELS=... if this machine has "
                         "the memory (3 bytes per pixel), or convert it to a tiled pyramidal "
                         "TIFF")  # fmt: skip
    from pathodet.predict.striptiff import StripTiff

    try:
        return StripTiff(path, guard)
    except ValueError as exc:
        raise SlideError(f"{path}: {w}x{h} pixels, above the {guard:,}-pixel guard: {exc}") from exc


def _float(props: dict[str, str], key: str) -> float | None:
    try:
        v = float(props[key])
    except (KeyError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


MPP_PLAUSIBLE = (0.1, 2.0)
"""Level-0 µm/px a brightfield slide scanner can have: about 0.1 (100x oil) to 2 (5x).
A value outside is a converter's default resolution tag (72 dpi: 352.8 µm/px; 1
pixel/cm: 10,000 µm/px; 1000 or 25 µm/px as OpenSlide reports some tiled TIFFs), not a
measurement."""


def objective_mpp(power: float) -> float:
    """Level-0 µm/px of a scan at objective ``power``: ``10 / power`` (20x: 0.5, 40x: 0.25).

    The convention of slide scanners with a 10 µm/px-at-1x optical path (Aperio AT2 and
    GT450: 0.50 / 0.25 µm/px at 20x / 40x; Hamamatsu: 0.46 / 0.23), good to about 10%.
    """
    return 10.0 / power


def resolve_mpp(
    path: Path, props: dict[str, str], assumed_mpp: float, mpp: float | None = None
) -> tuple[tuple[float, float], str, str | None]:
    """``(mpp_xy, source, note)``: the level-0 pixel size of a slide and where it came from.

    See the module docstring for the order of the sources. ``note`` explains, naming the
    file, why the file's own value was not used (None when it was).

    Raises:
        SlideError: ``mpp`` itself is outside :data:`MPP_PLAUSIBLE` (a typo: 25 for 0.25).
    """
    lo, hi = MPP_PLAUSIBLE
    if mpp is not None:
        if not lo <= mpp <= hi:
            raise SlideError(f"{path}: --mpp {mpp:g} is outside the plausible {lo:g}-{hi:g} "
                             "µm/px of a slide scanner")  # fmt: skip
        return (mpp, mpp), "override", f"{path}: pixel size {mpp:g} µm/px given by --mpp"
    mx, my = _float(props, "openslide.mpp-x"), _float(props, "openslide.mpp-y")
    problem = None
    if mx is not None and my is not None:
        if lo <= mx <= hi and lo <= my <= hi:
            return (mx, my), "metadata", None
        problem = (f"the file's {mx:g} x {my:g} µm/px is no scanner's (outside {lo:g}-{hi:g} "
                   "µm/px: a converter's default or a placeholder)")  # fmt: skip
    else:
        problem = "the file gives no pixel size"
    power = _float(props, "openslide.objective-power") or _float(props, "aperio.AppMag")
    if power is not None and 1 <= power <= 100:
        v = objective_mpp(power)
        return (v, v), "objective-power", (
            f"{path}: {problem}; using its {power:g}x objective power: {v:g} µm/px "
            "(--mpp sets it)")  # fmt: skip
    a = float(assumed_mpp)
    return (a, a), "assumed", (f"{path}: {problem} and no objective power; assuming {a:g} "
                               "µm/px (--mpp sets it)")  # fmt: skip


def _info(path: Path, osr: object, assumed_mpp: float, mpp: float | None = None) -> SlideInfo:
    props = dict(getattr(osr, "properties", {}))
    vendor = props.get("openslide.vendor", "image")
    mpp_xy, source, note = resolve_mpp(path, props, assumed_mpp, mpp)
    dims = tuple((int(w), int(h)) for w, h in osr.level_dimensions)  # type: ignore[attr-defined]
    if dims[0][0] <= 0 or dims[0][1] <= 0:
        raise SlideError(f"{path}: level 0 has no pixels ({dims[0][0]}x{dims[0][1]})")
    return SlideInfo(
        path=path,
        vendor=vendor,
        level_dimensions=dims,
        level_downsamples=tuple(float(d) for d in osr.level_downsamples),  # type: ignore[attr-defined]
        mpp=mpp_xy,
        mpp_source=source,
        objective_power=_float(props, "openslide.objective-power")
        or _float(props, "aperio.AppMag"),
        mpp_note=note,
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
