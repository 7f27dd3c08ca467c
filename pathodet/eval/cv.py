"""``pathodet cv``: the DGHM paper's protocol (section 4.2) in one command.

One model per case-grouped fold: train on the other folds, predict the held-out images
with the whole-image path, evaluate them as the challenge does, then report every fold
and the mean ± sample std (the form of the paper's Tables 1, 3 and 5) with all the
folds' FROC curves in one plot. Layout of ``out``::

    folds.csv                  the split (image, attribute, annotation, slide_id, fold, case_id)
    fold-<f>/run/              the training run (last.pt, metrics.csv; resumable)
    fold-<f>/held-out.csv      the held-out images
    fold-<f>/predictions/      predict's output (resumable per image)
    fold-<f>/eval/             metrics.json, froc.png, report.md of the held-out images
    fold-<f>/fold.json         training minutes (summed over resumes), steps, operating point
    cv.json, cv.md, froc.png   every fold, mean ± std, all FROC curves

A killed run continues where it stopped: a finished fold is skipped, a fold whose run
holds a ``last.pt`` is resumed, predictions already written are kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from pathodet.core.io import atomic_write_text
from pathodet.data.digestpath import DatasetError, load_records, read_manifest, write_manifest
from pathodet.data.folds import Group, assign_folds, fold_summary
from pathodet.data.predictions import ImagePredictions, read_predictions
from pathodet.eval.annotations import load_annotations
from pathodet.eval.evaluate import run_evaluate
from pathodet.eval.metrics import (
    FROC_FPS,
    ImageBoxes,
    above,
    curve,
    evaluate,
    operating_threshold,
)
from pathodet.eval.report import froc_png, mean_std
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import predict
from pathodet.training.checkpoint import load_checkpoint
from pathodet.training.config import Config
from pathodet.training.run_dir import LAST
from pathodet.training.train import train

FOLD_KEYS = ("recall", "precision", "nfp", "froc", "precision_at_1fp", "recall_at_1fp",
             "train_minutes")  # fmt: skip
"""The per-fold columns of ``cv.md`` (FROC points are added from ``froc_points``)."""


def make_folds(root: Path, out: Path, k: int, seed: int, group: Group) -> Path:
    """Write (or reuse) ``out/folds.csv``; a reused split must list the same images.

    Raises:
        DatasetError: ``folds.csv`` exists but was made from other images or another k.
    """
    path = out / "folds.csv"
    records = assign_folds(load_records(root), k=k, seed=seed, group=group)
    if path.is_file():
        old = read_manifest(path)
        same = {(r.image.resolve(), r.fold) for r in old} == {
            (r.image.resolve(), r.fold) for r in records
        }
        if not same:
            raise DatasetError(
                f"{path}: holds another split (other images, --folds, --seed or --group); "
                "choose another --out"
            )
        return path
    write_manifest(path, records)
    return path


RECORDED = ("tile", "overlap", "batch_size", "score_threshold", "nms_iou", "max_per_image", "pad",
            "scale")  # fmt: skip


def predict_record(settings: PredictConfig) -> dict:
    """The prediction settings a fold's results depend on (precision aside)."""
    return settings.model_dump(mode="json", include=set(RECORDED))


def training_record(cfg: Config) -> dict:
    """The training config a fold's model depends on (JSON values; precision, threads and
    checkpointing aside, which change how fast, not what is learnt)."""
    record = json.loads(cfg.model_dump_json())
    for key in ("precision", "threads", "num_workers", "checkpoint_every", "log_every", "device"):
        record["train"].pop(key, None)
    return record


def _fold_cfg(cfg: Config, folds_csv: Path, fold: int) -> Config:
    cfg = cfg.model_copy(deep=True)
    cfg.data.root = folds_csv.resolve()
    cfg.data.folds = None
    cfg.data.held_out_fold = fold
    return cfg


def _train_fold(cfg: Config, run_dir: Path, log: Callable[[str], None], progress: bool) -> dict:
    """Train, or resume, one fold's run; returns ``{"steps", "seconds", "resumed"}``, the
    seconds summed over every resumed segment (the trainer keeps them in its checkpoint)."""
    resume = (run_dir / LAST).is_file()
    summary = train(cfg, run_dir, resume=resume, progress=progress, log=log)
    return {"steps": summary["steps"], "seconds": summary["train_seconds"], "resumed": resume}


