"""Where on a slide the detector looks: the detection level, the windows, their cores.

The detector was trained at ``target_mpp`` microns per pixel (the checkpoint's). A slide
is read at its level whose resolution is closest to that; when that level is off by more
than ``mpp_tolerance`` (relative), each window is read at the level's own resolution and
resized, so the detector always sees ``tile`` x ``tile`` pixels at ``target_mpp``.

Windows are laid out on that level as for a whole image (:mod:`pathodet.predict.windows`):
``read`` x ``read`` level pixels overlapping by ``overlap``, the last one of a row aligned
to the border. Only windows whose footprint touches tissue on the mask are kept. Each
window's *core* (the overlap split at its middle) decides which window reports a cell;
cores are stored in level-0 pixels, where all merging happens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pathodet.data.tiling import window_starts
from pathodet.predict.config import SlideConfig
from pathodet.predict.reader import SlideInfo
from pathodet.predict.windows import core_bounds


@dataclass(frozen=True)
class SlidePlan:
    """The windows of one slide.

    Attributes:
        level: the level windows are read from.
        downsample: level-0 pixels per pixel of ``level``.
        read: window side in ``level`` pixels (``tile`` when no resizing is needed).
        tile: window side fed to the detector, pixels at ``target_mpp``.
        windows: ``(T, 2)`` int64 top-left ``x, y`` of every kept window, ``level`` pixels,
            row-major.
        cores: ``(T, 4)`` float64 ``x_lo, x_hi, y_lo, y_hi`` of each window's core, level-0
            pixels (infinite at the slide border).
        grid_size: number of windows before tissue filtering.
        mask: ``(h, w)`` bool tissue mask.
        mask_downsample: level-0 pixels per mask pixel.
        size0: ``(width, height)`` of level 0, pixels.
    """

    level: int
    downsample: float
    read: int
    tile: int
    windows: np.ndarray
    cores: np.ndarray
    grid_size: int
    mask: np.ndarray
    mask_downsample: float
    size0: tuple[int, int]

    @property
    def det_to_level0(self) -> float:
        """Level-0 pixels per detector pixel."""
        return self.downsample * self.read / self.tile

    def to_level0(self, i: int) -> tuple[float, float, float, float]:
        """``(k, k, ox, oy)``: window pixel ``(x, y)`` is level-0 ``(ox + k x, oy + k y)``."""
        k = self.det_to_level0
        return (k, k, *self.origin(i))

    def origin(self, i: int) -> tuple[float, float]:
        """Level-0 ``x, y`` of window ``i``'s top-left corner."""
        x, y = self.windows[i]
        return float(x) * self.downsample, float(y) * self.downsample

    def footprint(self, i: int) -> tuple[float, float, float, float]:
        """Window ``i`` in level 0: ``x1, y1, x2, y2``."""
        x, y = self.origin(i)
        side = self.read * self.downsample
        return x, y, x + side, y + side


def choose_level(info: SlideInfo, target_mpp: float) -> int:
    """The level whose microns per pixel is closest to ``target_mpp`` (in log scale)."""
    errs = [
        abs(math.log(info.level_mpp(i) / target_mpp)) for i in range(len(info.level_downsamples))
    ]
    return int(np.argmin(errs))


def plan_slide(
    info: SlideInfo, mask: np.ndarray, mask_downsample: float, tile: int, overlap: int,
    settings: SlideConfig,
) -> SlidePlan:  # fmt: skip
    """Lay the windows over the tissue of a slide (see the module docstring)."""
    if settings.target_mpp is None:
        raise ValueError("slides.target_mpp is unset: resolve it with for_checkpoint first")
    level = choose_level(info, settings.target_mpp)
    ds = info.level_downsamples[level]
    r = info.level_mpp(level) / settings.target_mpp  # detector pixels per level pixel
    if abs(r - 1.0) <= settings.mpp_tolerance:
        r = 1.0
    read = max(32, int(round(tile / r)))
    ov = int(round(overlap / r))
    lw, lh = info.level_dimensions[level]
    xs = window_starts(lw, read, read - ov)
    ys = window_starts(lh, read, read - ov)
    cx = [(lo * ds, hi * ds) for lo, hi in core_bounds(xs, read)]
    cy = [(lo * ds, hi * ds) for lo, hi in core_bounds(ys, read)]
    mh, mw = mask.shape
    windows, cores = [], []
    for j, y in enumerate(ys):
        my0 = int(math.floor(y * ds / mask_downsample))
        my1 = int(math.ceil((y + read) * ds / mask_downsample))
        for i, x in enumerate(xs):
            mx0 = int(math.floor(x * ds / mask_downsample))
            mx1 = int(math.ceil((x + read) * ds / mask_downsample))
            if mask[max(0, my0) : min(mh, my1), max(0, mx0) : min(mw, mx1)].any():
                windows.append((x, y))
                cores.append((*cx[i], *cy[j]))
    return SlidePlan(
        level=level,
        downsample=float(ds),
        read=read,
        tile=tile,
        windows=np.asarray(windows, np.int64).reshape(-1, 2),
        cores=np.asarray(cores, np.float64).reshape(-1, 4),
        grid_size=len(xs) * len(ys),
        mask=mask,
        mask_downsample=float(mask_downsample),
        size0=info.level_dimensions[0],
    )
