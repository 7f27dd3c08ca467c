"""Background tissue of gastric / colorectal mucosa: stroma, glass, glands, small cells.

Sizes are in pixels at 40x (0.25 um per pixel): lymphocyte nuclei 22-32 px, gland
epithelium 65-100 px tall, collagen fibres a few pixels wide.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pathodet.data.synth.canvas import Canvas, coverage, ellipse_sd, harmonics, smooth_noise
from pathodet.data.synth.cells import draw_goblet


def _oriented_kernel(sigma_along: float, sigma_across: float, theta: float) -> np.ndarray:
    r = int(math.ceil(3 * sigma_along))
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    c, s = math.cos(theta), math.sin(theta)
    u, v = x * c + y * s, y * c - x * s
    k = np.exp(-0.5 * ((u / sigma_along) ** 2 + (v / sigma_across) ** 2))
    k -= k.mean()  # zero DC: texture only
    return (k / np.sqrt((k * k).sum())).astype(np.float32)


def fibre_texture(
    rng: np.random.Generator, angle: np.ndarray, sigma_along: float, sigma_across: float
) -> np.ndarray:
    """``(H, W)`` float32 noise (std ~1) stretched along the local direction ``angle``.

    White noise is filtered with anisotropic Gaussians at six orientations (at half
    resolution, for speed) and the results blended by how close each orientation is to
    the smoothly varying fibre direction, which gives long, gently curving fibres.
    """
    h, w = angle.shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    noise = rng.standard_normal((h2, w2), dtype=np.float32)
    ang = cv2.resize(angle, (w2, h2), interpolation=cv2.INTER_LINEAR)
    acc = np.zeros((h2, w2), np.float32)
    wsum = np.full((h2, w2), 1e-6, np.float32)
    for k in range(6):
        tk = k * math.pi / 6
        filt = cv2.filter2D(
            noise,
            -1,
            _oriented_kernel(sigma_along / 2, sigma_across / 2, tk),
            borderType=cv2.BORDER_REFLECT,
        )
        wk = np.cos(ang - tk) ** 2
        wk = wk**6
        acc += wk * filt
        wsum += wk
    out = cv2.resize(acc / wsum, (w, h), interpolation=cv2.INTER_LINEAR)
    return out / max(float(out[::5, ::5].std()), 1e-6)


def stroma(canvas: Canvas, rng: np.random.Generator) -> None:
    """Fill the canvas with eosinophilic, fibrous lamina propria / submucosa."""
    h, w = canvas.height, canvas.width
    canvas.angle[...] = rng.uniform(0, math.pi) + 0.9 * smooth_noise(rng, h, w, 350)
    fine = fibre_texture(rng, canvas.angle, rng.uniform(18, 30), rng.uniform(1.0, 1.5))
    bundles = fibre_texture(rng, canvas.angle, rng.uniform(40, 70), rng.uniform(5, 9))
    dens = smooth_noise(rng, h, w, rng.uniform(150, 400))
    looseness = rng.uniform(-0.4, 0.8)  # < 0: dense collagen, > 0: loose oedematous stroma
    dense = 1.0 / (1.0 + np.exp(-(2.0 * bundles + 0.6 * dens - looseness)))
    fibres = np.clip(0.5 + 0.14 * fine + 0.06 * canvas.texture, 0, 1)
    base = rng.uniform(0.3, 0.45)
    canvas.E[...] = base * (0.55 + 0.6 * fibres) * (0.4 + 0.6 * dense) * (1 + 0.08 * canvas.texture)
    canvas.H[...] = (0.02 + 0.03 * dense) * (1 + 0.2 * canvas.texture)
    canvas.N[...] = 0.025 + 0.02 * dense


def glass(canvas: Canvas, rng: np.random.Generator) -> None:
    """Cut out white background (no tissue) at the borders of the section, sometimes."""
    if rng.random() < 0.45:
        return
    h, w = canvas.height, canvas.width
    field = smooth_noise(rng, h, w, max(h, w) * rng.uniform(0.35, 0.7))
    field += 0.06 * smooth_noise(rng, h, w, 70)
    thr = float(np.quantile(field[::8, ::8], rng.uniform(0.03, 0.22)))
    alpha = np.clip((field - thr) * 8.0, 0, 1).astype(np.float32)
    edge = np.clip(1 - np.abs(field - thr - 0.15) * 6, 0, 1)  # denser eosin at the cut edge
    canvas.E *= alpha * (1 + 0.6 * edge)
    canvas.H *= alpha
    canvas.N *= alpha
    p = canvas.patch(w / 2, h / 2, max(h, w))
    canvas.occupy_mask(p, alpha < 0.6)


def _outline(
    cx: float, cy: float, a: float, b: float, ang: float, wobble: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points equally spaced (arc length) on a wobbly ellipse and their inward normals."""
    phi = np.linspace(0, 2 * np.pi, 721)[:-1]
    r = np.ones_like(phi)
    for k, amp, ph in wobble:
        r += amp * np.cos(k * phi + ph)
    u, v = a * r * np.cos(phi), b * r * np.sin(phi)
    c, s = math.cos(ang), math.sin(ang)
    pts = np.stack([cx + u * c - v * s, cy + u * s + v * c], axis=1)
    seg = np.linalg.norm(np.diff(pts, axis=0, append=pts[:1]), axis=1)
    cum = np.concatenate([[0], np.cumsum(seg)])
    targets = (np.arange(n) + 0.5) / n * cum[-1]
    idx = np.searchsorted(cum, targets, side="right") - 1
    tangent = pts[(idx + 1) % len(pts)] - pts[idx - 1]
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    inward = np.sign(((np.array([cx, cy]) - pts[idx]) * normal).sum(1, keepdims=True))
    return pts[idx], normal * np.where(inward == 0, 1, inward)


