"""``pathodet bench losses --data ROOT``: the DGHM paper's Tables 3 and 4 on real DigestPath.

The synthetic benchmark (:mod:`pathodet.bench.losses`) knows the full truth; this one asks
the paper's question where it was asked, on the real release, with what real data allows:

- **Folds.** Case-grouped folds of the real images (``pathodet cv``'s split). Each run
  trains on the other folds and is measured on its held-out fold, whose annotations are
  never dropped: held-out FROC, recall, precision and NFP as the challenge computes them.
- **Dropped labels.** For a drop rate ``eta > 0``, ``pathodet data drop`` (seeded) removes
  ``eta`` of each AP image's real boxes, and the removed boxes are kept. The training
  images then measure T-recall (the kept boxes) and R-recall (the removed ones, the
  paper's robustness figure). A fold's manifest (``data/drop-50/fold-0.csv``) takes the
  held-out fold's images from the original root and the others from the dropped copy.
- **Budget.** Every method trains the real-data recipe (``configs/digestpath.yaml``,
  :data:`~pathodet.demo.real.REAL_RECIPE`, with gradients clipped: :data:`BENCH_RECIPE`) for
  the same number of steps, its learning-rate milestones stretched with the budget. The
  runs at 0% dropped keep their weights every ``curve_every`` steps and are measured on
  the held-out fold at each: the curve of FROC against steps that says whether a method
  was still climbing when the budget ended.

Layout of ``--out``::

    folds.csv                                   the case-grouped split of ROOT
    data/drop-50/ (+ fold-<f>.csv)              pathodet data drop copies
    runs/steps-800/drop-50/dghm/fold-0/         pathodet cv's fold folder (run/, eval/, ...)
        train-eval/  curve.json  result.json    training-image recall, curve, the result

A run is done when its ``result.json`` is there (written last, atomically) and was made
with the same config; an interrupted run resumes from its ``last.pt``. The finished runs
are read back, and a lost ``--out`` restored, by :mod:`pathodet.bench.losses_real_results`.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from pathodet.bench import losses
from pathodet.bench.losses_methods import METHODS
from pathodet.bench.pudet import PU_METHODS
from pathodet.bench.speed import git_commit
from pathodet.core.config import Strict
from pathodet.core.io import atomic_write_text
from pathodet.data.boxes import longer_side
from pathodet.data.digestpath import DatasetError, read_manifest, scan_digestpath, write_manifest
from pathodet.data.drop import REMOVED_DIR, drop_annotations
from pathodet.data.predictions import read_predictions
from pathodet.demo.real import real_config
from pathodet.eval.annotations import load_annotations
from pathodet.eval.chance import chance_recall
from pathodet.eval.cv import make_folds, operating_point, run_fold
from pathodet.eval.evaluate import largest_annotated_side, run_evaluate
from pathodet.eval.metrics import above
from pathodet.model.boxes import SAME_CELL_IOU
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import predict
from pathodet.training.checkpoint import load_checkpoint
from pathodet.training.config import Config, same_config
from pathodet.training.run_dir import BEST, LAST, snapshot_name

PRIOR_NEEDS = "score_ss"  # its prior is another run's detector

BENCH_RECIPE = ("train.grad_clip=35",)
"""Added to the real-data recipe for every run: gradients clipped to an L2 norm of 35, the
value of mmdetection's RetinaNet configs ("loss may NaN without clip_grad"). Without it the
first 2400-step runs had gradient norms up to 875 (medians 3-14), validation losses up to
1432 and one DGHM-C run that collapsed to a grid of anchor-shaped boxes (held-out FROC 0):
docs/benchmarks/losses-real.md, "Instability"."""
HELD_OUT_KEYS = ("froc", "recall", "precision", "nfp")  # the challenge's held-out figures
IN_SIZE = "test_in_size"  # the held-out figures without boxes larger than any trained SRC
CHANCE_DRAWS = 8  # random shifts per run behind the chance recalls at the operating point
AT_1FP = "at_1fp"  # in "train": T- and R-recall at the held-out 1-FP-per-NP-image threshold
REAL_METHODS = tuple(m for m in METHODS if m not in (PRIOR_NEEDS, *PU_METHODS))
"""The methods that need no first-round detector, teacher or unlabelled pool: the losses,
soft sampling on every negative or on AP negatives only, cleanliness and co-mining."""


class RealLossBenchSettings(Strict):
    """What the real-data benchmark varies and fixes."""

    folds: int = Field(5, ge=2, description="case-grouped folds of the release")
    fold_seed: int = 0
    run_folds: list[int] = Field([0, 1, 2], min_length=1, description="held-out folds run")
    drop_rates: list[float] = Field([0.0, 0.5, 0.7], min_length=1)
    drop_seed: int = 0
    methods: list[str] = Field(["ce", "focal", "ghm", "dghm"], min_length=1)
    steps: int = Field(800, ge=1, description="training steps per run (the budget)")
    seed: int = Field(0, description="training seed")
    curve_every: int = Field(200, ge=0, description="held-out FROC every N steps at 0% (0: none)")
    nms_iou: float = Field(0.3, gt=0, le=1, description="prediction NMS IoU (pathodet cv's)")
    overrides: list[str] = Field([], description="config overrides for every run")

    @model_validator(mode="after")
    def _check(self) -> RealLossBenchSettings:
        bad = [m for m in self.methods if m not in REAL_METHODS]
        if bad:
            raise ValueError(f"method(s) {bad} need a teacher, prior or pool and run only on "
                             f"synthetic data; here choose from {list(REAL_METHODS)}")  # fmt: skip
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods repeat: {self.methods}")
        if any(not 0.0 <= r < 1.0 or abs(r * 100 - round(r * 100)) > 1e-9
               for r in self.drop_rates):  # fmt: skip
            raise ValueError(f"drop rates must be whole percents in [0, 1), got {self.drop_rates}")
        if len({round(r * 100) for r in self.drop_rates}) != len(self.drop_rates):
            raise ValueError(f"drop rates repeat: {self.drop_rates}")
        if any(not 0 <= f < self.folds for f in self.run_folds):
            raise ValueError(f"run_folds must be in 0..{self.folds - 1}, got {self.run_folds}")
        return self


def rate_name(rate: float, drop_seed: int = 0) -> str:
    """``0.5`` -> ``"drop-50"``; a drop seed other than 0 is named: ``"drop-50-seed3"``."""
    return losses.rate_name(rate) + (f"-seed{drop_seed}" if drop_seed and rate else "")


def fold_dir(
    out: Path, steps: int, rate: float, method: str, fold: int, drop_seed: int = 0
) -> Path:
    return (out / "runs" / f"steps-{steps}" / rate_name(rate, drop_seed) / method
            / f"fold-{fold}")  # fmt: skip


def plan(s: RealLossBenchSettings) -> list[tuple[float, int, str]]:
    """``(rate, fold, method)`` of every run: rate first (Table 3 before Table 4), then fold,
    so a half-finished benchmark has whole folds of every method."""
    return [(r, f, m) for r in s.drop_rates for f in s.run_folds for m in s.methods]


def budget_config(base: Config, steps: int) -> Config:
    """``base`` for ``steps`` steps: epochs of ``train.max_steps_per_epoch`` steps, and the
    learning-rate milestones at the same fractions of the run as in ``base``.

    Raises:
        ValueError: ``base`` has no ``max_steps_per_epoch`` (the budget would depend on the
            data), or ``steps`` is not a multiple of it.
    """
    tc = base.train
    per_epoch = tc.max_steps_per_epoch
    if per_epoch is None or steps % per_epoch:
        raise ValueError(f"steps ({steps}) must be a multiple of train.max_steps_per_epoch "
                         f"({per_epoch}) of the recipe")  # fmt: skip
    epochs = steps // per_epoch
    milestones = sorted({math.ceil(epochs * m / tc.epochs) for m in tc.milestones} - {0})
    cfg = base.model_copy(deep=True)
    cfg.train.epochs = epochs
    cfg.train.milestones = [m for m in milestones if m < epochs]
    return cfg


def prepare_data(root: Path, out: Path, s: RealLossBenchSettings) -> Path:
    """``out/folds.csv`` and one dropped copy per rate > 0, made once; returns the split."""
    folds_csv = make_folds(root, out, s.folds, s.fold_seed, "case")
    for rate in s.drop_rates:
        if rate == 0:
            continue
        copy = out / "data" / rate_name(rate, s.drop_seed)
        stamp = copy / "bench.json"
        params = {"root": str(root.resolve()), "rate": rate, "seed": s.drop_seed}
        if not (stamp.is_file() and json.loads(stamp.read_text()) == params):
            drop_annotations(root, copy, rate, s.drop_seed)
            atomic_write_text(stamp, json.dumps(params))
    return folds_csv


def fold_manifest(out: Path, folds_csv: Path, rate: float, fold: int, drop_seed: int = 0) -> Path:
    """The manifest a run trains on: at 0% the split itself; else the held-out fold from
    the original root and the training folds from the dropped copy (same names, same folds).

    Raises:
        ValueError: an image of the split missing from the dropped copy.
    """
    if rate == 0:
        return folds_csv
    copy = out / "data" / rate_name(rate, drop_seed)
    dropped = {r.name: r for r in scan_digestpath(copy)}
    records = []
    for r in read_manifest(folds_csv):
        if r.fold == fold:
            records.append(r)
        elif r.name not in dropped:
            raise ValueError(f"{copy}: {r.name} of {folds_csv} is missing (delete {copy})")
        else:
            records.append(replace(dropped[r.name], fold=r.fold, case_id=r.case_id))
    return write_manifest(copy / f"fold-{fold}.csv", records)


def run_config(s: RealLossBenchSettings, root_manifest: Path, method: str) -> Config:
    """The recipe with :data:`BENCH_RECIPE`, the method's loss, the seed and the budget
    (:func:`run_one` adds the snapshots of the 0% runs); ``s.overrides`` come last."""
    m = METHODS[method]
    cfg = real_config(m.loss, s.seed, [*BENCH_RECIPE, *m.overrides, *s.overrides])
    cfg = budget_config(cfg, s.steps)
    cfg.data.root = root_manifest.resolve()
    return cfg


def predict_settings(s: RealLossBenchSettings) -> PredictConfig:
    """``pathodet cv``'s prediction: the checkpoint's windows and pixel size, bf16 where native."""
    return PredictConfig(nms_iou=s.nms_iou)


def held_out_froc(checkpoint: Path, manifest: Path, folder: Path, s: RealLossBenchSettings) -> dict:
    """Held-out FROC, recall and NFP of one checkpoint (a point of the curve)."""
    pred = folder / "predictions"
    predict(predict_settings(s), checkpoint, [manifest], pred)
    m = run_evaluate(manifest, pred / "predictions.csv", folder / "eval", plot=False)
    return {k: m[k] for k in HELD_OUT_KEYS}


def curve(folder: Path, s: RealLossBenchSettings, final: dict,
          log: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Held-out FROC at every kept snapshot, then at the end (``final``); cached per point in
    ``curve.json``. Snapshots are deleted once measured."""
    path = folder / "curve.json"
    points = {p["step"]: p for p in json.loads(path.read_text())} if path.is_file() else {}
    manifest = folder / "held-out.csv"
    for step in range(s.curve_every, s.steps, s.curve_every) if s.curve_every else []:
        snap = folder / "run" / snapshot_name(step)
        if step not in points:
            if not snap.is_file():  # a run killed between last.pt and its snapshot
                log(f"{snap}: missing, the curve goes without step {step}")
                continue
            points[step] = {"step": step,
                            **held_out_froc(snap, manifest, folder / "curve" / str(step), s)}  # fmt: skip
            atomic_write_text(path, json.dumps(sorted(points.values(), key=lambda p: p["step"])))
        snap.unlink(missing_ok=True)
    (folder / "run" / snapshot_name(s.steps)).unlink(missing_ok=True)  # the final weights
    points[s.steps] = {
        "step": s.steps,
        **{k: final[k] for k in HELD_OUT_KEYS},
    }
    result = sorted(points.values(), key=lambda p: p["step"])
    atomic_write_text(path, json.dumps(result))
    return result


