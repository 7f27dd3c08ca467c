"""pathodet's FROC curve against MONAI's, an independent implementation.

MONAI's ``compute_froc_curve_data`` is the CAMELYON16 evaluation code: given the scores of
the true-positive detections, of the false-positive ones, the number of targets and of
images, it returns ``(FPs per image, sensitivity)`` at every distinct score but the lowest,
plus ``(0, 0)``. With DigestPath's rules (a detection is a true positive when greedy
matching at IoU 0.3 gives it an annotated box; false positives are counted on NP images
only) the same counts must come out of :func:`pathodet.eval.metrics.curve`, whose
``+inf`` threshold is MONAI's ``(0, 0)`` and whose lowest threshold MONAI leaves out.

The FROC *score* is not compared: the challenge averages the best recall at 1-32 FPs per
NP image (:func:`~pathodet.eval.metrics.froc_points`), while MONAI interpolates the curve
linearly between points, as CAMELYON16 did.
"""

from __future__ import annotations

import numpy as np
import pytest

from pathodet.data.predictions import ImagePredictions
from pathodet.eval.metrics import ImageBoxes, curve, matched_scores, negative_scores

monai_froc = pytest.importorskip("monai.metrics.froc", reason="MONAI (a dev dependency) is absent")


def _case(seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    truth, preds = {}, {}
    for i in range(10):
        attr = "AP" if i < 5 else "NP"
        n = int(rng.integers(1, 8)) if attr == "AP" else 0
        xy = rng.uniform(0, 200, (n, 2))
        truth[f"{i}.jpg"] = ImageBoxes(attr, np.hstack([xy, xy + rng.uniform(8, 30, (n, 2))]))
        m = int(rng.integers(0, 15))
        if attr == "AP" and n:  # some detections on the annotated boxes, jittered
            near = truth[f"{i}.jpg"].boxes[rng.integers(0, n, m // 2)]
            near = near + rng.normal(0, 3, near.shape)
        else:
            near = np.zeros((0, 4))
        xy = rng.uniform(0, 200, (m - len(near), 2))
        boxes = np.vstack([near, np.hstack([xy, xy + rng.uniform(8, 30, (len(xy), 2))])])
        scores = rng.integers(1, 20, len(boxes)) / 20  # coarse: ties between images happen
        preds[f"{i}.jpg"] = ImagePredictions(boxes, scores.astype(float))
    return truth, preds


@pytest.mark.parametrize("seed", range(6))
def test_curve_points_equal_monais(seed):
    truth, preds = _case(seed)
    thresholds, recall, nfp = curve(preds, truth, 0.3)
    hit, _, n_gt = matched_scores(preds, truth, 0.3)
    neg, n_neg = negative_scores(preds, truth)
    assert len(hit) and len(neg), "the case must have true and false positives"
    fps, sens = monai_froc.compute_froc_curve_data(neg, hit, n_gt, n_neg)
    theirs = sorted(zip(np.round(fps, 12), np.round(sens, 12), strict=True))
    lowest = int(np.argmin(thresholds))  # the one threshold MONAI leaves out
    keep = np.arange(len(thresholds)) != lowest
    ours = sorted(zip(np.round(nfp[keep], 12), np.round(recall[keep], 12), strict=True))
    assert ours == theirs
