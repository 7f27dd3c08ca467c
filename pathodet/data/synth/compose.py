"""One synthetic DigestPath-like image: tissue, hard negatives and signet ring cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathodet.data.synth import cells, tissue
from pathodet.data.synth.canvas import Canvas
from pathodet.data.synth.stain import Stain, degrade, random_stain, render

SRC_RADIUS = (19.0, 38.0)  # pixels: boxes 30-90 px across with the outline wobble
MIMIC_RADIUS = (17.0, 38.0)
ATTRIBUTES = ("AP", "NP")


@dataclass
class SynthImage:
    """A rendered image and what is in it.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 RGB.
        src_boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2`` (pixels) of EVERY signet ring cell
            drawn (the full truth), tight around the cell.
        in_cluster: ``(N,)`` bool, the cell belongs to a crowded cluster.
        mimic_boxes: ``(M, 4)`` float32 boxes of the hard negatives drawn (goblet cells,
            vacuolated cells with a central nucleus, fat vacuoles); diagnostics only.
    """

    rgb: np.ndarray
    src_boxes: np.ndarray
    in_cluster: np.ndarray
    mimic_boxes: np.ndarray


def _boxes(rows: list) -> np.ndarray:
    return np.asarray([b for b in rows if b is not None], np.float32).reshape(-1, 4)


def _force_one(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """One SRC for an AP image where nothing fitted (small or crowded images): a smaller
    radius if the image demands it, on free tissue if possible, else anywhere."""
    hi = min(SRC_RADIUS[1], (min(canvas.height, canvas.width) - 10) / 2.4)
    radius = (SRC_RADIUS[0], max(SRC_RADIUS[0], hi))
    found = cells.scatter(canvas, rng, 1, radius, spacing=1.0)
    if len(found):
        return found
    r = radius[0]
    x = rng.uniform(r * 1.2 + 4, canvas.width - r * 1.2 - 4)
    y = rng.uniform(r * 1.2 + 4, canvas.height - r * 1.2 - 4)
    return np.array([[x, y, r]])


def synthesize_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    attribute: str,
    stain: Stain | None = None,
    glass: bool = True,
) -> SynthImage:
    """Render one ``height x width`` image (pixels at 40x) of gastrointestinal mucosa.

    ``attribute`` "AP" draws signet ring cells, scattered and in crowded clusters (about
    10-60 in a 2000 x 2000 image, scaled by area with a few at least); "NP" draws none.
    Both get the same hard negatives. Deterministic given the state of ``rng``. ``stain``
    fixes the staining (blocks of one synthetic slide share it); by default it is drawn.
    ``glass=False`` never cuts glass into the image (a slide draws its own).

    Raises:
        ValueError: unknown ``attribute`` or a size below 64 pixels.
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"attribute must be 'AP' or 'NP', got {attribute!r}")
    if height < 64 or width < 64:
        raise ValueError(f"image too small: {height}x{width} (at least 64x64 pixels)")
    area = height * width / 4.0e6
    stain = random_stain(rng) if stain is None else stain
    canvas = Canvas(rng, height, width)
    tissue.stroma(canvas, rng)
    if glass:
        tissue.glass(canvas, rng)
    mimics = tissue.glands(canvas, rng, int(rng.poisson(rng.uniform(2.0, 9.0) * area)))

    # signet ring cells: positions first (so other cells avoid them), drawn last
    src_sets: list[tuple[np.ndarray, bool]] = []
    if attribute == "AP":
        n_clusters = max(1, int(rng.poisson(1.4 * area)))
        for _ in range(n_clusters):
            n = max(3, int(round(rng.uniform(8, 26) * min(1.0, np.sqrt(area)))))
            sheet = cells.grow_cluster(canvas, rng, n, SRC_RADIUS)
            for x, y, r in sheet:
                canvas.occupy(x, y, r)
            src_sets.append((sheet, True))
        n_single = max(2, int(round(rng.uniform(4, 18) * area)))
        src_sets.append((cells.scatter(canvas, rng, n_single, SRC_RADIUS), False))
        if sum(len(group) for group, _ in src_sets) == 0:
            src_sets.append((_force_one(canvas, rng), False))

    # hard negatives shared by AP and NP images
    histio = [cells.scatter(canvas, rng, max(1, int(rng.uniform(3, 12) * area)), MIMIC_RADIUS)]
    if rng.random() < (0.5 if attribute == "NP" else 0.3):  # xanthoma: a foamy-cell sheet
        n = max(3, int(round(rng.uniform(6, 18) * min(1.0, np.sqrt(area)))))
        sheet = cells.grow_cluster(canvas, rng, n, MIMIC_RADIUS)
        for x, y, r in sheet:
            canvas.occupy(x, y, r)
        histio.append(sheet)
    fat = [cells.scatter(canvas, rng, int(rng.uniform(0, 5) * area) + 1, MIMIC_RADIUS)]
    if rng.random() < 0.4:
        sheet = cells.grow_cluster(canvas, rng, int(rng.integers(3, 9)), (20.0, 45.0))
        for x, y, r in sheet:
            canvas.occupy(x, y, r)
        fat.append(sheet)

    tissue.vessels(canvas, rng, int(rng.poisson(3 * area)) + 1)
    tissue.small_cells(canvas, rng, area)

    for group in histio:
        mimics += [cells.draw_histiocyte(canvas, rng, x, y, r) for x, y, r in group]
    for group in fat:
        mimics += [cells.draw_fat(canvas, rng, x, y, r) for x, y, r in group]
    src_boxes, in_cluster = [], []
    for group, clustered in src_sets:
        for x, y, r in group:
            src_boxes.append(cells.draw_src(canvas, rng, x, y, r))
            in_cluster.append(clustered)

    rgb = degrade(render(canvas.H, canvas.E, canvas.N, stain), rng)
    return SynthImage(
        rgb=rgb,
        src_boxes=_boxes(src_boxes),
        in_cluster=np.asarray(in_cluster, dtype=bool),
        mimic_boxes=_boxes(mimics),
    )
