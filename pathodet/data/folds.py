"""Cross-validation folds grouped by patient case (or by slide).

Images cut from one slide look alike, and slides of one case share the patient's tumour;
putting some in training and others in the held-out fold would leak. Folds are therefore
assigned per case by default (per slide on request), and balanced so each
fold holds about the same number of AP and of NP images (paper section 4.2: 5 folds of
about 16 AP and 72 NP images each).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from pathodet.data.digestpath import ImageRecord

Group = Literal["case", "slide"]


def assign_folds(
    records: Sequence[ImageRecord], k: int = 5, seed: int = 0, group: Group = "case"
) -> list[ImageRecord]:
    """Return the records with ``fold`` set in ``0..k-1``; one group never spans two folds.

    ``group="case"`` (default) keeps every case together, and so every slide (a slide
    belongs to one case); ``group="slide"`` keeps only slides together.
    Groups are shuffled with ``seed``, then placed largest first, each into the fold where
    it keeps the AP and NP counts most even (greedy: least growth of the sum of squared
    per-fold AP and NP shares). Deterministic for a given seed and set of records, whatever
    their order.

    Raises:
        ValueError: ``k < 2``, an unknown ``group`` or fewer groups than folds.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if group not in ("case", "slide"):
        raise ValueError(f"group must be 'case' or 'slide', got {group!r}")

    def key(r: ImageRecord) -> str:
        return r.case_id if group == "case" else r.slide_id

    by_slide: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_slide[key(r)].append(r)
    slides = sorted(by_slide)
    if len(slides) < k:
        raise ValueError(f"cannot make {k} folds from {len(slides)} {group}(s)")

    rng = np.random.default_rng(seed)
    order = [slides[i] for i in rng.permutation(len(slides))]
    counts = {s: (sum(r.attribute == "AP" for r in by_slide[s]), len(by_slide[s])) for s in slides}
    order.sort(key=lambda s: -counts[s][1])  # stable: ties keep the shuffled order
    total_ap = max(1, sum(c[0] for c in counts.values()))
    total_np = max(1, sum(c[1] - c[0] for c in counts.values()))

    ap_load = np.zeros(k)
    np_load = np.zeros(k)
    fold_of: dict[str, int] = {}
    for s in order:
        n_ap, n = counts[s]
        # Growth of sum_f (ap_f / total_ap)^2 + (np_f / total_np)^2 when the slide joins fold f
        # (constant terms dropped): balances AP and NP each, not only their sum.
        cost = n_ap * ap_load / total_ap**2 + (n - n_ap) * np_load / total_np**2
        # ties (e.g. empty folds) go to the emptier fold, then the lowest index
        best = min(range(k), key=lambda f: (round(cost[f], 12), ap_load[f] + np_load[f], f))
        fold_of[s] = best
        ap_load[best] += n_ap
        np_load[best] += n - n_ap
    return [replace(r, fold=fold_of[key(r)]) for r in records]


def fold_summary(records: Sequence[ImageRecord]) -> list[dict]:
    """Per fold: number of AP images, NP images, slides and cases."""
    folds = sorted({r.fold for r in records if r.fold is not None})
    return [
        {
            "fold": f,
            "AP": sum(r.fold == f and r.attribute == "AP" for r in records),
            "NP": sum(r.fold == f and r.attribute == "NP" for r in records),
            "slides": len({r.slide_id for r in records if r.fold == f}),
            "cases": len({r.case_id for r in records if r.fold == f}),
        }
        for f in folds
    ]


def split(
    records: Sequence[ImageRecord], held_out: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """``(train, validation)``: validation is fold ``held_out``, train every other fold."""
    if any(r.fold is None for r in records):
        raise ValueError("records carry no fold: run assign_folds or read a fold manifest")
    return [r for r in records if r.fold != held_out], [r for r in records if r.fold == held_out]