def draw_gland(
    canvas: Canvas,
    rng: np.random.Generator,
    cx: float,
    cy: float,
    a: float,
    b: float,
    ang: float,
    goblet_rate: float,
) -> list[tuple[float, float, float, float]]:
    """One gland cut across: lumen, columnar epithelium with basal nuclei, goblet cells.

    Returns the boxes ``(x1, y1, x2, y2)`` (pixels) of the goblet cells drawn completely
    inside the image (hard negatives).
    """
    wobble = harmonics(rng, 0.25, 6)
    p = canvas.patch(cx, cy, max(a, b) * 1.4 + 12)
    if p is None:
        return []
    sd = ellipse_sd(p.dx, p.dy, a, b, ang, wobble)
    t = float(rng.uniform(65, 100)) * (1 + 0.1 * rng.standard_normal())
    t = min(t, 0.8 * min(a, b))
    if rng.random() < 0.5:  # retraction cleft: a thin white gap around part of the gland
        gap = rng.uniform(3, 12)
        arc = np.cos(np.arctan2(p.dy, p.dx) - rng.uniform(0, 2 * np.pi)) > rng.uniform(-0.6, 0.4)
        cleft = coverage(sd + gap) * (1 - coverage(sd)) * arc
        canvas.paint(p, cleft.astype(np.float32), 0.0, 0.0, 0.0)
    body = coverage(sd)
    inside = (sd > 0).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    tex = canvas.tex(p)
    # amphophilic columnar cytoplasm, a thin eosinophilic basement membrane, pale apex
    e_cyt = rng.uniform(0.22, 0.38)
    basal = np.exp(-dist / 2.5)
    apical = np.clip((dist - 0.6 * t) / (0.4 * t), 0, 1) * rng.uniform(0.2, 0.6)
    canvas.paint(
        p,
        body,
        h=(0.13 + 0.05 * tex) * (1 - 0.6 * apical),
        e=e_cyt * (1 + 0.15 * tex + 0.8 * basal) * (1 - 0.7 * apical),
        n=0.03,
    )
    lumen = np.clip(dist - t + 0.5, 0, 1).astype(np.float32)
    mucus = rng.uniform(0.0, 0.06) * np.clip(1 + 0.8 * tex, 0, None)
    canvas.paint(p, lumen, h=mucus, e=mucus * 0.3, n=0.005)
    canvas.occupy_mask(p, sd > -8)

    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))
    n_cells = max(8, int(perimeter / rng.uniform(12, 16)))
    pts, nrm = _outline(cx, cy, a, b, ang, wobble, n_cells)
    gap = int(math.ceil(0.7 * t * n_cells / perimeter)) + 1  # goblets about a cup apart
    chosen: list[int] = []
    for j in np.flatnonzero(rng.random(n_cells) < goblet_rate * gap / 2):
        if not chosen or (j - chosen[-1] >= gap and j + n_cells - chosen[0] >= gap):
            chosen.append(int(j))
    goblet = np.zeros(n_cells, dtype=bool)
    goblet[chosen] = True
    boxes = []
    h_nuc = rng.uniform(1.3, 1.8)
    for j in range(n_cells):
        if goblet[j]:
            continue
        off = rng.uniform(10, 18) + rng.uniform(0, 0.2) * t
        nx, ny = pts[j] + nrm[j] * off
        q = canvas.patch(nx, ny, 24)
        if q is None:
            continue
        nang = math.atan2(nrm[j, 1], nrm[j, 0]) + rng.normal(0, 0.12)
        sdn = ellipse_sd(q.dx, q.dy, rng.uniform(12, 19), rng.uniform(5, 7.5), nang)
        canvas.nucleus(q, sdn, h_nuc * rng.uniform(0.85, 1.15))
    for j in np.flatnonzero(goblet):
        box = draw_goblet(canvas, rng, pts[j], nrm[j], t)
        if box is not None:
            boxes.append(box)
    return boxes