def train_recall(folder: Path, manifest: Path, rate: float, fold: int, out: Path,
                 s: RealLossBenchSettings) -> dict:  # fmt: skip
    """T-recall (kept boxes) and R-recall (removed boxes, None at 0%) on the training AP
    images, predicted with the final weights."""
    train_ap = [r for r in read_manifest(manifest) if r.fold != fold and r.attribute == "AP"]
    ap_csv = write_manifest(folder / "train-ap.csv", train_ap)
    pred = folder / "train-eval" / "predictions"
    predict(predict_settings(s), folder / "run" / LAST, [ap_csv], pred)
    removed = out / "data" / rate_name(rate, s.drop_seed) / REMOVED_DIR if rate else None
    m = run_evaluate(ap_csv, pred / "predictions.csv", folder / "train-eval", removed=removed,
                     plot=False)  # fmt: skip
    return {"t_recall": m.get("t_recall", m["recall"]), "r_recall": m.get("r_recall"),
            "precision": m["precision"], "kept_boxes": m["num_gt"],
            "removed_boxes": m.get("num_removed", 0)}  # fmt: skip


def at_operating_point(folder: Path, out: Path, rate: float, drop_seed: int = 0) -> dict:
    """T-recall and R-recall of the training AP images counting only the detections that
    score at least the run's held-out operating point (the threshold giving 1 false
    positive per held-out NP image, ``fold.json``'s ``threshold_at_1fp``), and what the
    same detections reach by chance.

    Recall at every score rewards a detector that keeps many low-scoring boxes (DGHM-C
    keeps over a thousand per NP image, CE a handful); at the score a user would run the
    detector at, the figures compare methods. Even there, a detector that covers the
    SRC-rich tissue with boxes "finds" cells by coverage. ``chance`` holds the recalls of
    the same detections shifted at random (:func:`pathodet.eval.chance.chance_recall`,
    :data:`CHANCE_DRAWS` draws): ``anywhere`` in the image, and ``one_cell`` away (by
    ``cell_px``, the median longer side of the training boxes, in a random direction);
    ``detections_per_image`` is how many a training AP image keeps.

    Returns:
        ``{"threshold", "t_recall", "r_recall", "detections_per_image", "chance":
        {"anywhere": {"t_recall", "r_recall"}, "one_cell": {...}, "cell_px", "draws"}}``;
        R-recalls are None at 0%. When no threshold reaches 1 FP (``threshold`` None: a
        detector that collapsed to no detection, or whose most confident one is already
        past 1 FP per NP image) nothing is kept: recalls, detections and chance recalls 0
        (:func:`pathodet.eval.cv.operating_point`).

    Raises:
        OSError: the run's ``fold.json``, ``train-ap.csv`` or training predictions are gone.
    """
    threshold = json.loads((folder / "fold.json").read_text()).get("threshold_at_1fp")
    removed = out / "data" / rate_name(rate, drop_seed) / REMOVED_DIR if rate else None
    gt = load_annotations(folder / "train-ap.csv", removed)
    preds = read_predictions(folder / "train-eval" / "predictions" / "predictions.csv",
                             images=gt.annotated)  # fmt: skip
    point = operating_point(preds, gt.annotated, threshold, SAME_CELL_IOU, gt.removed)
    kept = above(preds, threshold)  # None (no 1-FP point): nothing kept
    cell_px = float(
        np.median(longer_side(np.concatenate([t.boxes for t in gt.annotated.values()])))
    )
    shifted = {
        kind: chance_recall(
            kept, gt.annotated, SAME_CELL_IOU, gt.removed, CHANCE_DRAWS, distance=distance
        )  # fmt: skip
        for kind, distance in (("anywhere", None), ("one_cell", cell_px))
    }
    n_ap = sum(t.attribute == "AP" for t in gt.annotated.values())
    return {"threshold": threshold, "t_recall": point["recall_at_1fp"],
            "r_recall": point.get("r_recall_at_1fp"),
            "detections_per_image": sum(len(p.scores) for p in kept.values()) / n_ap,
            "chance": {**shifted, "cell_px": cell_px, "draws": CHANCE_DRAWS}}  # fmt: skip


