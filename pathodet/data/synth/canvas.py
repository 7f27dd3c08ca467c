"""Drawing surface of the synthetic generator: stain concentration maps and soft shapes.

Everything is drawn in *stain space*: three ``(H, W)`` float32 maps hold the optical
density (concentration) of hematoxylin, eosin and a neutral grey absorber at every pixel.
Objects are composited onto the maps with a soft coverage ``alpha`` ("paint over": a cell
displaces the stroma under it), and :mod:`pathodet.data.synth.stain` turns the maps into
RGB with Beer-Lambert at the end. Units are pixels at 40x (about 0.25 um per pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

OCC_CELL = 8  # pixels per cell of the occupancy grid


def smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """``(height, width)`` float32 noise, mean 0 and std 1, correlated over ~``scale`` pixels."""
    gh = max(2, int(math.ceil(height / scale)) + 1)
    gw = max(2, int(math.ceil(width / scale)) + 1)
    small = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    sample = big[::7, ::7]
    return (big - sample.mean()) / max(float(sample.std()), 1e-6)


def harmonics(rng: np.random.Generator, amplitude: float, kmax: int = 5) -> np.ndarray:
    """Random outline wobble: ``(K, 3)`` rows ``k, amplitude, phase`` for ``k = 2..kmax``."""
    ks = np.arange(2, kmax + 1, dtype=np.float32)
    amps = amplitude * rng.uniform(0.2, 1.0, ks.size) / ks
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    return np.stack([ks, amps, phases], axis=1).astype(np.float32)


def radial_factor(theta: np.ndarray, wobble: np.ndarray | None) -> np.ndarray | float:
    """``1 + sum_k a_k cos(k theta + phi_k)`` for a wobble from :func:`harmonics`."""
    if wobble is None or len(wobble) == 0:
        return 1.0
    out = np.ones_like(theta)
    for k, a, p in wobble:
        out += a * np.cos(k * theta + p)
    return out


def ellipse_sd(
    dx: np.ndarray,
    dy: np.ndarray,
    a: float,
    b: float,
    angle: float = 0.0,
    wobble: np.ndarray | None = None,
    power: float = 2.0,
) -> np.ndarray:
    """Approximate signed distance (pixels, > 0 inside) to an ellipse outline.

    ``dx``/``dy`` are pixel offsets from the centre (broadcastable, e.g. ``(1, w)`` and
    ``(h, 1)``), ``a``/``b`` the semi-axes in pixels along/across ``angle`` (radians).
    ``wobble`` makes the outline irregular; ``power < 2`` on the long axis gives pointed
    (spindle) tips. First-order accurate near the outline, which is all soft edges need.
    """
    c, s = math.cos(angle), math.sin(angle)
    u = dx * c + dy * s
    v = dy * c - dx * s
    ua = np.abs(u) / a
    vb = v / b
    q = (ua**power + vb * vb) ** (1.0 / power) if power != 2.0 else np.sqrt(ua * ua + vb * vb)
    q = q + 1e-6
    grad = np.sqrt((u / (a * a)) ** 2 + (v / (b * b)) ** 2) / q + 1e-6
    r = radial_factor(np.arctan2(vb, u / a), wobble) if wobble is not None else 1.0
    return (r - q) / grad


def coverage(sd: np.ndarray, softness: float = 0.8) -> np.ndarray:
    """Soft coverage in [0, 1] from a signed distance in pixels (anti-aliased edge)."""
    return np.clip(sd / (2.0 * softness) + 0.5, 0.0, 1.0)


@dataclass
class Patch:
    """A window of the canvas around a centre: slices and broadcastable pixel offsets."""

    ys: slice
    xs: slice
    dx: np.ndarray  # (1, w) float32, x - cx in pixels
    dy: np.ndarray  # (h, 1) float32, y - cy in pixels


class Canvas:
    """Stain concentration maps ``H``, ``E``, ``N`` of one image plus helpers to draw on them.

    Attributes:
        H, E, N: ``(height, width)`` float32 optical densities of hematoxylin, eosin and a
            neutral grey absorber (before per-image stain scaling).
        occ: coarse boolean occupancy grid (one cell per ``OCC_CELL`` pixels) used to keep
            objects from being placed on top of each other.
        texture: ``(height, width)`` float32 fine noise (std 1) for chromatin and cytoplasm.
        angle: ``(height, width)`` float32 local fibre direction in radians.
    """

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.height, self.width = int(height), int(width)
        shape = (self.height, self.width)
        self.H = np.zeros(shape, np.float32)
        self.E = np.zeros(shape, np.float32)
        self.N = np.zeros(shape, np.float32)
        self.occ = np.zeros((math.ceil(height / OCC_CELL), math.ceil(width / OCC_CELL)), dtype=bool)
        fine = rng.standard_normal(shape, dtype=np.float32)
        self.texture = cv2.GaussianBlur(fine, (0, 0), 0.9) * 2.2
        self.angle = np.zeros(shape, np.float32)
        self._rng = rng
        self._foam: dict[int, np.ndarray] = {}

    # -- geometry -------------------------------------------------------------------------
    def patch(self, cx: float, cy: float, radius: float) -> Patch | None:
        """Window of half-size ``radius`` pixels around ``(cx, cy)``, clipped; None if empty."""
        x0, x1 = max(0, int(cx - radius) - 1), min(self.width, int(cx + radius) + 2)
        y0, y1 = max(0, int(cy - radius) - 1), min(self.height, int(cy + radius) + 2)
        if x0 >= x1 or y0 >= y1:
            return None
        dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
        return Patch(slice(y0, y1), slice(x0, x1), dx, dy)

    def inside(self, cx: float, cy: float, margin: float) -> bool:
        """Whether ``(cx, cy)`` is at least ``margin`` pixels from every image border."""
        return margin <= cx <= self.width - margin and margin <= cy <= self.height - margin

    # -- occupancy ------------------------------------------------------------------------
    def _grid_box(self, cx: float, cy: float, r: float) -> tuple[slice, slice]:
        g = OCC_CELL
        gy0, gy1 = max(0, int((cy - r) // g)), min(self.occ.shape[0], int((cy + r) // g) + 1)
        gx0, gx1 = max(0, int((cx - r) // g)), min(self.occ.shape[1], int((cx + r) // g) + 1)
        return slice(gy0, gy1), slice(gx0, gx1)

    def is_free(self, cx: float, cy: float, r: float) -> bool:
        """No occupied grid cell within ``r`` pixels (square test) of ``(cx, cy)``."""
        return not self.occ[self._grid_box(cx, cy, r)].any()

    def free_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Vectorised point test: ``(n,)`` bool, True where the grid cell is unoccupied."""
        gy = np.clip((ys // OCC_CELL).astype(int), 0, self.occ.shape[0] - 1)
        gx = np.clip((xs // OCC_CELL).astype(int), 0, self.occ.shape[1] - 1)
        return ~self.occ[gy, gx]

    def occupy(self, cx: float, cy: float, r: float) -> None:
        """Mark grid cells whose centre is within ``r`` pixels of ``(cx, cy)``."""
        sy, sx = self._grid_box(cx, cy, r)
        gy = (np.arange(sy.start, sy.stop) + 0.5) * OCC_CELL - cy
        gx = (np.arange(sx.start, sx.stop) + 0.5) * OCC_CELL - cx
        self.occ[sy, sx] |= (gy[:, None] ** 2 + gx[None, :] ** 2) <= r * r

    def occupy_mask(self, p: Patch, mask: np.ndarray) -> None:
        """Mark grid cells whose centre pixel lies in ``mask`` (a bool array over ``p``)."""
        g = OCC_CELL
        gy0, gy1 = -(-p.ys.start // g), min(self.occ.shape[0], -(-p.ys.stop // g))
        gx0, gx1 = -(-p.xs.start // g), min(self.occ.shape[1], -(-p.xs.stop // g))
        rows = np.arange(gy0, gy1) * g + g // 2 - p.ys.start
        cols = np.arange(gx0, gx1) * g + g // 2 - p.xs.start
        rows = rows[rows < mask.shape[0]]
        cols = cols[cols < mask.shape[1]]
        if rows.size and cols.size:
            self.occ[gy0 : gy0 + rows.size, gx0 : gx0 + cols.size] |= mask[np.ix_(rows, cols)]

    # -- painting -------------------------------------------------------------------------
    def paint(
        self,
        p: Patch,
        alpha: np.ndarray,
        h: float | np.ndarray = 0.0,
        e: float | np.ndarray = 0.0,
        n: float | np.ndarray = 0.0,
    ) -> None:
        """Composite concentrations ``(h, e, n)`` over the patch with coverage ``alpha``."""
        for m, val in ((self.H, h), (self.E, e), (self.N, n)):
            view = m[p.ys, p.xs]
            view += alpha * (val - view)

    def nucleus(self, p: Patch, sd: np.ndarray, h: float, grain: float = 0.18) -> None:
        """Paint a nucleus with outline ``sd`` (signed distance, pixels) and hematoxylin ``h``.

        Adds chromatin grain, a slightly darker nuclear membrane and the eosin counterstain
        every nucleus picks up.
        """
        membrane = np.exp(-np.maximum(sd, 0.0) / 1.5)
        hv = h * (1.0 + grain * self.tex(p) + 0.2 * membrane)
        self.paint(p, coverage(sd), h=hv, e=0.32, n=0.06)

    def tex(self, p: Patch) -> np.ndarray:
        """The fine texture under the patch (a view, std ~1)."""
        return self.texture[p.ys, p.xs]

    def foam(self, spacing: int) -> np.ndarray:
        """``(H, W)`` float32 foam pattern in [0, 1]: 1 on thin bubble walls, 0 in bubbles.

        Bubbles are Voronoi cells of random seeds about ``spacing`` pixels apart; computed
        once per spacing and image.
        """
        if spacing not in self._foam:
            n = int(self.height * self.width / (spacing * spacing))
            seeds = np.ones((self.height, self.width), np.uint8)
            ys = self._rng.integers(0, self.height, n)
            xs = self._rng.integers(0, self.width, n)
            seeds[ys, xs] = 0
            dist, labels = cv2.distanceTransformWithLabels(
                seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
            )
            wall = np.zeros(labels.shape, np.float32)
            wall[:, 1:] += labels[:, 1:] != labels[:, :-1]
            wall[1:, :] += labels[1:, :] != labels[:-1, :]
            wall = cv2.GaussianBlur(np.minimum(wall, 1.0), (0, 0), 0.8) * 1.6
            rim = np.clip(dist / (0.55 * spacing), 0, 1) ** 3
            self._foam[spacing] = np.clip(wall + 0.35 * rim, 0, 1)
        return self._foam[spacing]
