"""Run ``pathodet predict`` on the real slides of ../shared/realdata/slides into docs/.

    .venv/bin/python docs/make_real_slides.py CHECKPOINT [--out /tmp/real-slides]

Predicts every file of ``../shared/realdata/slides`` (two Aperio SVS, one DICOM instance and
``broken.svs``) through the library entry :func:`pathodet.predict.pipeline.predict`, then
copies into ``docs/examples/slides-real/``: ``slides.json``, each slide's ``summary.json``,
its ``tissue.png`` and ``heatmap.png`` as JPEG, and for each readable slide ``detections.jpg``: the
full-resolution region around its densest detections with the boxes at score >= the count
threshold drawn (red), as a pathologist would look at them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pathodet.data.overlay import draw_boxes
from pathodet.data.predictions import read_predictions
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import predict
from pathodet.predict.reader import Slide

ROOT = Path(__file__).resolve().parents[1]
SLIDES = ROOT.parent / "shared" / "realdata" / "slides"
DOCS = ROOT / "docs" / "examples" / "slides-real"
CROP = 1024  # level-0 pixels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/real-slides"))
    args = parser.parse_args()
    inputs = sorted(p for p in SLIDES.iterdir() if p.suffix in (".svs", ".dcm"))
    summary = predict(PredictConfig(), args.checkpoint, inputs, args.out, log=print)
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.out / "slides.json", DOCS / "slides.json")
    for rec in summary["slides"]["slides"]:
        if rec["status"] == "failed":
            continue
        name = Path(rec["slide"]).stem
        src, dst = Path(rec["folder"]), DOCS / name
        dst.mkdir(exist_ok=True)
        shutil.copy(src / "summary.json", dst / "summary.json")
        for f in ("tissue", "heatmap"):  # as JPEG: the PNGs weigh 1-3 MB each
            Image.open(src / f"{f}.png").convert("RGB").save(dst / f"{f}.jpg", quality=85)
        s = json.loads((src / "summary.json").read_text())
        threshold = s.get("count_threshold", 0.5)
        preds = read_predictions(src / "detections.csv")
        found = next(iter(preds.values())) if preds else None
        with Slide(SLIDES / rec["slide"]) as slide:
            w0, h0 = slide.info.level_dimensions[0]
            boxes = np.zeros((0, 4)) if found is None else found.boxes[found.scores >= threshold]
            x0, y0 = densest_corner(boxes, w0, h0)
            rgb = slide.read(x0, y0, 0, min(CROP, w0), min(CROP, h0))
        local = boxes - [x0, y0, x0, y0]
        Image.fromarray(draw_boxes(rgb, local, (230, 20, 20), width=2)).save(
            dst / "detections.jpg", quality=88
        )
        print(f"{rec['slide']}: {len(boxes)} detections >= {threshold} "
              f"(crop at {x0}, {y0}); mpp {rec['mpp']} ({rec['mpp_source']})")  # fmt: skip


def densest_corner(boxes: np.ndarray, w0: int, h0: int) -> tuple[int, int]:
    """Top-left of the ``CROP`` square holding most box centres (a 256-px grid search)."""
    if len(boxes) == 0:
        return max(0, (w0 - CROP) // 2), max(0, (h0 - CROP) // 2)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    best, corner = -1, (0, 0)
    for y in range(0, max(1, h0 - CROP + 1), 256):
        for x in range(0, max(1, w0 - CROP + 1), 256):
            n = int(((cx >= x) & (cx < x + CROP) & (cy >= y) & (cy < y + CROP)).sum())
            if n > best:
                best, corner = n, (x, y)
    return corner


if __name__ == "__main__":
    main()
