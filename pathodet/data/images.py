"""Reading images: size, decoding to RGB, the decompression-bomb guard, and rescaling.

The content of a file decides its format, not its suffix. Every problem is a
``ValueError`` whose message says what is wrong (:func:`read_image` adds the file name;
:func:`image_size`'s callers add it, as :func:`pathodet.data.samples.load_sample` does).
Whole slides are read by :mod:`pathodet.predict`, not here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS_ENV = "PATHODET_MAX_PIXELS"
"""Environment variable: the largest image (width x height, pixels) :func:`image_size` and
:func:`read_image` accept, read at each call. Unset: :data:`DEFAULT_MAX_PIXELS`."""

DEFAULT_MAX_PIXELS = 200_000_000
"""Decompression-bomb guard: 200 megapixels (about 14000 x 14000), 600 MB once decoded to RGB.
DigestPath images are about 2000 x 2000 (4 MP); whole slides go through
:mod:`pathodet.predict`, not through here."""

# PIL's own guard (``Image.MAX_IMAGE_PIXELS``: a warning above 89 MP, an error above 179 MP)
# is replaced by ``max_pixels``, checked from the header before any pixel is decoded; left
# on, it would refuse images a user allowed by raising the limit.
Image.MAX_IMAGE_PIXELS = None

_16BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel-count guard in force: ``max_pixels`` when given, else the environment
    variable :data:`MAX_PIXELS_ENV` (read now, so a change takes effect at the next call),
    else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ValueError: the value is not a positive whole number; the message names its source.
    """
    if max_pixels is not None:
        source, raw = "max_pixels", str(max_pixels)
    else:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        source = MAX_PIXELS_ENV
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ValueError(f"{source}={raw!r}: must be a positive whole number of pixels")
    return limit


class _Refused(ValueError):
    """A problem this module diagnosed itself; its message is final (not 'corrupt')."""


@contextmanager
def _open_image(path: str | os.PathLike[str], max_pixels: int | None) -> Iterator[Image.Image]:
    """Open an image lazily (header only) after checking it is a non-empty file and its
    header size is within the pixel guard; decoding errors in the ``with`` body become
    ``ValueError`` too. Messages do not name the file; callers add it."""
    limit = max_pixels_limit(max_pixels)
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise _Refused("image file is missing") from exc
    except OSError as exc:
        raise _Refused(f"cannot read image file: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _Refused("not a regular file")
    if st.st_size == 0:
        raise _Refused("not a readable image: empty file (0 bytes)")
    try:
        im = Image.open(path)
    except UnidentifiedImageError as exc:
        raise _Refused("not a readable image (unknown or corrupt format)") from exc
    except PermissionError as exc:
        raise _Refused(f"cannot read image file: {exc.strerror or exc}") from exc
    except Exception as exc:  # PIL raises many types on hostile headers
        raise _Refused(f"corrupt or truncated image header: {type(exc).__name__}: {exc}") from exc
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise _Refused(f"image has empty size {width}x{height}")
        if width * height > limit:
            raise _Refused(
                f"image is {width}x{height} = {width * height:,} pixels, above the "
                f"{limit:,}-pixel decompression-bomb guard (refused before decoding); if the "
                f"image is genuine, raise the guard with {MAX_PIXELS_ENV}=<pixels> or "
                f"max_pixels=<pixels>"
            )
        try:
            yield im
        except _Refused:
            raise
        except MemoryError as exc:
            raise _Refused(f"not enough memory to decode the {width}x{height} image") from exc
        except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ...
            raise _Refused(f"corrupt or truncated image: {exc}") from exc


def image_size(
    path: str | os.PathLike[str], *, verify: bool = True, max_pixels: int | None = None
) -> tuple[int, int]:
    """``(width, height)`` of an image; with ``verify`` the whole image is decoded.

    Args:
        path: the image file; its content decides the format, not its suffix.
        verify: decode every pixel to catch truncated or corrupt data.
        max_pixels: the decompression-bomb guard, see :func:`max_pixels_limit`; checked on
            the header, so a refused image is never decoded.

    Raises:
        ValueError: the file is missing, empty, not an image, truncated or corrupt, or
            larger than the guard; the message says which (callers add the file name, as
            :func:`pathodet.data.samples.load_sample` does).
    """
    with _open_image(path, max_pixels) as im:
        size = im.size
        if verify:
            im.load()  # decodes everything: catches truncated / corrupt data
    return size


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image to ``(H, W, 3)`` uint8 RGB, whatever its mode.

    Grayscale becomes three equal channels; 16-bit grayscale is scaled to 8 bits
    (``round(v * 255 / 65535)``: 65535 -> 255, 32768 -> 128); an alpha channel is composited
    over white (the glass background); CMYK, palette and the other PIL modes are converted.
    The content decides the format, not the suffix. EXIF orientation is not applied:
    annotations are in the stored pixel grid.

    Args:
        path: the image file.
        max_pixels: the decompression-bomb guard, see :func:`max_pixels_limit`.

    Raises:
        ValueError: ``"<path>: cannot decode image: <problem>"``.
    """
    try:
        with _open_image(path, max_pixels) as im:
            return _to_rgb(im)
    except ValueError as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from exc


def _to_rgb(im: Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an opened image (decodes it).

    PIL's ``convert("RGB")`` clips 16-bit grayscale at 255 (every value above 255 turns
    white), so 16-bit modes are scaled here; mode ``I`` (how some PIL versions open 16-bit
    PNGs) is taken as 16-bit data.
    """
    if im.mode in _16BIT_MODES or im.mode == "I":
        values = np.asarray(im).astype(np.int64)
        if im.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise _Refused(
                "32-bit integer image (mode I) with values outside 0-65535 is not supported; "
                "save it as 8-bit RGB"
            )
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        raise _Refused("floating-point image (mode F) is not supported; save it as 8-bit RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint32)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"))


def rescaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(w, h)`` pixels of an image of ``size = (w, h)`` after :func:`rescale_image`.

    >>> rescaled_size((2001, 1500), 0.5)
    (1000, 750)
    """
    w, h = size
    return (w, h) if scale == 1.0 else (max(1, round(w * scale)), max(1, round(h * scale)))


def rescale_image(rgb: np.ndarray, scale: float) -> np.ndarray:
    """``(H, W, 3)`` uint8 image resized by ``scale`` to ``(round(H*s), round(W*s), 3)``.

    ``scale < 1`` averages pixels (PIL's box filter: 40x -> 20x at 0.5 is a 2x2 mean);
    ``scale > 1`` interpolates bilinearly; ``scale == 1`` returns the array itself.

    Raises:
        ValueError: ``scale`` is not positive.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if scale == 1.0:
        return rgb
    size = rescaled_size((rgb.shape[1], rgb.shape[0]), scale)
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, method))
