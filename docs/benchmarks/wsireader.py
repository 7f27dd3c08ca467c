"""Slide reading: pathodet's OpenSlide reader against MONAI's ``WSIReader`` (openslide and
tifffile backends) on the real SVS slides, and the import cost of each.

Run from a checkout beside ``../shared`` (MONAI is a dev dependency)::

    python docs/benchmarks/wsireader.py

One process, this CPU; 200 random 512 x 512 reads at level 0 per slide and reader, the
same locations for every reader. The figures are in README.md (Layout).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from monai.data import WSIReader

from pathodet.predict.reader import Slide

SLIDES = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "slides"
NAMES = ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs")
N, SIDE = 200, 512


def import_seconds(module: str) -> float:
    """Best of three fresh interpreters."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
            for _ in range(3)]  # fmt: skip
    return min(float(r) for r in runs)


def hwc(patch: np.ndarray) -> np.ndarray:
    """MONAI's ``(C, H, W)`` patch as ``(H, W, 3)``."""
    return np.moveaxis(np.asarray(patch)[:3], 0, -1)


def main() -> None:
    out: dict = {"import_s": {m: import_seconds(m) for m in ("openslide", "monai.data")}}
    for name in NAMES:
        path = SLIDES / name
        rec: dict = {}
        with Slide(path) as slide:
            w0, h0 = slide.info.level_dimensions[0]
            rng = np.random.default_rng(0)
            xs = rng.integers(0, max(1, w0 - SIDE), N).tolist()
            ys = rng.integers(0, max(1, h0 - SIDE), N).tolist()
            t = time.perf_counter()
            ours = [slide.read(x, y, 0, SIDE, SIDE) for x, y in zip(xs, ys, strict=True)]
            rec["pathodet_openslide_s"] = time.perf_counter() - t
        for backend in ("openslide", "tifffile"):
            reader = WSIReader(backend=backend)
            wsi = reader.read(str(path))
            t = time.perf_counter()
            theirs = [hwc(reader.get_data(wsi, location=(y, x), size=(SIDE, SIDE), level=0)[0])
                      for x, y in zip(xs, ys, strict=True)]  # fmt: skip
            rec[f"monai_{backend}_s"] = time.perf_counter() - t
            rec[f"monai_{backend}_same_pixels"] = all(
                np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)
            )
        rec["level0"] = [w0, h0]
        out[name] = rec
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
