"""A synthetic whole slide: a pyramidal tiled TIFF of tissue fragments on glass, with SRC regions.

The slide is laid out on a coarse grid (one cell per ``LAYOUT_CELL`` level-0 pixels): a
smooth random field, thresholded, gives a few tissue fragments separated by glass, with a
glass margin along the slide border; a second field marks the regions of the tissue that
hold signet ring cells. Level 0 is rendered in ``block`` x ``block`` squares, each one a
:func:`~pathodet.data.synth.synthesize_image` with the slide's stain ("AP" in an SRC
region, "NP" elsewhere), blended into glass by the tissue field. The squares are rendered
one band (a row of squares) at a time and streamed into the TIFF, so memory holds one band
plus the 4x-downsampled level, whatever the slide size.

The file is a generic tiled TIFF that OpenSlide opens (vendor ``generic-tiff``): BigTIFF,
JPEG-compressed RGB tiles, one top-level page per pyramid level (downsamples 1, 4, 16, ...)
and the resolution tags in pixels per centimetre, which OpenSlide reports as
``openslide.mpp-x`` / ``openslide.mpp-y``. The centres of the squares, box corners and the
truth file are in level-0 pixels.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pathodet.data.predictions import ImagePredictions, write_predictions
from pathodet.data.synth.canvas import smooth_noise
from pathodet.data.synth.compose import synthesize_image
from pathodet.data.synth.stain import Stain, random_stain

LAYOUT_CELL = 64  # level-0 pixels per cell of the layout grid
TRUTH_SUFFIX = ".truth.csv"


@dataclass
class SyntheticSlide:
    """What was written.

    Attributes:
        path: the TIFF.
        src_boxes: ``(N, 4)`` float32 level-0 ``x1, y1, x2, y2`` of every SRC on tissue.
        tissue: ``(ceil(H / LAYOUT_CELL), ceil(W / LAYOUT_CELL))`` float32 tissue cover
            (0 glass, 1 tissue) of each layout cell, sampled at the cell centre.
        levels: ``(width, height)`` of each pyramid level, level 0 first.
        mpp: microns per level-0 pixel.
    """

    path: Path
    src_boxes: np.ndarray
    tissue: np.ndarray
    levels: list[tuple[int, int]]
    mpp: float


def truth_path(slide: str | os.PathLike[str]) -> Path:
    """Where :func:`write_synthetic_slide` puts the SRC boxes: ``slide.tiff`` -> ``slide.truth.csv``."""
    p = Path(slide)
    return p.with_name(p.stem + TRUTH_SUFFIX)


def _layout(
    rng: np.random.Generator, gh: int, gw: int, tissue_fraction: float, src_fraction: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Coarse fields: tissue ``(gh, gw)`` (> 0 is tissue), SRC regions (> 0), edge sharpness."""
    scale = max(gh, gw) / 3.0
    field = smooth_noise(rng, gh, gw, scale) + 0.08 * smooth_noise(rng, gh, gw, scale / 8)
    # a glass margin along the slide border: 4% of the short side, soft
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    margin = max(2.0, 0.04 * min(gh, gw))
    edge = np.minimum.reduce([xx, yy, gw - 1 - xx, gh - 1 - yy]) / margin
    field = field - 10.0 * np.clip(1.0 - edge, 0.0, 1.0)
    thr = float(np.quantile(field, 1.0 - tissue_fraction))
    tissue = field - thr
    src_field = smooth_noise(rng, gh, gw, scale / 1.5)
    on = tissue > 0
    src_thr = float(np.quantile(src_field[on], 1.0 - src_fraction)) if on.any() else np.inf
    sharp = scale / 1.5  # ~1.5 layout cells from glass to tissue
    return tissue.astype(np.float32), (src_field - src_thr).astype(np.float32), sharp