def glands(
    canvas: Canvas, rng: np.random.Generator, count: int
) -> list[tuple[float, float, float, float]]:
    """Place up to ``count`` glands on free tissue; returns the goblet-cell boxes."""
    boxes: list[tuple[float, float, float, float]] = []
    intestinal = rng.random() < 0.7
    for _ in range(count * 6):
        if count <= 0:
            break
        a = rng.uniform(110, 260)
        b = a * rng.uniform(0.45, 0.95)
        if rng.random() < 0.3:  # a crypt cut along its length
            a, b = rng.uniform(250, 480), rng.uniform(100, 150)
        ang = rng.uniform(0, math.pi)
        cx = rng.uniform(-0.3 * a, canvas.width + 0.3 * a)
        cy = rng.uniform(-0.3 * a, canvas.height + 0.3 * a)
        axis = np.linspace(-1, 1, 5)[:, None] * (a - b) * np.array([math.cos(ang), math.sin(ang)])
        if not all(canvas.is_free(cx + dx, cy + dy, b * 0.95) for dx, dy in axis):
            continue
        rate = rng.uniform(0.12, 0.3) if intestinal else rng.uniform(0.0, 0.06)
        boxes += draw_gland(canvas, rng, cx, cy, a, b, ang, rate)
        count -= 1
    return boxes


def _free_points(
    canvas: Canvas, rng: np.random.Generator, n: int, density: np.ndarray | None = None
) -> np.ndarray:
    """Up to ``n`` random ``(x, y)`` points on free tissue, thinned by ``density`` in [0, 1]."""
    xs = rng.uniform(0, canvas.width, 3 * n)
    ys = rng.uniform(0, canvas.height, 3 * n)
    keep = canvas.free_at(xs, ys)
    if density is not None:
        keep &= rng.random(xs.size) < density[ys.astype(int), xs.astype(int)]
    return np.stack([xs[keep], ys[keep]], axis=1)[:n]


def lymphocyte(canvas: Canvas, rng: np.random.Generator, x: float, y: float) -> None:
    """A small dark round nucleus (11-16 px radius) with scant cytoplasm."""
    r = rng.uniform(11, 16)
    p = canvas.patch(x, y, r + 3)
    if p is None:
        return
    sd = ellipse_sd(
        p.dx, p.dy, r, r * rng.uniform(0.85, 1.0), rng.uniform(0, 3.14), harmonics(rng, 0.05)
    )
    canvas.nucleus(p, sd, rng.uniform(1.6, 2.3))


