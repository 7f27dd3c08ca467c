"""Sliding-window tiling of images, with boxes carried into tile coordinates.

The paper (DGHM, section 4.2) cuts 2000x2000 images into 800x800 windows with stride
300. Windows start at 0, stride, 2*stride, ... and one last window is aligned to the
image border so every pixel is covered and no window pads past the image. An image
smaller than the window along an axis gives one window covering that whole axis.

Tiles are produced lazily: :class:`TileDataset` only knows image sizes until a tile
is asked for, so no copy of the dataset is written to disk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_image
from pathodet.data.digestpath import Attribute
from pathodet.data.images import read_image, rescale_image
from pathodet.data.overlay import draw_boxes
from pathodet.data.samples import Sample


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets (pixels) of the windows along one axis of ``length`` pixels.

    >>> window_starts(2000, 800, 300)
    [0, 300, 600, 900, 1200]
    >>> window_starts(2010, 800, 300)
    [0, 300, 600, 900, 1200, 1210]
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def tile_grid(width: int, height: int, tile: int, stride: int) -> np.ndarray:
    """All windows of an image as ``(T, 4)`` int64 ``x1, y1, x2, y2`` (pixels), row-major."""
    xs = window_starts(width, tile, stride)
    ys = window_starts(height, tile, stride)
    out = [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]
    return np.asarray(out, np.int64).reshape(-1, 4)


def boxes_in_window(
    boxes: np.ndarray, window: Sequence[float], min_visible: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes seen through a window, in window coordinates.

    Args:
        boxes: ``(N, 4)`` ``x1, y1, x2, y2`` in image pixels.
        window: ``(x1, y1, x2, y2)`` of the window in image pixels.
        min_visible: keep a box when at least this fraction of its area lies inside the
            window (``0`` keeps any box that overlaps with positive area).

    Returns:
        ``(clipped, index)``: ``(K, 4)`` float32 boxes clipped to the window and shifted so
        the window's top-left corner is ``(0, 0)``, and ``(K,)`` int64 indices into ``boxes``.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    wx1, wy1, wx2, wy2 = (float(v) for v in window)
    cx1 = np.maximum(boxes[:, 0], wx1)
    cy1 = np.maximum(boxes[:, 1], wy1)
    cx2 = np.minimum(boxes[:, 2], wx2)
    cy2 = np.minimum(boxes[:, 3], wy2)
    inter = np.clip(cx2 - cx1, 0, None) * np.clip(cy2 - cy1, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (inter > 0) & (inter >= min_visible * area)
    index = np.flatnonzero(keep)
    clipped = np.stack([cx1 - wx1, cy1 - wy1, cx2 - wx1, cy2 - wy1], axis=1)[keep]
    return clipped.astype(np.float32).reshape(-1, 4), index.astype(np.int64)


def rescale_factors(width: int, height: int, scale: float) -> np.ndarray:
    """``(4,)`` float32 ``[sx, sy, sx, sy]`` that map boxes of a ``width x height`` image into
    the pixels of the same image resized by ``scale`` (:func:`rescale_image`'s rounding)."""
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return np.array([w / width, h / height] * 2, np.float32)


def _rescaled(sample: Sample, scale: float) -> Sample:
    """The sample as the detector sees it at ``scale``: size and boxes in resized pixels."""
    if scale == 1.0:
        return sample
    f = rescale_factors(sample.width, sample.height, scale)
    w, h = max(1, round(sample.width * scale)), max(1, round(sample.height * scale))
    return replace(sample, width=w, height=h, boxes=(sample.boxes * f).astype(np.float32))


@dataclass(frozen=True)
class TileRef:
    """Where one tile comes from: sample index and window ``(x1, y1, x2, y2)`` in the pixels
    the detector sees (the image's own unless the dataset resizes by ``scale``)."""

    sample: int
    window: tuple[int, int, int, int]


class TileDataset:
    """Lazy tiles of a list of samples; works as a map-style ``torch`` dataset.

    Each item is a dict:
        ``image``: ``(h, w, 3)`` uint8 RGB (``h, w <= tile``);
        ``boxes``: ``(K, 4)`` float32 annotated boxes in tile pixels;
        ``box_index``: ``(K,)`` int64 index of each box in its sample's ``boxes``;
        ``attribute``: ``"AP"`` or ``"NP"`` of the source image (an AP tile stays AP even
        when no annotated box falls in it), ``"unknown"`` for a pseudo-labeled pool tile;
        ``pseudo``: its boxes are pseudo-labels (:mod:`pathodet.data.pseudo`);
        ``name``: source image file name; ``window``: ``(4,)`` int64 window in image pixels
        (resized pixels when ``scale`` is not 1, see below).

    ``scale`` resizes every image (and its boxes) before tiling: ``0.5`` detects 40x
    scans at 20x. Windows and boxes are then in pixels of the resized image, and
    ``tile``/``stride`` too (``window`` is in resized pixels; divide by ``scale`` for the
    image's own).

    Decoded images are kept in a small LRU cache (``cache_images``), since consecutive
    tiles usually come from the same image.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        tile: int = 800,
        stride: int = 300,
        min_visible: float = 0.5,
        cache_images: int = 2,
        scale: float = 1.0,
    ) -> None:
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.scale = scale
        self.samples = [_rescaled(s, scale) for s in samples]
        self.tile, self.stride, self.min_visible = tile, stride, min_visible
        self.cache_images = max(1, cache_images)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.refs: list[TileRef] = [
            TileRef(i, tuple(int(v) for v in w))  # type: ignore[arg-type]
            for i, s in enumerate(self.samples)
            for w in tile_grid(s.width, s.height, tile, stride)
        ]

    def __len__(self) -> int:
        return len(self.refs)

    def attributes(self) -> list[Attribute]:
        """The attribute of every tile, in order (for AP:NP balanced batch samplers)."""
        return [self.samples[r.sample].attribute for r in self.refs]

    def box_counts(self) -> list[int]:
        """Number of annotated boxes in every tile, in order, without decoding any image."""
        return [
            len(boxes_in_window(self.samples[r.sample].boxes, r.window, self.min_visible)[1])
            for r in self.refs
        ]

    def _image(self, i: int) -> np.ndarray:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        rgb = rescale_image(read_image(self.samples[i].record.image), self.scale)
        self._cache[i] = rgb
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return rgb

    def __getitem__(self, k: int) -> dict:
        ref = self.refs[k]
        sample = self.samples[ref.sample]
        x1, y1, x2, y2 = ref.window
        rgb = self._image(ref.sample)
        if rgb.shape[:2] != (sample.height, sample.width):
            raise ValueError(
                f"{sample.record.image}: decoded size {rgb.shape[1]}x{rgb.shape[0]} differs "
                f"from the {sample.width}x{sample.height} read when the dataset was opened"
            )
        boxes, index = boxes_in_window(sample.boxes, ref.window, self.min_visible)
        return {
            "image": np.ascontiguousarray(rgb[y1:y2, x1:x2]),
            "boxes": boxes,
            "box_index": index,
            "attribute": sample.attribute,
            "pseudo": sample.pseudo,
            "name": sample.record.name,
            "window": np.asarray(ref.window, np.int64),
        }


def save_tiles(tiles: TileDataset, out: Path, count: int) -> int:
    """Write ``count`` tiles spread evenly over ``tiles`` to ``out`` as PNG, annotated boxes
    drawn in green, named ``<image>-x<X>-y<Y>-<AP|NP>.png`` (window origin in the image's
    detector pixels); returns the number of boxes drawn."""
    n_boxes = 0
    step = max(1, len(tiles) // max(count, 1))
    for k in range(0, len(tiles), step)[:count]:
        item = tiles[k]
        n_boxes += len(item["boxes"])
        x1, y1 = item["window"][:2]
        name = f"{Path(item['name']).stem}-x{x1}-y{y1}-{item['attribute']}.png"
        atomic_write_image(out / name, draw_boxes(item["image"], item["boxes"], (0, 200, 0)))
    return n_boxes
