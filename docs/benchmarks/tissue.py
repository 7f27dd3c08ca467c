"""Tissue detection on real data, old detector (Otsu on saturation) against the ink-aware one.

Run from the repository root (needs ``../shared/realdata``)::

    .venv/bin/python docs/benchmarks/tissue.py [--pictures /tmp]

1. histolab's named tiles (``he/histolab-tiles``): a tile is called tissue when the mask
   covers more than ``TILE_TISSUE_FRACTION`` of it; the truth is its name (``tissue-*`` and
   ``*-nuclei-score-*`` hold tissue, ``no-tissue*`` and ``almost-white-*`` do not; the IHC
   and liver crops are not named for this and are listed apart). Each tile is its own
   overview at a nominal µm/px from its level (0.25 µm/px at level 0, as a 40x scan; 4x per
   level), which only scales the µm² constants.
2. The real slides (``slides/*.svs``): windows of ``survey`` (target 0.5 µm/px, tile 512,
   overlap 64) old and new; then the same slide with a blue pen ring and a black marker dot
   drawn on its glass, and with its tissue faded to a pale stain plus that ink.
3. The mask time on a 1600-px overview.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.color import rgb2hsv
from skimage.draw import disk
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from pathodet.predict.config import SlideConfig
from pathodet.predict.plan import plan_slide
from pathodet.predict.reader import Slide, thumbnail
from pathodet.predict.tissue import ink_mask, tissue_mask

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
TILES = REAL / "he" / "histolab-tiles"
SLIDES = REAL / "slides"
TILE_TISSUE_FRACTION = 0.05  # a tile is "tissue" above 5% of its area
TILE, OVERLAP, TARGET_MPP = 512, 64, 0.5


def old_tissue_mask(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """The detector before the ink test (Otsu on HSV saturation floored at 0.07, value
    above 0.15, 0.005 mm² specks and holes), as it was in pathodet.predict.tissue."""
    hsv = rgb2hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    bright = val > 0.15
    thr = 0.07
    if bright.any() and np.ptp(sat[bright]) > 1e-6:
        thr = max(thr, float(threshold_otsu(sat[bright])))
    mask = (sat > thr) & bright
    px_mm2 = (mpp * 1e-3) ** 2
    mask = remove_small_objects(mask, max_size=max(1, int(round(0.005 / px_mm2))))
    return remove_small_holes(mask, max_size=max(1, int(round(0.005 / px_mm2))))


def tile_truth(name: str) -> bool | None:
    """What the file name says: True (tissue), False (none) or None (not named for it)."""
    if name.startswith(("no-tissue", "almost-white")):
        return False
    if name.startswith("tissue-") or "nuclei-score" in name:
        return True
    return None


def tile_mpp(name: str) -> float:
    level = re.search(r"level(\d)", name)
    return 0.25 * 4 ** int(level.group(1)) if level else 1.0


def read_tile(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def tiles_table() -> list[str]:
    rows, conf = [], {k: np.zeros((2, 2), int) for k in ("old", "new")}
    for path in sorted(TILES.glob("*.png")):
        rgb, mpp, truth = read_tile(path), tile_mpp(path.name), tile_truth(path.name)
        fr = {"old": old_tissue_mask(rgb, mpp).mean(), "new": tissue_mask(rgb, mpp).mean()}
        ink = ink_mask(rgb, mpp).mean()
        if truth is not None:
            for k, f in fr.items():
                conf[k][int(truth), int(f > TILE_TISSUE_FRACTION)] += 1
        say = {k: "tissue" if f > TILE_TISSUE_FRACTION else "none" for k, f in fr.items()}
        want = {None: "(not named)", True: "tissue", False: "none"}[truth]
        rows.append(f"| {path.name} | {want} | {fr['old']:.2f} {say['old']} | "
                    f"{fr['new']:.2f} {say['new']} | {ink:.2f} |")  # fmt: skip
    out = ["| tile | name says | old: mask fraction | new: mask fraction | new: ink fraction |",
           "|---|---|---|---|---|", *rows, "",
           f"Confusion (named tiles; tissue when mask > {TILE_TISSUE_FRACTION:.0%}):", "",
           "| detector | tissue called tissue | tissue called none | none called tissue "
           "| none called none |", "|---|---|---|---|---|"]  # fmt: skip
    for k, c in conf.items():
        out.append(f"| {k} | {c[1, 1]} | {c[1, 0]} | {c[0, 1]} | {c[0, 0]} |")
    return out


def draw_ink(rgb: np.ndarray) -> np.ndarray:
    """A blue pen ring (a third of the short side across, stroke a fifth of its radius) and a
    black marker dot inside it, drawn on the emptiest corner of the overview ``rgb``."""
    out = rgb.copy()
    h, w = rgb.shape[:2]
    r_out = min(h, w) / 6
    r_in, r_dot = 0.8 * r_out, r_out / 4
    sat = rgb2hsv(rgb)[..., 1]
    # the corner with the least colour in a box of the ring's size holds the ring
    side = int(2 * r_out) + 2
    corners = [(y, x) for y in (0, max(0, h - side)) for x in (0, max(0, w - side))]
    cy, cx = min(corners, key=lambda c: sat[c[0] : c[0] + side, c[1] : c[1] + side].mean())
    cy, cx = cy + side / 2, cx + side / 2
    ring = np.zeros((h, w), bool)
    ring[disk((cy, cx), r_out, shape=(h, w))] = True
    ring[disk((cy, cx), r_in, shape=(h, w))] = False
    out[ring] = (40, 70, 170)  # blue ballpoint
    out[disk((cy, cx), r_dot, shape=(h, w))] = (25, 25, 30)  # black marker
    return out


def fade(rgb: np.ndarray, keep: float = 0.3) -> np.ndarray:
    """Tissue faded toward white: a pale stain (``keep`` of the optical density)."""
    od = -np.log10((rgb.astype(np.float64) + 1) / 256)
    return np.clip(256 * 10 ** (-od * keep) - 1, 0, 255).astype(np.uint8)


def windows(info, small: np.ndarray, mask_ds: float, detector) -> str:
    mpp = mask_ds * float(np.mean(info.mpp))
    mask = detector(small, mpp)
    if not mask.any():
        return "no tissue (slide dropped)"
    plan = plan_slide(info, mask, mask_ds, TILE, OVERLAP, SlideConfig(target_mpp=TARGET_MPP))
    return f"{len(plan.windows)} of {plan.grid_size} ({mask.mean():.0%} of overview)"


def picture(path: Path, rgb: np.ndarray, mpp: float) -> None:
    """The overview with the new mask's tissue tinted green and its ink tinted blue."""
    mask, ink = tissue_mask(rgb, mpp), ink_mask(rgb, mpp)
    out = rgb.astype(np.float32)
    out[mask] = 0.6 * out[mask] + 0.4 * np.array([0, 200, 0])
    out[ink & ~mask] = 0.5 * out[ink & ~mask] + 0.5 * np.array([0, 0, 255])
    edge = mask ^ np.pad(mask, 1, mode="edge")[2:, 1:-1]
    out[edge] = (0, 120, 0)
    Image.fromarray(out.astype(np.uint8)).save(path)


