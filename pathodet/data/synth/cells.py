"""Signet ring cells and the hard negatives that look like them.

All four share the same pale, foamy mucin-like content so that colour alone cannot tell
them apart; they differ in where the nucleus is and what shape it has:

* signet ring cell (SRC): round cell, a mucin vacuole fills most of it and pushes a dark
  crescent-shaped nucleus against the membrane;
* goblet cell: mucin cup inside gland epithelium, a small flattened nucleus at its base;
* vacuolated cell / foamy histiocyte: foamy cytoplasm around a *central* round nucleus;
* fat vacuole: empty (white) round space with a thin rim and no nucleus.

Boxes are ``(x1, y1, x2, y2)`` in pixels, tight around the cell (coverage >= 0.5).
"""

from __future__ import annotations

import math

import numpy as np

from pathodet.data.synth.canvas import Canvas, Patch, coverage, ellipse_sd, harmonics

Box = tuple[float, float, float, float]


def _box(p: Patch, alpha: np.ndarray) -> Box | None:
    rows = np.flatnonzero((alpha >= 0.5).any(axis=1))
    cols = np.flatnonzero((alpha >= 0.5).any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return None
    return (
        float(p.xs.start + cols[0]),
        float(p.ys.start + rows[0]),
        float(p.xs.start + cols[-1] + 1),
        float(p.ys.start + rows[-1] + 1),
    )


def _mucin(canvas: Canvas, p: Patch, rng: np.random.Generator, spacing: int) -> tuple:
    """Pale blue-grey, slightly bubbly mucin concentrations over the patch."""
    foam = canvas.foam(spacing)[p.ys, p.xs]
    tex = canvas.tex(p)
    hm, em = rng.uniform(0.09, 0.2), rng.uniform(0.03, 0.08)
    grain = 0.75 + 0.45 * foam + 0.1 * tex
    return hm * grain, em * grain, rng.uniform(0.02, 0.05) * grain


def draw_src(canvas: Canvas, rng: np.random.Generator, cx: float, cy: float, r: float) -> Box:
    """A signet ring cell of radius ``r`` pixels centred at ``(cx, cy)``; returns its box."""
    p = canvas.patch(cx, cy, r * 1.15 + 3)
    ang = rng.uniform(0, math.pi)
    aspect = rng.uniform(0.88, 1.0)
    wob = harmonics(rng, 0.1)
    sd_cell = ellipse_sd(p.dx, p.dy, r, r * aspect, ang, wob)
    rim = rng.uniform(1.5, 3.0)
    inner = coverage(sd_cell - rim)
    # the vacuole is a circle shifted away from the nucleus; what is left of the cell
    # interior on the nucleus side is the crescent ("signet ring")
    phi = rng.uniform(0, 2 * math.pi)
    ux, uy = math.cos(phi), math.sin(phi)
    ri = (r - rim) * (1 + 0.5 * (1 - aspect))
    thick = rng.uniform(0.28, 0.45) * r
    rv = ri * rng.uniform(1.0, 1.07)
    d = thick + rv - ri
    vac = coverage(rv - np.sqrt((p.dx + ux * d) ** 2 + (p.dy + uy * d) ** 2))
    cell = coverage(sd_cell)
    tex = canvas.tex(p)
    canvas.paint(p, cell, h=0.3 + 0.05 * tex, e=rng.uniform(0.35, 0.55), n=0.05)
    hm, em, nm = _mucin(canvas, p, rng, int(rng.integers(8, 12)))
    canvas.paint(p, inner * vac, h=hm, e=em, n=nm)
    nuc = inner * (1 - vac)
    if rng.random() < 0.3:
        # variant: a plump oval nucleus squeezed against the membrane, indenting the vacuole
        ln, wn = rng.uniform(0.35, 0.5) * r, rng.uniform(0.16, 0.24) * r
        off = ri - wn * rng.uniform(0.8, 1.0)
        sdn = ellipse_sd(p.dx - ux * off, p.dy - uy * off, ln, wn, phi + math.pi / 2)
        nuc = np.maximum(nuc * rng.uniform(0.0, 0.6), coverage(sdn) * inner)
    membrane = np.exp(-4.0 * nuc)  # a little darker where the nucleus thins out (its edges)
    hv = rng.uniform(1.6, 2.3) * (1 + 0.15 * tex + 0.15 * membrane)
    canvas.paint(p, nuc, h=hv, e=0.35, n=0.06)
    canvas.occupy(cx, cy, r)
    box = _box(p, cell)
    assert box is not None
    return box


def draw_histiocyte(
    canvas: Canvas, rng: np.random.Generator, cx: float, cy: float, r: float
) -> Box | None:
    """A vacuolated cell (foamy histiocyte) with a central round nucleus; returns its box."""
    p = canvas.patch(cx, cy, r * 1.2 + 3)
    sd = ellipse_sd(
        p.dx, p.dy, r, r * rng.uniform(0.75, 1.0), rng.uniform(0, 3.14), harmonics(rng, 0.22)
    )
    cell = coverage(sd)
    rim = coverage(sd - rng.uniform(1.2, 2.5))
    tex = canvas.tex(p)
    canvas.paint(p, cell, h=0.25 + 0.05 * tex, e=rng.uniform(0.3, 0.5), n=0.05)
    hm, em, nm = _mucin(canvas, p, rng, int(rng.integers(6, 10)))
    canvas.paint(p, rim, h=hm, e=em * 1.3, n=nm)
    rn = r * rng.uniform(0.24, 0.36)
    off = rng.uniform(0, 0.12) * r
    t = rng.uniform(0, 2 * math.pi)
    sdn = ellipse_sd(
        p.dx - off * math.cos(t),
        p.dy - off * math.sin(t),
        rn,
        rn * rng.uniform(0.75, 1.0),
        rng.uniform(0, 3.14),
        harmonics(rng, 0.12),
    )
    canvas.nucleus(p, sdn, rng.uniform(1.0, 1.6))
    canvas.occupy(cx, cy, r)
    return _box(p, cell)


def draw_fat(
    canvas: Canvas, rng: np.random.Generator, cx: float, cy: float, r: float
) -> Box | None:
    """An empty fat vacuole: white inside, thin eosinophilic rim, no nucleus."""
    p = canvas.patch(cx, cy, r * 1.2 + 3)
    sd = ellipse_sd(
        p.dx, p.dy, r, r * rng.uniform(0.8, 1.0), rng.uniform(0, 3.14), harmonics(rng, 0.08)
    )
    cell = coverage(sd)
    canvas.paint(p, cell, h=0.1, e=rng.uniform(0.45, 0.7), n=0.04)
    canvas.paint(p, coverage(sd - rng.uniform(1.2, 2.5)), 0.0, 0.0, 0.0)
    canvas.occupy(cx, cy, r)
    return _box(p, cell)


def draw_goblet(
    canvas: Canvas, rng: np.random.Generator, base: np.ndarray, inward: np.ndarray, t: float
) -> Box | None:
    """A goblet cell in gland epithelium of height ``t`` pixels.

    ``base`` is the ``(x, y)`` point of the basement membrane under the cell and ``inward``
    the unit normal towards the lumen. The mucin cup sits towards the lumen; a small
    flattened nucleus lies at its base (not wrapped around it). Returns the box, or None
    when the cell is not entirely inside the image.
    """
    rv = min(rng.uniform(0.22, 0.32) * t, 36.0)
    nx, ny = float(inward[0]), float(inward[1])
    ang = math.atan2(ny, nx)
    vx, vy = base + inward * max(0.2 * t + rv, t - 0.85 * rv)  # cup opens at the apex
    p = canvas.patch(vx, vy, rv * 1.5 + 10)
    if p is None:
        return None
    sd_v = ellipse_sd(p.dx, p.dy, rv * rng.uniform(1.0, 1.2), rv, ang, harmonics(rng, 0.06))
    cup = coverage(sd_v)
    theca = coverage(sd_v + rng.uniform(1.5, 2.5))
    canvas.paint(p, theca, h=0.25, e=0.4, n=0.05)
    hm, em, nm = _mucin(canvas, p, rng, int(rng.integers(8, 12)))
    canvas.paint(p, cup, h=hm, e=em, n=nm)
    below = min(rv * 1.05 + 4, float(np.hypot(vx - base[0], vy - base[1])) - 5)
    ox, oy = -nx * below, -ny * below
    sdn = ellipse_sd(
        p.dx - ox, p.dy - oy, rng.uniform(4, 6), rv * rng.uniform(0.45, 0.65), ang, power=1.6
    )
    nuc = coverage(sdn)
    canvas.nucleus(p, sdn, rng.uniform(1.4, 2.0))
    box = _box(p, np.maximum(theca, nuc))
    if box is None or box[0] <= 0 or box[1] <= 0:
        return None
    if box[2] >= canvas.width or box[3] >= canvas.height:
        return None
    return box


def grow_cluster(
    canvas: Canvas,
    rng: np.random.Generator,
    n: int,
    radius: tuple[float, float],
    margin: float = 4.0,
) -> np.ndarray:
    """Positions for a crowded sheet of ``n`` touching round cells on free tissue.

    Cells are added one by one next to an existing cell (centre distance 0.9-1.02 times
    the sum of radii), choosing among candidates the one closest to the seed, which gives
    a compact sheet. Returns ``(k, 3)`` rows ``x, y, r`` (pixels), ``k <= n``; nothing is
    drawn or occupied yet.
    """
    lo, hi = radius
    for _ in range(30):
        r0 = rng.uniform(lo, hi)
        x0, y0 = rng.uniform(0, canvas.width), rng.uniform(0, canvas.height)
        if canvas.inside(x0, y0, r0 * 1.2 + margin) and canvas.is_free(x0, y0, r0):
            break
    else:
        return np.zeros((0, 3))
    cells = [(x0, y0, r0)]
    for _ in range(n * 20):
        if len(cells) >= n:
            break
        arr = np.asarray(cells)
        k = 24
        base = arr[rng.integers(0, len(arr), k)]
        r = rng.uniform(lo, hi, k)
        t = rng.uniform(0, 2 * np.pi, k)
        dist = (base[:, 2] + r) * rng.uniform(0.9, 1.02, k)
        x, y = base[:, 0] + dist * np.cos(t), base[:, 1] + dist * np.sin(t)
        gap = np.hypot(x[:, None] - arr[None, :, 0], y[:, None] - arr[None, :, 1])
        ok = (gap >= 0.88 * (r[:, None] + arr[None, :, 2])).all(axis=1)
        ok &= (x > r * 1.2 + margin) & (x < canvas.width - r * 1.2 - margin)
        ok &= (y > r * 1.2 + margin) & (y < canvas.height - r * 1.2 - margin)
        ok &= canvas.free_at(x, y)
        ok &= canvas.free_at(x + 0.7 * r, y) & canvas.free_at(x - 0.7 * r, y)
        ok &= canvas.free_at(x, y + 0.7 * r) & canvas.free_at(x, y - 0.7 * r)
        if not ok.any():
            continue
        idx = np.flatnonzero(ok)
        best = idx[np.argmin(np.hypot(x[idx] - x0, y[idx] - y0))]
        cells.append((x[best], y[best], r[best]))
    return np.asarray(cells, dtype=np.float64)


def scatter(
    canvas: Canvas,
    rng: np.random.Generator,
    n: int,
    radius: tuple[float, float],
    margin: float = 4.0,
    spacing: float = 1.3,
) -> np.ndarray:
    """Up to ``n`` single cells on free tissue, ``(k, 3)`` rows ``x, y, r`` (pixels).

    Each accepted cell is occupied immediately (``spacing`` times its radius) so later
    ones keep apart.
    """
    out = []
    for _ in range(n * 40):
        if len(out) >= n:
            break
        r = rng.uniform(*radius)
        x, y = rng.uniform(0, canvas.width), rng.uniform(0, canvas.height)
        if canvas.inside(x, y, r * 1.2 + margin) and canvas.is_free(x, y, r * spacing):
            out.append((x, y, r))
            canvas.occupy(x, y, r * spacing)
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)