def operating_point(
    preds: dict[str, ImagePredictions], truth: dict[str, ImageBoxes], threshold: float | None,
    iou: float, removed: dict[str, ImageBoxes] | None = None,
) -> dict:  # fmt: skip
    """Recall and precision of the detections scoring at least ``threshold``; with
    ``removed`` (boxes dropped by ``pathodet data drop``), also the R-recall of the dropped
    boxes (``r_recall_at_1fp``; the recall is then the kept boxes' T-recall).

    ``threshold`` None (:func:`~pathodet.eval.metrics.operating_threshold` found none: no
    detection at all, or the most confident already past 1 FP per NP image) keeps nothing:
    recalls 0 and precision None, as FROC's point at 1 FP
    (:func:`~pathodet.eval.metrics.froc_points`) counts it. A collapsed detector then
    enters a mean over folds as 0 rather than dropping out of it."""
    extra = ["r_recall_at_1fp"] if removed is not None else []
    m = evaluate(above(preds, threshold), truth, iou, removed)
    return {"threshold_at_1fp": threshold, "precision_at_1fp": m["precision"],
            "recall_at_1fp": m["recall"], **{k: m["r_recall"] for k in extra}}  # fmt: skip


def run_fold(
    cfg: Config,
    folds_csv: Path,
    fold: int,
    out: Path,
    settings: PredictConfig,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict:
    """Train, predict and evaluate one fold into ``out/fold-<fold>``; returns ``fold.json``."""
    folder = out / f"fold-{fold}"
    done = folder / "fold.json"
    wanted = predict_record(settings)
    fold_cfg = _fold_cfg(cfg, folds_csv, fold)
    trained_with = training_record(fold_cfg)
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("config", trained_with) != trained_with:
            raise DatasetError(
                f"{done}: this fold was trained with another config (loss, recipe or data); "
                "choose another --out"
            )
        if record.get("predict_settings") == wanted:
            return record
        done.unlink()  # other prediction settings: the trained run is kept, predicted again
    folder.mkdir(parents=True, exist_ok=True)
    trained = _train_fold(fold_cfg, folder / "run", log, progress)
    held_out = [r for r in read_manifest(folds_csv) if r.fold == fold]
    manifest = write_manifest(folder / "held-out.csv", held_out)
    t0 = time.perf_counter()
    pred = folder / "predictions"
    predict(settings, folder / "run" / LAST, [r.image for r in held_out], pred)
    predict_seconds = time.perf_counter() - t0
    metrics = run_evaluate(manifest, pred / "predictions.csv", folder / "eval")
    gt = load_annotations(manifest)
    preds = read_predictions(pred / "predictions.csv", images=gt.annotated)
    thresholds, _, nfp = curve(preds, gt.annotated)
    point = operating_point(preds, gt.annotated, operating_threshold(thresholds, nfp, 1.0), 0.3)
    state = load_checkpoint(folder / "run" / LAST)
    record = {
        "fold": fold,
        **{
            k: metrics.get(k)
            for k in (
                "recall",
                "precision",
                "nfp",
                "froc",
                "froc_points",
                "num_gt",
                "num_positive_images",
                "num_negative_images",
            )
        },  # fmt: skip
        **point,
        "steps": trained["steps"],
        "train_minutes": trained["seconds"] / 60,
        "predict_minutes": predict_seconds / 60,
        "predict_settings": wanted,
        "config": trained_with,
        "machine": state.get("machine"),
        "pixels": state.get("pixels"),
    }
    atomic_write_text(done, json.dumps(record, indent=2))
    return record


def fmt(v) -> str:
    """A metric for tables and logs: 3 decimals, or n/a (e.g. FROC of a fold without boxes)."""
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def finished_folds(
    out: Path, settings: PredictConfig, log: Callable[[str], None] = print
) -> list[dict]:
    """The ``fold.json`` of every fold in ``out`` predicted with ``settings``; folds
    predicted otherwise are left out of the summary, with a line saying so."""
    kept = []
    for p in sorted(out.glob("fold-*/fold.json")):
        record = json.loads(p.read_text())
        if record.get("predict_settings") == predict_record(settings):
            kept.append(record)
        else:
            log(f"pathodet cv: {p.parent.name} was predicted with other settings: left out "
                "(run it again with these settings to include it)")  # fmt: skip
    return kept


def summarize_cv(records: list[dict]) -> dict:
    """Per-fold rows and mean ± sample std (ddof 1) of every numeric column."""
    out: dict = {"folds": records}
    keys = [*FOLD_KEYS, "steps", *(f"froc@{k}" for k in FROC_FPS)]
    for r in records:
        for k in FROC_FPS:
            r[f"froc@{k}"] = (r.get("froc_points") or {}).get(str(k))
    for k in keys:
        stats = mean_std([r.get(k) for r in records])
        if stats is not None:
            out[k] = stats
    return out


def cv_table_md(summary: dict, title: str) -> str:
    """Markdown: one row per fold, then mean ± std."""

    f = fmt
    keys = [k for k in (*FOLD_KEYS, "steps") if any(k in r for r in summary["folds"])]
    lines = [f"# {title}", "", "| fold | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]  # fmt: skip
    for r in summary["folds"]:
        lines.append(f"| {r['fold']} | " + " | ".join(f(r.get(k)) for k in keys) + " |")
    agg = [f"{summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" if k in summary else "n/a"
           for k in keys]  # fmt: skip
    lines.append("| mean ± std | " + " | ".join(agg) + " |")
    pts = [f"{k}: {summary[f'froc@{k}']['mean']:.3f}" for k in FROC_FPS if f"froc@{k}" in summary]
    lines += ["", "Mean recall at FPs per NP image: " + ", ".join(pts), ""]
    return "\n".join(lines)


def run_cv(
    cfg: Config,
    root: Path,
    out: Path,
    k: int = 5,
    seed: int = 0,
    group: Group = "case",
    settings: PredictConfig | None = None,
    only: list[int] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict:
    """Run (or continue) every fold, then write ``cv.json``, ``cv.md`` and ``froc.png``.

    Args:
        cfg: the training config (``data.root`` is replaced by the fold manifest).
        root: DigestPath root or manifest CSV.
        only: run just these folds (the summary covers every fold finished so far).

    Raises:
        DatasetError: the data cannot be split into ``k`` groups, or ``out`` holds
            another split.
    """
    out.mkdir(parents=True, exist_ok=True)
    try:
        folds_csv = make_folds(root, out, k, seed, group)
    except ValueError as exc:
        raise DatasetError(f"{root}: {exc}") from None
    log(f"pathodet cv: {k} folds grouped by {group}: "
        + "; ".join(f"{f['fold']}: {f['AP']} AP / {f['NP']} NP, {f['cases']} cases"
                    for f in fold_summary(read_manifest(folds_csv))))  # fmt: skip
    settings = settings or PredictConfig()
    bad = sorted(set(only or []) - set(range(k)))
    if bad:
        raise DatasetError(f"--fold {bad[0]}: folds are numbered 0 to {k - 1}")
    for fold in range(k):
        if only is not None and fold not in only:
            continue
        log(f"pathodet cv: fold {fold}")
        rec = run_fold(cfg, folds_csv, fold, out, settings, log, progress)
        log(f"pathodet cv: fold {fold}: FROC {fmt(rec['froc'])}, "
            f"{rec['train_minutes']:.1f} min training")  # fmt: skip
    finished = finished_folds(out, settings, log)
    summary = summarize_cv(finished)
    summary |= {"k": k, "seed": seed, "group": group, "loss": cfg.loss.name, "root": str(root)}
    atomic_write_text(out / "cv.json", json.dumps(summary, indent=2))
    title = f"{cfg.loss.name}: {len(finished)} of {k} folds grouped by {group} ({root})"
    atomic_write_text(out / "cv.md", cv_table_md(summary, title))
    curves = {}
    for r in finished:
        folder = out / f"fold-{r['fold']}"
        gt = load_annotations(folder / "held-out.csv")
        preds = read_predictions(folder / "predictions" / "predictions.csv", images=gt.annotated)
        _, recall, nfp = curve(preds, gt.annotated)
        curves[f"fold {r['fold']} (FROC {fmt(r['froc'])})"] = (recall, nfp)
    if curves:
        froc_png(curves, out / "froc.png")
    return summary
