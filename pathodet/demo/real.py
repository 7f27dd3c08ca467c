"""``pathodet demo --data ROOT``: the demo's pipeline on a real DigestPath root.

Case-grouped folds, DGHM-C and focal trained with the real-data recipe
(``configs/digestpath.yaml``, written out here as :data:`REAL_RECIPE`), held-out images
predicted and evaluated, overlays and ``OUT/report.md``. By default one fold is held out
(the quick look); ``all_folds`` runs the whole cross-validation, fold by fold with both
losses at each fold, so an interrupted run always holds a fair comparison. Resumable: the
same command continues where it stopped. Layout::

    OUT/cv/dghm/, OUT/cv/focal/    pathodet cv folders (``pathodet cv ... --out`` continues them)
    OUT/overlays/*.png             held-out images, DGHM-C at its 1-FP-per-NP-image threshold
    OUT/froc.png, OUT/report.md    both losses
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from pathodet.core.io import atomic_write_text
from pathodet.data.digestpath import read_manifest
from pathodet.data.predictions import read_predictions
from pathodet.demo.settings import LOSSES
from pathodet.eval.annotations import load_annotations
from pathodet.eval.cv import cv_table_md, finished_folds, fmt, make_folds, run_fold, summarize_cv
from pathodet.eval.metrics import curve
from pathodet.eval.overlays import cv_overlays
from pathodet.eval.report import froc_png
from pathodet.predict.config import PredictConfig
from pathodet.training.config import Config, load_config

REAL_RECIPE = (
    "data.fold_group=case",
    "data.scale=0.5",
    "data.tiling.tile_size=512",
    "data.tiling.stride=256",
    "model.norm=bn",
    "model.fpn_channels=128",
    "model.anchors.sizes=[12, 24, 48, 96, 192]",
    "train.epochs=8",
    "train.max_steps_per_epoch=100",
    "train.milestones=[6, 7]",
    "train.lr=0.0003",
    "train.warmup_steps=20",
    "train.augment.crop=256",
    "train.augment.vflip=true",
    "train.augment.hed_jitter=0.05",
    "train.precision=auto",
    "train.num_workers=1",
    "train.checkpoint_every=50",
    "train.val_tiles=32",
)
"""What ``configs/digestpath.yaml`` changes from the defaults (a test keeps them equal);
why each: the comments of that file and docs/real-data.md."""


NMS_IOU = 0.3
"""Prediction NMS of the real demo and ``pathodet cv``: neighbouring SRCs touch but their
boxes overlap far less than 0.3, while duplicates of one cell overlap more."""


def real_config(loss: str, seed: int = 0, extra: list[str] | None = None) -> Config:
    """The real-data training config of one model (``data.root`` is set per fold)."""
    return load_config(
        None, [*REAL_RECIPE, f"loss.name={loss}", f"train.seed={seed}", *(extra or [])]
    )


def run_real_demo(
    root: Path,
    out: Path,
    k: int = 5,
    all_folds: bool = False,
    seed: int = 0,
    extra: list[str] | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Run (or continue) the real-data demo; returns what ``OUT/demo.json`` holds."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    settings = PredictConfig(nms_iou=NMS_IOU)
    folders = {loss: out / "cv" / loss for loss in LOSSES}
    manifests = {}
    for loss, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        manifests[loss] = make_folds(root, folder, k, seed, "case")
    todo = list(range(k)) if all_folds else [0]
    echo(f"pathodet demo --data {root}: {k} case-grouped folds, held out: "
         f"{', '.join(map(str, todo))}; DGHM-C and focal at each")  # fmt: skip
    for fold in todo:
        for loss, folder in folders.items():
            echo(f"fold {fold}, {LOSSES[loss]}")
            rec = run_fold(real_config(loss, seed, extra), manifests[loss], fold, folder,
                           settings, echo, progress)  # fmt: skip
            echo(f"fold {fold}, {LOSSES[loss]}: FROC {fmt(rec['froc'])}, "
                 f"{rec['train_minutes']:.1f} min training")  # fmt: skip
    result: dict = {"root": str(root), "k": k, "folds_run": todo, "losses": {}}
    curves = {}
    for loss, folder in folders.items():
        finished = finished_folds(folder, settings, echo)
        summary = summarize_cv(finished)
        result["losses"][loss] = summary
        atomic_write_text(folder / "cv.json", json.dumps(summary, indent=2))
        title = f"{LOSSES[loss]}: {len(finished)} of {k} case-grouped folds"
        atomic_write_text(folder / "cv.md", cv_table_md(summary, title))
        curves[LOSSES[loss]] = _pooled_curve(folder, [r["fold"] for r in finished])
    froc_png(curves, out / "froc.png")
    result["overlays"] = cv_overlays(folders["dghm"], out / "overlays")
    result["seconds"] = time.perf_counter() - t0
    atomic_write_text(out / "demo.json", json.dumps(result, indent=2, default=str))
    atomic_write_text(out / "report.md", report_md(result, out))
    return result


def _pooled_curve(folder: Path, folds: list[int]):
    """One FROC curve over the held-out images of all ``folds`` (for the joint plot)."""
    import numpy as np

    truth, preds = {}, {}
    for f in folds:
        gt = load_annotations(folder / f"fold-{f}" / "held-out.csv")
        truth |= gt.annotated
        preds |= read_predictions(folder / f"fold-{f}" / "predictions" / "predictions.csv",
                                  images=gt.annotated)  # fmt: skip
    if not truth:
        return np.zeros(0), np.zeros(0)
    _, recall, nfp = curve(preds, truth)
    return recall, nfp


def report_md(result: dict, out: Path) -> str:
    """The real-data demo report: both losses per fold and mean ± std, overlays."""
    lines = [f"# pathodet on real DigestPath ({result['root']})", ""]
    for loss, summary in result["losses"].items():
        lines.append(cv_table_md(summary, f"{LOSSES[loss]}").replace("# ", "## ", 1))
    lines += ["![FROC of the held-out images, folds pooled](froc.png)", "",
              "## Held-out images (DGHM-C at 1 false positive per NP image)", "",
              "green: hits an annotated SRC; yellow: annotated SRC missed; cyan: detection "
              "with no annotation (an unannotated SRC or a false positive). Right: the "
              "densest 512 px region at full resolution.", ""]  # fmt: skip
    for item in result["overlays"]:
        rel = Path(item["file"]).relative_to(out).as_posix()
        lines += [f"**{item['image']}** (fold {item['fold']}, {item['attribute']}): "
                  f"{item['hits']} hits, {item['misses']} misses, {item['new']} not annotated",
                  "", f"![{item['image']}]({rel})", ""]  # fmt: skip
    n = len(read_manifest(out / "cv" / "dghm" / "folds.csv"))
    lines += [f"{n} images; {result['seconds'] / 60:.1f} min in this invocation.", ""]
    return "\n".join(lines)
