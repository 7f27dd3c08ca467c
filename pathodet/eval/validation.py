"""Challenge metrics on the held-out tiles, for the trainer's per-epoch validation.

The trainer (which may not import this stage) is handed :func:`tile_metrics`: it scores the
detections it already computed on the fixed validation tiles, each tile standing for an
image, so NFP here counts false positives per NP *tile*, not per whole image.
"""

from __future__ import annotations

import numpy as np

from pathodet.data.predictions import ImagePredictions
from pathodet.eval.metrics import ImageBoxes, evaluate


def tile_metrics(
    preds: dict[str, ImagePredictions], truth: dict[str, tuple[str, np.ndarray]]
) -> dict[str, float | None]:
    """``recall``, ``nfp``, ``froc`` (None where undefined) of tile detections."""
    m = evaluate(preds, {k: ImageBoxes(a, np.asarray(b, float)) for k, (a, b) in truth.items()})
    return {"recall": m["recall"], "nfp": m["nfp"], "froc": m["froc"]}
