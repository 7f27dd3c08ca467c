"""Slide-level results: SRC density over the tissue, the summary, and the pictures.

Density is counted on a grid of ``density_um`` x ``density_um`` cells (250 µm by default,
the size of a high-power field's quarter): a cell's density is the number of detections
scoring at least ``count_threshold`` whose centre falls in it, divided by the tissue area
in the cell (mm^2, from the tissue mask). Cells with less than a quarter of their area on
tissue have no density (a cell with a sliver of tissue and one cell on it would read
as a hot spot).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pathodet.core.io import atomic_write_bytes, atomic_write_image
from pathodet.predict.plan import SlidePlan

MIN_TISSUE_FRACTION = 0.25
TOP_REGIONS = 5


@dataclass
class Density:
    """SRC density on a grid of level-0 cells.

    Attributes:
        cell: cell side, level-0 pixels.
        counts: ``(gh, gw)`` int detections (score >= threshold) per cell.
        tissue_mm2: ``(gh, gw)`` float tissue area per cell, mm^2.
        per_mm2: ``(gh, gw)`` float SRC per mm^2 (NaN where the cell is mostly glass).
    """

    cell: float
    counts: np.ndarray
    tissue_mm2: np.ndarray
    per_mm2: np.ndarray


def density_grid(
    boxes: np.ndarray, scores: np.ndarray, plan: SlidePlan, mpp: float, level0: tuple[int, int],
    count_threshold: float, density_um: float,
) -> Density:  # fmt: skip
    """Counts, tissue area and density per cell; ``boxes`` ``(K, 4)`` level 0, ``mpp`` µm/px."""
    w0, h0 = level0
    cell = density_um / mpp
    gw, gh = max(1, int(np.ceil(w0 / cell))), max(1, int(np.ceil(h0 / cell)))
    counts = np.zeros((gh, gw), np.int64)
    b = boxes[scores >= count_threshold]
    if len(b):
        ix = np.clip(((b[:, 0] + b[:, 2]) / 2 / cell).astype(np.int64), 0, gw - 1)
        iy = np.clip(((b[:, 1] + b[:, 3]) / 2 / cell).astype(np.int64), 0, gh - 1)
        np.add.at(counts, (iy, ix), 1)
    my, mx = np.nonzero(plan.mask)
    px_mm2 = (plan.mask_downsample * mpp * 1e-3) ** 2
    tissue = np.zeros((gh, gw), np.float64)
    if len(mx):
        ix = np.clip(((mx + 0.5) * plan.mask_downsample / cell).astype(np.int64), 0, gw - 1)
        iy = np.clip(((my + 0.5) * plan.mask_downsample / cell).astype(np.int64), 0, gh - 1)
        np.add.at(tissue, (iy, ix), px_mm2)
    cell_mm2 = (density_um * 1e-3) ** 2
    ok = tissue >= MIN_TISSUE_FRACTION * cell_mm2
    per = np.full((gh, gw), np.nan)
    per[ok] = counts[ok] / tissue[ok]
    return Density(cell, counts, tissue, per)


def slide_summary(
    boxes: np.ndarray, scores: np.ndarray, plan: SlidePlan, density: Density, mpp: float,
    count_threshold: float,
) -> dict:  # fmt: skip
    """Tissue area, SRC count and density, and the densest regions (level-0 boxes)."""
    px_mm2 = (plan.mask_downsample * mpp * 1e-3) ** 2
    tissue_mm2 = float(plan.mask.sum() * px_mm2)
    count = int((scores >= count_threshold).sum())
    per = np.where(np.isnan(density.per_mm2), -1.0, density.per_mm2)
    order = np.argsort(-per, axis=None, kind="stable")
    top = []
    for flat in order[:TOP_REGIONS]:
        iy, ix = np.unravel_index(flat, per.shape)
        if density.counts[iy, ix] == 0 or per[iy, ix] < 0:
            break
        c = density.cell
        top.append({
            "x": round(ix * c, 1), "y": round(iy * c, 1), "width": round(c, 1), "height": round(c, 1),
            "src_count": int(density.counts[iy, ix]),
            "tissue_mm2": round(float(density.tissue_mm2[iy, ix]), 5),
            "src_per_mm2": round(float(density.per_mm2[iy, ix]), 2),
        })  # fmt: skip
    return {
        "tissue_area_mm2": round(tissue_mm2, 5),
        "src_count": count,
        "src_per_mm2": round(count / tissue_mm2, 3) if tissue_mm2 > 0 else None,
        "count_threshold": count_threshold,
        "detections": int(len(scores)),
        "top_regions": top,
    }


def tissue_png(path: Path, thumb: np.ndarray, plan: SlidePlan) -> None:
    """The overview with the tissue tinted and outlined (green) and the windows read (blue).

    ``thumb`` is any overview of the whole slide (its size sets the picture's).
    """
    h, w = thumb.shape[:2]
    img = thumb.copy()
    mask = cv2.resize(plan.mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    tint = img[mask].astype(np.float32) * 0.8 + np.array([0, 50, 0], np.float32)
    img[mask] = np.clip(tint, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, (0, 130, 0), 2)
    s = w / plan.size0[0]  # picture pixels per level-0 pixel
    for i in range(len(plan.windows)):
        x1, y1, x2, y2 = (v * s for v in plan.footprint(i))
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (40, 70, 220), 1)
    atomic_write_image(path, img)


def heatmap_png(
    path: Path, thumb: np.ndarray, density: Density, plan: SlidePlan, title: str
) -> None:
    """The overview under the SRC density (SRC per mm^2, colour bar), glass left clear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = thumb.shape[:2]
    scale = density.cell * w / plan.size0[0]  # picture pixels per density cell
    extent = (0, density.per_mm2.shape[1] * scale, density.per_mm2.shape[0] * scale, 0)
    aspect = h / max(w, 1)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 8 * aspect)), dpi=110)
    ax.imshow(thumb, extent=(0, w, h, 0))
    masked = np.ma.masked_invalid(density.per_mm2)
    vmax = (
        max(1.0, float(np.nanmax(density.per_mm2))) if np.isfinite(density.per_mm2).any() else 1.0
    )
    im = ax.imshow(masked, extent=extent, cmap="YlOrRd", alpha=0.55, vmin=0, vmax=vmax,
                   interpolation="nearest")  # fmt: skip
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.02)
    bar.set_label("SRC per mm² of tissue")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