def small_cells(canvas: Canvas, rng: np.random.Generator, area: float) -> None:
    """Lymphocytes (scattered, in aggregates), plasma cells, eosinophils and fibroblasts.

    ``area`` is the image area in units of a 2000 x 2000 image.
    """
    h, w = canvas.height, canvas.width
    density = np.clip(0.4 + 0.5 * smooth_noise(rng, h, w, 300), 0.03, 1).astype(np.float32)
    for x, y in _free_points(canvas, rng, int(area * rng.uniform(150, 800)), density):
        lymphocyte(canvas, rng, x, y)
    for _ in range(rng.poisson(1.2 * area) + (rng.random() < 0.3)):  # lymphoid aggregates
        centre = _free_points(canvas, rng, 1)
        if len(centre) == 0:
            continue
        spread = rng.uniform(35, 90)
        pts = centre[0] + rng.normal(0, spread, (int(rng.uniform(20, 80)), 2))
        for x, y in pts[canvas.free_at(pts[:, 0], pts[:, 1])]:
            lymphocyte(canvas, rng, x, y)
    for x, y in _free_points(canvas, rng, int(area * rng.uniform(40, 200)), density):
        r = rng.uniform(12, 16)  # plasma cell: amphophilic cytoplasm, eccentric nucleus
        p = canvas.patch(x, y, r + 3)
        ang = rng.uniform(0, 2 * np.pi)
        body = coverage(ellipse_sd(p.dx, p.dy, r, 0.8 * r, ang, harmonics(rng, 0.08)))
        canvas.paint(p, body, h=0.75, e=0.75, n=0.08)
        rn = rng.uniform(7.5, 9.5)
        ox, oy = (r - rn - 3) * math.cos(ang), (r - rn - 3) * math.sin(ang)
        canvas.nucleus(p, ellipse_sd(p.dx - ox, p.dy - oy, rn, rn, 0.0), 1.7, grain=0.35)
    for x, y in _free_points(canvas, rng, int(area * rng.uniform(10, 90)), density):
        r = rng.uniform(12, 15)  # eosinophil: bright granular cytoplasm, bilobed nucleus
        p = canvas.patch(x, y, r + 3)
        body = coverage(ellipse_sd(p.dx, p.dy, r, 0.85 * r, rng.uniform(0, 3.14)))
        canvas.paint(p, body, h=0.08, e=0.85 * (1 + 0.3 * canvas.tex(p)), n=0.1)
        t = rng.uniform(0, np.pi)
        for sign in (-1, 1):
            ox, oy = sign * 4.5 * math.cos(t), sign * 4.5 * math.sin(t)
            sdn = ellipse_sd(p.dx - ox, p.dy - oy, rng.uniform(4.5, 6), 4.0, t + 1.2 * sign)
            canvas.nucleus(p, sdn, 1.7)
    for x, y in _free_points(canvas, rng, int(area * rng.uniform(80, 250))):
        a = rng.uniform(15, 30)  # fibroblast: spindle nucleus along the fibres
        p = canvas.patch(x, y, a + 3)
        ang = float(canvas.angle[int(y), int(x)]) + rng.normal(0, 0.15)
        sd = ellipse_sd(p.dx, p.dy, a, rng.uniform(3, 5), ang, harmonics(rng, 0.1), power=1.4)
        canvas.nucleus(p, sd, rng.uniform(1.0, 1.6))


def vessels(canvas: Canvas, rng: np.random.Generator, count: int) -> None:
    """Capillaries: thin eosinophilic wall, flat endothelial nuclei, red blood cells."""
    for x, y in _free_points(canvas, rng, count * 5)[:count]:
        a = rng.uniform(20, 55)
        if not canvas.is_free(x, y, a + 6):
            continue
        b = a * rng.uniform(0.45, 1.0)
        ang = rng.uniform(0, math.pi)
        p = canvas.patch(x, y, a + 10)
        sd = ellipse_sd(p.dx, p.dy, a, b, ang, harmonics(rng, 0.15))
        canvas.paint(p, coverage(sd + 4), h=0.15, e=0.7, n=0.05)
        canvas.paint(p, coverage(sd), 0.0, 0.0, 0.0)
        for _ in range(int(rng.integers(0, max(1, int(a * b / 150))))):
            rx, ry = rng.uniform(-0.7, 0.7) * a, rng.uniform(-0.7, 0.7) * b
            q = canvas.patch(
                x + rx * math.cos(ang) - ry * math.sin(ang),
                y + rx * math.sin(ang) + ry * math.cos(ang),
                16,
            )
            rr = rng.uniform(11, 14)
            if q is None:
                continue
            d = np.sqrt(q.dx**2 + q.dy**2)
            canvas.paint(
                q,
                coverage(rr - d),
                h=0.02,
                e=1.2 * (1 - 0.25 * np.exp(-((d / (0.45 * rr)) ** 2))),
                n=0.3,
            )
        canvas.occupy(x, y, a + 6)
