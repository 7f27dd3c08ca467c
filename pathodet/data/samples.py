"""Opening image records: image size, decoding, and annotation boxes validated against the image.

Nothing here crashes on one bad file: an unusable image raises :class:`ImageProblem` from
:func:`load_sample` and is reported, not raised, by :func:`load_samples`; annotation
problems are collected as :class:`~pathodet.data.digestpath.Problem` entries naming the file.

Annotations are VOC XML (:mod:`pathodet.data.voc`) or QuPath GeoJSON
(:mod:`pathodet.data.qupath`, a ``.geojson`` file); which objects are SRC boxes, and the box
of a point annotation, follow :class:`~pathodet.data.voc.AnnotationRules`.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pathodet.data.boxes import validate_boxes
from pathodet.data.digestpath import Attribute, ImageRecord, Problem
from pathodet.data.qupath import GEOJSON_SUFFIXES, read_qupath
from pathodet.data.voc import AnnotationError, AnnotationRules, VocAnnotation, read_voc

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


@dataclass
class Sample:
    """An opened image record: its size and validated boxes (image pixels, continuous).

    Attributes:
        record: the :class:`ImageRecord`.
        width, height: image size in pixels, read from the image itself.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2``, clipped to the image.
        clipped: how many boxes overhung the image within the allowance and were clipped
            (:mod:`pathodet.data.boxes`).
        problems: everything wrong with the image or its annotation.
        pseudo: the boxes are a teacher's pseudo-labels, not annotations (PU purification).
        other_classes: annotated objects of non-SRC classes, skipped, counted by name.
    """

    record: ImageRecord
    width: int
    height: int
    boxes: np.ndarray
    clipped: int = 0
    problems: list[Problem] = field(default_factory=list)
    pseudo: bool = False
    other_classes: dict[str, int] = field(default_factory=dict)

    @property
    def attribute(self) -> Attribute:
        return self.record.attribute


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
            :func:`load_sample` does).
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


def read_annotation(
    path: str | os.PathLike[str], rules: AnnotationRules | None = None
) -> VocAnnotation:
    """The boxes of an annotation file: QuPath GeoJSON when its suffix is ``.geojson``
    (:func:`~pathodet.data.qupath.read_qupath`), VOC XML otherwise
    (:func:`~pathodet.data.voc.read_voc`).

    Raises:
        AnnotationError: the file cannot be used at all; the message names it.
    """
    if Path(path).suffix.lower() in GEOJSON_SUFFIXES:
        return read_qupath(path, rules)
    return read_voc(path, rules)


def load_sample(
    record: ImageRecord,
    *,
    verify_image: bool = True,
    annotation: Path | None = None,
    rules: AnnotationRules | None = None,
) -> Sample:
    """Open one record: image size, annotation boxes validated against it.

    Args:
        record: the image to open.
        verify_image: decode the whole image to catch truncation (slower, ~30 ms at 2000^2).
        annotation: read boxes from this XML or GeoJSON instead of ``record.annotation``
            (e.g. the full annotations of synthetic data).
        rules: which objects are SRC boxes, the box of a point (default
            :class:`~pathodet.data.voc.AnnotationRules`: ``ring_cell_cancer`` and unnamed
            objects).

    Returns:
        The :class:`Sample`; annotation problems are listed in it, not raised.

    Raises:
        ImageProblem: the image itself is unusable. Use :func:`load_samples` for batches,
            which never raises on one file.
    """
    try:
        width, height = image_size(record.image, verify=verify_image)
    except ValueError as exc:
        raise ImageProblem(Problem(str(record.image), str(exc))) from exc

    ann_path = annotation if annotation is not None else record.annotation
    problems: list[Problem] = []
    raw = np.zeros((0, 4), np.float32)
    labels: list[str] | None = None
    others: dict[str, int] = {}
    if ann_path is None:
        if record.attribute == "AP":
            problems.append(
                Problem(str(record.image), "AP image has no annotation XML (taken as 0 boxes)")
            )
    else:
        try:
            voc = read_annotation(ann_path, rules)
        except AnnotationError as exc:
            problems.append(Problem(str(ann_path), exc.message + " (taken as 0 boxes)"))
        else:
            raw = voc.boxes
            labels = voc.labels or None
            others = voc.other_classes
            problems.extend(Problem(str(ann_path), issue) for issue in voc.issues)
            if voc.width is not None and (voc.width, voc.height) != (width, height):
                problems.append(
                    Problem(
                        str(ann_path),
                        f"<size> says {voc.width}x{voc.height} but the image is "
                        f"{width}x{height}; the image's size is used",
                    )
                )
    boxes, n_clipped, box_problems = validate_boxes(raw, width, height, str(ann_path), labels)
    problems.extend(box_problems)
    if record.attribute == "NP" and len(boxes):
        problems.append(
            Problem(
                str(ann_path),
                f"NP image has {len(boxes)} box(es); NP images contain no SRC, boxes ignored",
            )
        )
        boxes = np.zeros((0, 4), np.float32)
        n_clipped = 0  # ignored boxes are not counted as clipped ones either
    return Sample(record, width, height, boxes, n_clipped, problems, other_classes=others)


class ImageProblem(ValueError):
    """An image that cannot be used; carries its :class:`Problem`."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(f"{problem.file}: {problem.error}")


def load_samples(
    records: Iterable[ImageRecord],
    *,
    verify_image: bool = True,
    rules: AnnotationRules | None = None,
) -> tuple[list[Sample], list[Problem]]:
    """Open every record; unusable images are left out and reported, never raised.

    ``rules``: which annotated objects are SRC boxes (see :func:`load_sample`).

    Returns:
        ``(samples, problems)`` where problems include those of kept samples.
    """
    samples: list[Sample] = []
    problems: list[Problem] = []
    for record in records:
        try:
            sample = load_sample(record, verify_image=verify_image, rules=rules)
        except ImageProblem as exc:
            problems.append(exc.problem)
            continue
        samples.append(sample)
        problems.extend(sample.problems)
    return samples, problems


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


def summarize(samples: Sequence[Sample], problems: Sequence[Problem]) -> dict:
    """The dataset summary printed by ``pathodet data summary``.

    ``usable`` is true when at least one AP image with at least one box was read;
    ``clipped_boxes`` counts boxes that overhung their image a little and were clipped;
    ``other_class_objects`` counts annotated objects of non-SRC classes (skipped) by name.
    """
    ap = [s for s in samples if s.attribute == "AP"]
    nps = [s for s in samples if s.attribute == "NP"]
    n_boxes = int(sum(len(s.boxes) for s in ap))
    sizes = [b[2:] - b[:2] for s in ap for b in s.boxes]
    others: Counter[str] = Counter()
    for s in samples:
        others.update(s.other_classes)
    return {
        "positive_images": len(ap),
        "negative_images": len(nps),
        "boxes": n_boxes,
        "clipped_boxes": int(sum(s.clipped for s in samples)),
        "other_class_objects": dict(sorted(others.items())),
        "slides": len({s.record.slide_id for s in samples}),
        "cases": len({s.record.case_id for s in samples}),
        "AP_slides": len({s.record.slide_id for s in ap}),
        "AP_cases": len({s.record.case_id for s in ap}),
        "NP_slides": len({s.record.slide_id for s in nps}),
        "NP_cases": len({s.record.case_id for s in nps}),
        "median_box_size_px": (
            [round(float(v), 1) for v in np.median(np.stack(sizes), axis=0)] if sizes else None
        ),
        "usable": any(len(s.boxes) for s in ap),
        "problems": [p.as_dict() for p in problems],
    }
