"""The unlabeled pool: non-overlapping tiles of images or of the tissue of whole slides.

``--unlabeled`` may be a DigestPath root (tiles keep their image's AP/NP attribute), a
folder of images or slides, or one slide file; tiles of plain images and slides get the
attribute ``unknown``. Slides are read at the level closest to the detector's resolution
(``target_mpp``) and resized to it when needed, as ``pathodet slides`` does; only windows
touching tissue are kept. Unreadable files are reported and left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathodet.data.digestpath import (
    IMAGE_SUFFIXES,
    NEG_DIR,
    POS_DIR,
    Problem,
    load_records,
)
from pathodet.data.images import image_size, read_image
from pathodet.data.tiling import tile_grid
from pathodet.predict.config import SlideConfig
from pathodet.predict.loader import read_window
from pathodet.predict.reader import Slide, SlideError, is_slide_file
from pathodet.predict.slides import survey


@dataclass(frozen=True)
class PoolTile:
    """One pool tile: where it comes from and how to read it.

    Attributes:
        source: the image or slide file.
        x, y: top-left corner in level-0 (image) pixels.
        size: side in level-0 pixels (on slides ``read * downsample``).
        attribute: ``AP``/``NP`` (tiles of a DigestPath root) or ``unknown``.
        level, read: slides only: the level read and the side read there (pixels).
    """

    source: Path
    x: int
    y: int
    size: int
    attribute: str
    level: int | None = None
    read: int | None = None

    @property
    def name(self) -> str:
        return f"{self.source.stem}_x{self.x}_y{self.y}"


def pool_tiles(
    unlabeled: str | os.PathLike[str], tile: int, slide: SlideConfig | None = None
) -> tuple[list[PoolTile], list[Problem]]:
    """Every tile of the pool, in file order, and the files that could not be used."""
    unlabeled = Path(unlabeled)
    slide = slide or SlideConfig(target_mpp=0.25)
    if not unlabeled.exists():
        raise FileNotFoundError(f"{unlabeled}: no such file or folder")
    if (unlabeled / POS_DIR).is_dir() or (unlabeled / NEG_DIR).is_dir():
        files = [(r.image, r.attribute) for r in load_records(unlabeled)]
    elif unlabeled.is_dir():
        files = [
            (p, "unknown")
            for p in sorted(unlabeled.iterdir())
            if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_slide_file(p))
        ]
    else:
        files = [(unlabeled, "unknown")]
    tiles: list[PoolTile] = []
    problems: list[Problem] = []
    for path, attribute in files:
        try:
            if is_slide_file(path):
                tiles += _slide_tiles(path, tile, slide)
            else:
                w, h = image_size(path)
                tiles += [
                    PoolTile(path, int(x1), int(y1), tile, attribute)
                    for x1, y1, _, _ in tile_grid(w, h, tile, tile)
                ]
        except (ValueError, SlideError) as exc:
            problems.append(Problem(str(path), str(exc)))
    return tiles, problems


def _slide_tiles(path: Path, tile: int, settings: SlideConfig) -> list[PoolTile]:
    _, _, plan = survey(path, settings, tile, 0)
    side = round(plan.read * plan.downsample)
    return [
        PoolTile(
            path,
            round(plan.origin(i)[0]),
            round(plan.origin(i)[1]),
            side,
            "unknown",
            plan.level,
            plan.read,
        )  # fmt: skip
        for i in range(len(plan.windows))
    ]


def read_tile(t: PoolTile, tile: int, cache: dict | None = None) -> np.ndarray:
    """``(tile, tile, 3)`` uint8 RGB of a pool tile; image tiles past the border are padded
    with white (background), slide tiles resized to ``tile`` when read at another scale.

    ``cache`` (a dict) keeps the last decoded image, since consecutive tiles share it.
    """
    if t.level is not None:
        with Slide(t.source) as s:
            return read_window(s, t.x, t.y, t.level, t.read, tile)
    if cache is not None and cache.get("path") == t.source:
        image = cache["image"]
    else:
        image = read_image(t.source)
        if cache is not None:
            cache.update(path=t.source, image=image)
    out = np.full((tile, tile, 3), 255, np.uint8)
    crop = image[t.y : t.y + tile, t.x : t.x + tile]
    out[: crop.shape[0], : crop.shape[1]] = crop
    return out