def _upsample(field: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Bilinear value of a layout field at the centres of level-0 pixels of one block."""
    mx = ((np.arange(x0, x0 + w, dtype=np.float32) + 0.5) / LAYOUT_CELL - 0.5)[None, :]
    my = ((np.arange(y0, y0 + h, dtype=np.float32) + 0.5) / LAYOUT_CELL - 0.5)[:, None]
    mapx = np.broadcast_to(mx, (h, w)).astype(np.float32)
    mapy = np.broadcast_to(my, (h, w)).astype(np.float32)
    return cv2.remap(field, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _glass(rng: np.random.Generator, h: int, w: int, stain: Stain) -> np.ndarray:
    noise = rng.normal(0.0, 1.2, (h, w, 1)).astype(np.float32)
    return stain.background[None, None, :] + noise


def _render_block(
    seed: int, by: int, bx: int, x0: int, y0: int, w: int, h: int,
    tissue: np.ndarray, src: np.ndarray, sharp: float, stain: Stain,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One level-0 block: ``(h, w, 3)`` uint8 and its SRC boxes ``(n, 4)`` in level 0."""
    rng = np.random.default_rng([seed, by, bx])
    alpha = np.clip(_upsample(tissue, x0, y0, w, h) * sharp, 0.0, 1.0)
    glass = _glass(rng, h, w, stain)
    if alpha.max() <= 0.0 or min(h, w) < 64:
        return np.clip(glass + 0.5, 0, 255).astype(np.uint8), np.zeros((0, 4), np.float32)
    cy, cx = (y0 + h / 2) / LAYOUT_CELL, (x0 + w / 2) / LAYOUT_CELL
    gy, gx = min(int(cy), src.shape[0] - 1), min(int(cx), src.shape[1] - 1)
    attribute = "AP" if src[gy, gx] > 0 and tissue[gy, gx] > 0 else "NP"
    img = synthesize_image(rng, h, w, attribute, stain, glass=False)
    a = alpha[..., None]
    rgb = np.clip(img.rgb * a + glass * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
    boxes = img.src_boxes
    if len(boxes):
        mx = ((boxes[:, 0] + boxes[:, 2]) / 2).astype(int).clip(0, w - 1)
        my = ((boxes[:, 1] + boxes[:, 3]) / 2).astype(int).clip(0, h - 1)
        boxes = boxes[alpha[my, mx] >= 0.5] + np.array([x0, y0, x0, y0], np.float32)
    return rgb, boxes.astype(np.float32)


def _tiles(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """Row-major ``tile`` x ``tile`` tiles of an image whose sides are multiples of ``tile``."""
    for y in range(0, image.shape[0], tile):
        for x in range(0, image.shape[1], tile):
            yield image[y : y + tile, x : x + tile]


def _pad(image: np.ndarray, tile: int) -> np.ndarray:
    h, w = image.shape[:2]
    ph, pw = -h % tile, -w % tile
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return image


def write_synthetic_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    seed: int = 0,
    mpp: float = 0.25,
    tissue_fraction: float = 0.4,
    src_fraction: float = 0.3,
    block: int = 1024,
    tile: int = 256,
    quality: int = 85,
    min_level_side: int = 256,
) -> SyntheticSlide:
    """Write a synthetic pyramidal slide of ``width`` x ``height`` level-0 pixels to ``path``.

    Also writes the SRC boxes to :func:`truth_path` (predictions-CSV layout, score 1).
    ``tissue_fraction`` of the layout cells are tissue; ``src_fraction`` of the tissue lies
    in SRC regions. Deterministic given ``seed``. The TIFF is written to a temporary file
    and renamed into place, so a killed run leaves no partial slide behind.

    Raises:
        ValueError: a side below 256 pixels, ``block`` not a multiple of ``4 * tile``, or a
            fraction outside (0, 1].
    """
    import tifffile

    if width < 256 or height < 256:
        raise ValueError(f"slide too small: {width}x{height} (at least 256x256 pixels)")
    if block % (4 * tile) or tile % 16:
        raise ValueError(f"block ({block}) must be a multiple of 4 * tile ({tile}), tile of 16")
    for name, v in (("tissue_fraction", tissue_fraction), ("src_fraction", src_fraction)):
        if not 0.0 < v <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {v}")
    path = Path(path)
    rng = np.random.default_rng([seed, 7919])
    stain = random_stain(rng)
    gh, gw = math.ceil(height / LAYOUT_CELL), math.ceil(width / LAYOUT_CELL)
    tissue, src, sharp = _layout(rng, gh, gw, tissue_fraction, src_fraction)

    wpad = -(-width // block) * block
    level1 = np.empty((-(-height // 4), wpad // 4, 3), np.uint8)
    boxes: list[np.ndarray] = []

    def level0() -> Iterator[np.ndarray]:
        for by, y0 in enumerate(range(0, height, block)):
            h = min(block, height - y0)
            band = np.empty((-(-h // tile) * tile, wpad, 3), np.uint8)
            for bx, x0 in enumerate(range(0, wpad, block)):
                w = min(block, width - x0) if x0 < width else block
                rgb, b = _render_block(seed, by, bx, x0, y0, w, h, tissue, src, sharp, stain)
                band[:h, x0 : x0 + w] = rgb
                band[:h, x0 + w : x0 + block] = rgb[:, -1:]  # padding past the right border
                boxes.append(b)
            band[h:] = band[h - 1 : h]
            small = cv2.resize(band, (wpad // 4, band.shape[0] // 4), interpolation=cv2.INTER_AREA)
            level1[y0 // 4 : y0 // 4 + -(-h // 4)] = small[: -(-h // 4)]
            yield from _tiles(band[:, : -(-width // tile) * tile], tile)

    levels = [(width, height)]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            opts = dict(
                tile=(tile, tile), compression="jpeg", compressionargs={"level": quality},
                photometric="rgb", resolutionunit="CENTIMETER", metadata=None,
            )  # fmt: skip
            res = 1e4 / mpp
            tw.write(level0(), shape=(height, width, 3), dtype=np.uint8, resolution=(res, res),
                     description="pathodet synthetic slide", **opts)  # fmt: skip
            image = level1[:, : -(-width // 4)]
            factor = 4
            while min(image.shape[:2]) >= min_level_side:
                levels.append((image.shape[1], image.shape[0]))
                r = res / factor
                tw.write(_tiles(_pad(image, tile), tile), shape=image.shape, dtype=np.uint8,
                         resolution=(r, r), subfiletype=1, **opts)  # fmt: skip
                image = cv2.resize(image, (-(-image.shape[1] // 4), -(-image.shape[0] // 4)),
                                   interpolation=cv2.INTER_AREA)  # fmt: skip
                factor *= 4
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    write_predictions(
        truth_path(path), {path.name: ImagePredictions(all_boxes, np.ones(len(all_boxes)))}
    )
    cover = np.clip(tissue * sharp, 0.0, 1.0)
    return SyntheticSlide(path, all_boxes, cover, levels, mpp)
