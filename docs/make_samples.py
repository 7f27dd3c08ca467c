"""Regenerate docs/sample-ap.png and docs/sample-np.png from the synthetic generator.

Usage: ``python docs/make_samples.py [--seed N] [--size PX] [--mimics]``

The AP sample shows every signet ring cell drawn (yellow: not annotated) and the ones a
simulated pathologist annotated (green), like figure 1 of the DGHM paper; ``--mimics``
also outlines the hard negatives (cyan). The NP sample has no signet ring cell at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_image
from pathodet.data.overlay import draw_boxes
from pathodet.data.synth import choose_annotated, jpeg_roundtrip, synthesize_image

YELLOW, GREEN, CYAN = (255, 230, 0), (0, 200, 60), (0, 220, 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--rate", type=float, default=0.5, help="annotation rate")
    parser.add_argument("--mimics", action="store_true", help="outline hard negatives too")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()

    rng = np.random.default_rng([args.seed, 1])
    ap = synthesize_image(rng, args.size, args.size, "AP")
    kept = choose_annotated(rng, ap.in_cluster, args.rate)
    rgb = jpeg_roundtrip(ap.rgb, 90)
    if args.mimics:
        rgb = draw_boxes(rgb, ap.mimic_boxes, CYAN, width=2)
    rgb = draw_boxes(rgb, ap.src_boxes[~kept], YELLOW, width=3)
    rgb = draw_boxes(rgb, ap.src_boxes[kept], GREEN, width=3)
    atomic_write_image(args.out / "sample-ap.png", rgb)

    rng = np.random.default_rng([args.seed, 0])
    np_image = synthesize_image(rng, args.size, args.size, "NP")
    rgb = jpeg_roundtrip(np_image.rgb, 90)
    if args.mimics:
        rgb = draw_boxes(rgb, np_image.mimic_boxes, CYAN, width=2)
    atomic_write_image(args.out / "sample-np.png", rgb)
    print(
        f"sample-ap.png: {len(ap.src_boxes)} SRC ({int(kept.sum())} annotated, "
        f"{int(ap.in_cluster.sum())} in clusters), {len(ap.mimic_boxes)} hard negatives; "
        f"sample-np.png: {len(np_image.mimic_boxes)} hard negatives"
    )


if __name__ == "__main__":
    main()