def slides_table(pictures: Path | None) -> list[str]:
    rows = ["| slide | variant | old windows | new windows |", "|---|---|---|---|"]
    settings = SlideConfig(target_mpp=TARGET_MPP)
    for path in sorted(SLIDES.glob("*.svs")):
        if path.name == "broken.svs":
            continue
        with Slide(path, settings.assumed_mpp) as slide:
            info = slide.info
            mask_ds = max(1.0, settings.tissue.mask_mpp / float(np.mean(info.mpp)))
            small = thumbnail(slide, mask_ds)
            view_ds = max(1.0, max(info.level_dimensions[0]) / 1600)
            view = thumbnail(slide, view_ds)
        variants = {"as scanned": small, "+ pen ring and marker dot": draw_ink(small),
                    "pale stain + pen ring and dot": draw_ink(fade(small))}  # fmt: skip
        for name, img in variants.items():
            old = windows(info, img, mask_ds, old_tissue_mask)
            new = windows(info, img, mask_ds, tissue_mask)
            rows.append(f"| {path.name} | {name} | {old} | {new} |")
        vmpp = view_ds * float(np.mean(info.mpp))
        t0 = time.perf_counter()
        for _ in range(3):
            tissue_mask(view, vmpp)
        ms = (time.perf_counter() - t0) / 3 * 1e3
        rows.append(f"| {path.name} | mask time, {view.shape[1]}x{view.shape[0]} overview "
                    f"| | {ms:.0f} ms |")  # fmt: skip
        if pictures:
            stem = path.stem.split("-")[0]
            picture(pictures / f"tissue_{stem}.png", view, vmpp)
            inked = draw_ink(fade(view))
            picture(pictures / f"tissue_{stem}_pale_ink.png", inked, vmpp)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pictures", type=Path, help="folder for tissue_<slide>.png overlays")
    args = ap.parse_args()
    if not REAL.is_dir():
        raise SystemExit(f"{REAL} is absent: nothing to measure")
    print("\n".join(tiles_table()), "\n")
    print("\n".join(slides_table(args.pictures)))


if __name__ == "__main__":
    main()
