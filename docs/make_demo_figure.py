"""Regenerate docs/demo.png, the README's picture, from a finished ``make demo``.

Usage: ``python docs/make_demo_figure.py [--demo demo-output]``

Left: the report's first overlay (the test AP image richest in SRCs, chosen by the demo,
not by hand): DGHM-C and focal side by side at each model's threshold of one false positive
per NP image. Right: the FROC curves of both models on the whole test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-output"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "demo.png")
    args = parser.parse_args()
    result = json.loads((args.demo / "demo.json").read_text())
    overlay = Image.open(args.demo / "overlays" / "ap-1.png")
    froc = Image.open(args.demo / "froc.png")
    ev = result["evaluation"]
    fig, (a, b) = plt.subplots(
        1, 2, figsize=(13, 5.0), dpi=110, gridspec_kw={"width_ratios": [2.05, 1.05]}
    )
    a.imshow(overlay)
    a.set_axis_off()
    a.set_title(
        "DGHM-C (left) and focal (right) at 1 false positive per normal image\n"
        "yellow: every real SRC, green: detection on an SRC, red: elsewhere",
        fontsize=10,
    )
    b.imshow(froc)
    b.set_axis_off()
    b.set_title(
        f"held-out test split: FROC DGHM-C {ev['dghm']['froc']:.3f}, "
        f"focal {ev['focal']['froc']:.3f}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
