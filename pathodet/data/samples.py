"""Opening image records: image size, decoding, and annotation boxes validated against the image.

Nothing here crashes on one bad file: an unusable image raises :class:`ImageProblem` from
:func:`load_sample` and is reported, not raised, by :func:`load_samples`; annotation
problems are collected as :class:`~pathodet.data.digestpath.Problem` entries naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pathodet.data.digestpath import Attribute, ImageRecord, Problem
from pathodet.data.voc import AnnotationError, read_voc

# Decompression-bomb guard: DigestPath images are ~2000x2000; refuse anything absurd.
Image.MAX_IMAGE_PIXELS = 30_000 * 30_000


@dataclass
class Sample:
    """An opened image record: its size and validated boxes (image pixels, continuous).

    Attributes:
        record: the :class:`ImageRecord`.
        width, height: image size in pixels, read from the image itself.
        boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2``, clipped to the image.
        clipped: how many boxes were partly outside the image and were clipped.
        problems: everything wrong with the image or its annotation.
        pseudo: the boxes are a teacher's pseudo-labels, not annotations (PU purification).
    """

    record: ImageRecord
    width: int
    height: int
    boxes: np.ndarray
    clipped: int = 0
    problems: list[Problem] = field(default_factory=list)
    pseudo: bool = False

    @property
    def attribute(self) -> Attribute:
        return self.record.attribute


def image_size(path: Path, *, verify: bool = True) -> tuple[int, int]:
    """``(width, height)`` of an image; with ``verify`` the whole image is decoded.

    Raises:
        ValueError: the file is missing, not an image, truncated or corrupt; the message
            says which.
    """
    try:
        with Image.open(path) as im:
            size = im.size
            if verify:
                im.load()  # decodes everything: catches truncated / corrupt data
    except FileNotFoundError as exc:
        raise ValueError("image file is missing") from exc
    except UnidentifiedImageError as exc:
        raise ValueError("not a readable image (unknown or corrupt format)") from exc
    except Image.DecompressionBombError as exc:
        raise ValueError(f"image is implausibly large: {exc}") from exc
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt or truncated image: {exc}") from exc
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"image has empty size {size}")
    return size


def read_image(path: Path) -> np.ndarray:
    """Decode an image to ``(H, W, 3)`` uint8 RGB. Raises ``ValueError`` naming the problem."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot decode image: {exc}") from exc


def validate_boxes(
    boxes: np.ndarray, width: int, height: int, file: str
) -> tuple[np.ndarray, int, list[Problem]]:
    """Check raw boxes against the image; clip the ones partly outside.

    Args:
        boxes: ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels as written in the file.
        width, height: image size in pixels.
        file: the annotation file, for problem messages.

    Returns:
        ``(kept, n_clipped, problems)``: kept boxes ``(K, 4)`` float32 clipped to
        ``[0, width] x [0, height]``; boxes with ``xmin >= xmax`` / ``ymin >= ymax`` or
        entirely outside the image are not kept and each gives a problem.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    problems: list[Problem] = []
    degenerate = (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3])
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    outside = ~degenerate & ((clipped[:, 0] >= clipped[:, 2]) | (clipped[:, 1] >= clipped[:, 3]))
    was_clipped = ~degenerate & ~outside & np.any(clipped != boxes, axis=1)
    for i in np.flatnonzero(degenerate):
        x1, y1, x2, y2 = boxes[i].tolist()
        problems.append(
            Problem(
                file, f"box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has xmin >= xmax or ymin >= ymax"
            )
        )
    for i in np.flatnonzero(outside):
        x1, y1, x2, y2 = boxes[i].tolist()
        problems.append(
            Problem(
                file,
                f"box {i} ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width}x{height} image",
            )
        )
    keep = ~degenerate & ~outside
    return clipped[keep], int(was_clipped.sum()), problems


def load_sample(
    record: ImageRecord, *, verify_image: bool = True, annotation: Path | None = None
) -> Sample:
    """Open one record: image size, annotation boxes validated against it.

    Args:
        record: the image to open.
        verify_image: decode the whole image to catch truncation (slower, ~30 ms at 2000^2).
        annotation: read boxes from this XML instead of ``record.annotation`` (e.g. the
            full annotations of synthetic data).

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
    if ann_path is None:
        if record.attribute == "AP":
            problems.append(
                Problem(str(record.image), "AP image has no annotation XML (taken as 0 boxes)")
            )
    else:
        try:
            voc = read_voc(ann_path)
        except AnnotationError as exc:
            problems.append(Problem(str(ann_path), exc.message + " (taken as 0 boxes)"))
        else:
            raw = voc.boxes
            problems.extend(Problem(str(ann_path), issue) for issue in voc.issues)
            if voc.width is not None and (voc.width, voc.height) != (width, height):
                problems.append(
                    Problem(
                        str(ann_path),
                        f"<size> says {voc.width}x{voc.height} but the image is "
                        f"{width}x{height}; the image's size is used",
                    )
                )
    boxes, n_clipped, box_problems = validate_boxes(raw, width, height, str(ann_path))
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
    return Sample(record, width, height, boxes, n_clipped, problems)


class ImageProblem(ValueError):
    """An image that cannot be used; carries its :class:`Problem`."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(f"{problem.file}: {problem.error}")


def load_samples(
    records: Iterable[ImageRecord], *, verify_image: bool = True
) -> tuple[list[Sample], list[Problem]]:
    """Open every record; unusable images are left out and reported, never raised.

    Returns:
        ``(samples, problems)`` where problems include those of kept samples.
    """
    samples: list[Sample] = []
    problems: list[Problem] = []
    for record in records:
        try:
            sample = load_sample(record, verify_image=verify_image)
        except ImageProblem as exc:
            problems.append(exc.problem)
            continue
        samples.append(sample)
        problems.extend(sample.problems)
    return samples, problems


def summarize(samples: Sequence[Sample], problems: Sequence[Problem]) -> dict:
    """The dataset summary printed by ``pathodet data summary``.

    ``usable`` is true when at least one AP image with at least one box was read.
    """
    ap = [s for s in samples if s.attribute == "AP"]
    nps = [s for s in samples if s.attribute == "NP"]
    n_boxes = int(sum(len(s.boxes) for s in ap))
    sizes = [b[2:] - b[:2] for s in ap for b in s.boxes]
    return {
        "positive_images": len(ap),
        "negative_images": len(nps),
        "boxes": n_boxes,
        "clipped_boxes": int(sum(s.clipped for s in samples)),
        "slides": len({s.record.slide_id for s in samples}),
        "median_box_size_px": (
            [round(float(v), 1) for v in np.median(np.stack(sizes), axis=0)] if sizes else None
        ),
        "usable": any(len(s.boxes) for s in ap),
        "problems": [p.as_dict() for p in problems],
    }
