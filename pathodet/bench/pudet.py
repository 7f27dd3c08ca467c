"""The PU purification stages of ``pathodet bench losses`` (methods ``pudet`` and
``pudet_random``), on synthetic data where the truth is known.

- The pool (``data/pool/``): a synthetic root of AP-like and NP-like images with every SRC
  in ``full-annotations/``, shown to purification as a plain folder of images
  (``data/pool-images/``: attribute unknown, as from unlabeled slides).
- The teacher: the ``dghm`` run of the same seed and drop rate (its ``last.pt``).
- ``runs/seedS/drop-R/purify-pu/``: ``pathodet purify`` with the PU classifier;
  ``purify-random/``: the paper's U^R control, as many tiles drawn at random. Both are
  pseudo-labeled by the teacher at tau = 0.5 and scored against the truth.
- The students train on the drop-rate root plus the selected tiles, with
  self-distillation from the teacher (``configs/pudet.yaml``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pathodet.core.io import atomic_write_text
from pathodet.data.digestpath import FULL_DIR, NEG_DIR, POS_DIR
from pathodet.data.synth import write_synthetic_dataset
from pathodet.purify.classifier import PUConfig
from pathodet.purify.pipeline import SUMMARY, purification_truth, run_purify
from pathodet.purify.pool import pool_tiles

PU_METHODS = {"pudet": "pu", "pudet_random": "random"}
"""Bench method -> purification selection."""


def prepare_pool(data: Path, positive: int, negative: int, size: int, seed: int) -> Path:
    """The synthetic pool (stamped) and its flat image folder; returns the flat folder."""
    pool, flat = data / "pool", data / "pool-images"
    params = {"positive": positive, "negative": negative, "size": size, "seed": seed}
    stamp = pool / "bench.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
        for folder in (pool, flat):
            if folder.exists():
                shutil.rmtree(folder)
        write_synthetic_dataset(pool, positive, negative, size, seed, 1.0, images_per_slide=2)
        atomic_write_text(stamp, json.dumps(params))
    if not flat.is_dir():
        tmp = flat.with_name(flat.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for sub in (POS_DIR, NEG_DIR):
            for image in sorted((pool / sub).glob("*.jpeg")):
                os.link(image, tmp / image.name)
        tmp.rename(flat)
    return flat


def pool_prior(pool_images: Path, tile: int) -> float:
    """The pool's true ``pi_p``: the share of its ``tile``-pixel tiles holding an SRC (at
    least half of one), from the pool's full annotations."""
    pool, _ = pool_tiles(pool_images, tile)
    truth = pool_images.parent / "pool" / FULL_DIR
    return purification_truth(truth, pool, [], None, tile)["pool_prior"]


def pu_config(
    tile: int, stride: int, steps: int, prior_steps: int, seed: int, prior: float | None
) -> PUConfig:
    """The bench's purification settings; ``prior=None`` has the classifier estimate it."""
    return PUConfig(tile=tile, stride=stride, steps=steps, prior_steps=prior_steps, seed=seed,
                    prior=prior)  # fmt: skip


def purify_stage(
    folder: Path,
    labeled: Path,
    pool_images: Path,
    teacher: Path,
    cfg: PUConfig,
    stamp_params: dict,
) -> dict:
    """Run ``pathodet purify`` into ``folder`` unless it was made from ``stamp_params``;
    returns its summary."""
    stamp = folder / "bench.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == stamp_params:
        return json.loads((folder / SUMMARY).read_text())
    if folder.exists():
        shutil.rmtree(folder)
    summary = run_purify(labeled, pool_images, folder, cfg, teacher,
                         pool_images.parent / "pool" / FULL_DIR, log=lambda _: None)  # fmt: skip
    atomic_write_text(stamp, json.dumps(stamp_params))
    return summary


def purify_result(summary: dict) -> dict:
    """What a student's ``result.json`` keeps of its purification."""
    return {
        "selection": summary["config"]["selection"],
        "prior": summary["prior"],
        "prior_estimated": summary["prior_estimated"],
        "positives": summary["positives"],
        "pool_tiles": summary["pool_tiles"],
        "selected": summary["selected"],
        "pseudo_boxes": summary["pseudo_boxes"],
        "seconds": summary["seconds"],
        **summary.get("truth", {}),
    }


def pu_md(results: Sequence[dict], rates: Sequence[float], labels: dict[str, str]) -> list[str]:
    """PU purification: per drop rate, the selection against the truth and each student's
    FROC next to its teacher's (the DGHM-C run of the same seed), mean over seeds."""
    pu = [r for r in results if r.get("purify")]
    if not pu:
        return []
    teacher = {(r["seed"], r["rate"]): r["test"]["froc"] for r in results if r["method"] == "dghm"}
    lines = [
        "### PU purification: what was selected, and the students against their teacher", "",
        "Per run (mean over seeds): the pool's true SRC-tile share, pi_p as estimated, tiles "
        "selected, purification precision (selected tiles holding an SRC) and recall, pseudo-"
        "box precision (IoU >= 0.3 with a true SRC), test FROC of the teacher (DGHM-C, same "
        "seed) and of the student, and the gain.", "",
        "| method | drop | pool prior | pi_p | selected | precision | recall | pseudo prec. "
        "| teacher FROC | student FROC | gain |",
        "|---" * 11 + "|",
    ]  # fmt: skip

    def mean(xs: list) -> str:
        xs = [x for x in xs if x is not None]
        return f"{sum(xs) / len(xs):.3f}" if xs else "–"

    for m in PU_METHODS:
        for rate in rates:
            runs = [r for r in pu if r["method"] == m and r["rate"] == rate]
            if not runs:
                continue
            p = [r["purify"] for r in runs]
            t = [teacher.get((r["seed"], rate)) for r in runs]
            gain = [r["test"]["froc"] - x for r, x in zip(runs, t, strict=True) if x is not None
                    and r["test"]["froc"] is not None]  # fmt: skip
            lines.append(
                f"| {labels[m]} | {round(rate * 100)}% | {mean([x.get('pool_prior') for x in p])} "
                f"| {mean([x['prior'] for x in p])} | {mean([x['selected'] for x in p])} "
                f"| {mean([x.get('precision') for x in p])} | {mean([x.get('recall') for x in p])} "
                f"| {mean([x.get('pseudo_precision') for x in p])} | {mean(t)} "
                f"| {mean([r['test']['froc'] for r in runs])} | {mean(gain)} |"
            )
    return [*lines, ""]