def in_size(folder: Path) -> dict:
    """Held-out figures of a run's final predictions without the boxes larger than any SRC
    it was trained on: a box whose longer side exceeds the largest annotated box of its
    training AP images (``train-ap.csv``, the kept boxes at a drop rate) is left out.

    The rule is fixed by the training annotations alone; it says how much of a run's
    held-out FROC is lost to detections of a size no SRC has.
    """
    side = largest_annotated_side(folder / "train-ap.csv")
    m = run_evaluate(folder / "held-out.csv", folder / "predictions" / "predictions.csv",
                     folder / "eval-in-size", plot=False, max_side=side)  # fmt: skip
    out = m["oversized_predictions"]
    return {"max_side": side, "oversized": out,
            "left_out": out / max(out + m["num_predictions"], 1),
            "froc_points": m["froc_points"], **{k: m[k] for k in HELD_OUT_KEYS}}  # fmt: skip


def run_one(root: Path, out: Path, s: RealLossBenchSettings, folds_csv: Path, rate: float,
            fold: int, method: str, commit: str,
            log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """Train (or resume), predict and evaluate one run unless its result is there.

    ``commit`` is recorded in the result: the caller reads it when its process starts, so a
    grid left running while the repository moves on records the code it actually runs."""
    folder = fold_dir(out, s.steps, rate, method, fold, s.drop_seed)
    result_file = folder / "result.json"
    manifest = fold_manifest(out, folds_csv, rate, fold, s.drop_seed)
    cfg = run_config(s, manifest, method)
    if rate == 0 and s.curve_every:
        cfg.train.snapshot_every = s.curve_every
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if same_config(done.get("config"), cfg):
            return done
        raise DatasetError(f"{result_file}: made with another config (seed, --set or "
                           "--curve-every); choose another --out, or delete its folder")  # fmt: skip
    # wall minutes of the whole run: the training minutes of earlier segments (a run resumed
    # after a kill; its checkpoint sums them) plus all of this segment
    last = folder / "run" / LAST
    minutes_before = load_checkpoint(last).get("train_seconds", 0.0) / 60 if last.is_file() else 0.0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no ImageNet ResNet-18 weights")  # by design
        record = run_fold(cfg, manifest, fold, folder.parent, predict_settings(s), log)
    if record["steps"] != s.steps:
        raise DatasetError(f"{folder}: trained {record['steps']} steps, not the budget's "
                           f"{s.steps} (fewer batches per epoch than max_steps_per_epoch?)")  # fmt: skip
    points = curve(folder, s, record, log) if rate == 0 else []
    train = train_recall(folder, manifest, rate, fold, out, s)
    train[AT_1FP] = at_operating_point(folder, out, rate, s.drop_seed)
    result = {
        "method": method, "label": METHODS[method].label, "rate": rate, "fold": fold,
        "seed": s.seed, "drop_seed": s.drop_seed, "overrides": s.overrides,
        "steps": record["steps"], "train_minutes": record["train_minutes"],
        "minutes": minutes_before + (time.perf_counter() - t0) / 60,
        "test": {k: record.get(k) for k in (*HELD_OUT_KEYS, "froc_points", "num_gt")},
        "train": train, IN_SIZE: in_size(folder), "curve": points,
        "machine": record.get("machine"),
        "commit": commit, "root": str(root), "config": cfg.model_dump(mode="json"),
    }  # fmt: skip
    atomic_write_text(result_file, json.dumps(result, indent=1))
    for name in (LAST, BEST):  # 50 MB each; the result is what is kept
        (folder / "run" / name).unlink(missing_ok=True)
    return result


def run_real_losses(root: Path, out: Path, s: RealLossBenchSettings,
                    log: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Every run of :func:`plan`, in order, resuming what is done; returns the results."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"settings-steps-{s.steps}.json", s.model_dump_json(indent=1))
    folds_csv = prepare_data(root, out, s)
    runs, results, commit = plan(s), [], git_commit()  # the code this process runs
    for k, (rate, fold, method) in enumerate(runs, 1):
        t0 = time.perf_counter()
        r = run_one(root, out, s, folds_csv, rate, fold, method, commit, log)
        results.append(r)
        took = time.perf_counter() - t0
        # ETA from the recorded wall minutes of every run so far, done before or now
        eta = statistics.fmean(x["minutes"] for x in results) * 60 * (len(runs) - k)
        froc, rr = r["test"]["froc"], r["train"]["r_recall"]
        log(f"[{k}/{len(runs)}] {rate_name(rate, s.drop_seed)} fold {fold} {method:<9} FROC "
            f"{'-' if froc is None else f'{froc:.3f}'} R-recall "
            f"{'-' if rr is None else f'{rr:.3f}'} "
            f"{f'{took / 60:.1f} min' if took > 1 else '(done before)'}; ETA {eta / 60:.0f} min")  # fmt: skip
    return results
