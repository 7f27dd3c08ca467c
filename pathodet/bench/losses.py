"""``pathodet bench losses``: the DGHM paper's controlled missing-label comparison (Tables 3
and 4), on synthetic data where the full truth is known.

Design (paper section 4.6, with what synthetic data adds):

- One fully annotated synthetic training set; ``pathodet data drop`` removes a fraction
  ``eta`` of each AP image's boxes for every drop rate (0% is the reference), the removed
  boxes recorded. One held-out, fully annotated synthetic test set.
- Every method trains the same model (the demo's recipe, :func:`~pathodet.demo.settings.
  demo_config`) for the same number of steps, with the same seeds.
- Metrics: precision, NFP score, recall and FROC on the test set (which is fully
  annotated, so these are true values); T-recall and R-recall on the training AP images
  (the kept and the removed boxes); true recall and true precision on the training AP
  images against every real SRC in them.

Output folder (``--out``)::

    data/full/  data/test/                    synthetic roots (train fully annotated, test)
    data/drop-30/ ...                         pathodet data drop copies, + folds.csv
    runs/seed0/drop-30/dghm/                  one training run (checkpoints removed when done)
        predictions/test/  predictions/train/ pathodet predict folders
        eval-test/  eval-train/               pathodet evaluate folders
        result.json                           the run's metrics (written last: it marks done)

Every stage is skipped when its output is there and was made from the same settings, so an
interrupted benchmark continues where it stopped. The report (:mod:`pathodet.bench.
losses_report`) is written from the ``result.json`` files.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pathodet.bench.losses_methods import (
    METHODS,
    PRIOR_METHOD,
    TEACHER_METHOD,
    LossBenchSettings,
)
from pathodet.bench.pudet import (
    PU_METHODS,
    pool_prior,
    prepare_pool,
    pu_config,
    purify_result,
    purify_stage,
)
from pathodet.bench.speed import git_commit
from pathodet.core.io import atomic_write_text
from pathodet.data.digestpath import FULL_DIR, NEG_DIR, POS_DIR, load_records, write_manifest
from pathodet.data.drop import REMOVED_DIR, drop_annotations
from pathodet.data.synth import write_synthetic_dataset
from pathodet.demo.settings import config_for_steps, demo_config
from pathodet.eval.evaluate import run_evaluate
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import predict
from pathodet.purify.classifier import PUConfig
from pathodet.training.config import Config, same_config
from pathodet.training.logs import read_metrics
from pathodet.training.run_dir import BEST, LAST, absolute_paths, can_resume
from pathodet.training.train import train


def rate_name(rate: float) -> str:
    """``0.3`` -> ``"drop-30"`` (folder name of a drop rate)."""
    return f"drop-{round(rate * 100):02d}"


def run_dir(out: Path, seed: int, rate: float, method: str) -> Path:
    return out / "runs" / f"seed{seed}" / rate_name(rate) / method


def purify_dir(out: Path, seed: int, rate: float, method: str) -> Path:
    return out / "runs" / f"seed{seed}" / rate_name(rate) / f"purify-{PU_METHODS[method]}"


def purify_settings(
    out: Path, s: LossBenchSettings, seed: int, rate: float, method: str
) -> tuple[PUConfig, dict]:
    """A PUDet student's purification settings and the stamp that makes them current: the
    PU config, the teacher's config and the pool. Makes the pool when missing."""
    teacher = run_dir(out, seed, rate, TEACHER_METHOD)
    if not (teacher / "result.json").is_file():
        run_one(out, s, seed, rate, TEACHER_METHOD, keep=True)
    pool = prepare_pool(
        out / "data", s.pool_positive, s.pool_negative, s.image_size, s.data_seed + 2000
    )
    prior = pool_prior(pool, 512) if s.pu_prior == "truth" else None
    cfg = pu_config(512, 256, s.pu_steps, s.pu_prior_steps, seed, prior)
    teacher_cfg = json.loads((teacher / "result.json").read_text())["config"]
    params = {"pu": cfg.model_dump(mode="json"), "teacher": teacher_cfg,
              "pool": [s.pool_positive, s.pool_negative, s.image_size, s.data_seed]}  # fmt: skip
    return cfg, params


def prepare_purified(out: Path, s: LossBenchSettings, seed: int, rate: float, method: str) -> dict:
    """The teacher (retrained when its checkpoint was removed) and the purified tiles of a
    PUDet student (:func:`purify_settings`); returns the purification summary. The random
    control selects as many tiles as the PU classifier did."""
    teacher = run_dir(out, seed, rate, TEACHER_METHOD)
    if not (teacher / LAST).is_file():
        (teacher / "result.json").unlink(missing_ok=True)
        run_one(out, s, seed, rate, TEACHER_METHOD, keep=True)
    cfg, params = purify_settings(out, s, seed, rate, method)
    data, pool = out / "data", out / "data" / "pool-images"
    pu = purify_stage(purify_dir(out, seed, rate, "pudet"), data / rate_name(rate), pool,
                      teacher / LAST, cfg, params)  # fmt: skip
    if PU_METHODS[method] == "pu":
        return pu
    cfg = cfg.model_copy(update={"selection": "random", "select": pu["selected"]})
    params = {**params, "pu": cfg.model_dump(mode="json")}
    return purify_stage(purify_dir(out, seed, rate, method), data / rate_name(rate), pool,
                        teacher / LAST, cfg, params)  # fmt: skip


def plan(s: LossBenchSettings) -> list[tuple[int, float, str]]:
    """``(seed, rate, method)`` of every run, seed first: a half-finished benchmark has whole
    seeds done."""
    return [(seed, r, m) for seed in s.seeds for r in s.drop_rates for m in s.methods]


def _stamped(folder: Path, params: dict, make: Callable[[], object]) -> None:
    """Run ``make`` unless ``folder`` was made from ``params`` (its ``bench.json``)."""
    stamp = folder / "bench.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        return
    if folder.exists():
        shutil.rmtree(folder)
    make()
    atomic_write_text(stamp, json.dumps(params))


def prepare_data(out: Path, s: LossBenchSettings, log: Callable[[str], None]) -> None:
    """The fully annotated training and test roots, and one dropped copy per rate.

    Each dropped copy also gets ``folds.csv``: its images in fold 1 (training) and one AP and
    one NP test image in fold 0, the trainer's small held-out set (so that every training
    image is trained on and T-recall/R-recall cover all of them).
    """
    data = out / "data"
    sizes = {"size": s.image_size, "seed": s.data_seed}
    full, test = data / "full", data / "test"
    train_params = {**sizes, "positive": s.train_positive, "negative": s.train_negative}
    _stamped(full, train_params, lambda: write_synthetic_dataset(
        full, s.train_positive, s.train_negative, s.image_size, s.data_seed, 1.0,
        images_per_slide=2,
    ))  # fmt: skip
    test_params = {**sizes, "positive": s.test_positive, "negative": s.test_negative}
    _stamped(test, test_params, lambda: write_synthetic_dataset(
        test, s.test_positive, s.test_negative, s.image_size, s.data_seed + 1000, 1.0,
        images_per_slide=1,
    ))  # fmt: skip
    held_out = []
    for attribute in ("AP", "NP"):
        held_out += [r for r in load_records(test) if r.attribute == attribute][:1]
    for rate in s.drop_rates:
        root = data / rate_name(rate)

        def make(root: Path = root, rate: float = rate) -> None:
            drop_annotations(full, root, rate, s.data_seed)
            records = [replace(r, fold=1) for r in load_records(root)]
            write_manifest(root / "folds.csv", records + [replace(r, fold=0) for r in held_out])

        _stamped(root, {**train_params, "rate": rate}, make)
    log(f"data ready in {data}")


def bench_config(out: Path, s: LossBenchSettings, seed: int, rate: float, method: str) -> Config:
    """The training config of one run: the demo's recipe, ``s.steps`` steps on the paper's
    stretched 14-epoch schedule, the method's loss, then ``s.overrides``."""
    m = METHODS[method]
    root = out / "data" / rate_name(rate)
    extra = [*m.overrides, "train.val_tiles=8"]
    if method == "score_ss":
        prior = run_dir(out, seed, rate, PRIOR_METHOD) / LAST
        extra.append(f"loss.soft_sampling.prior_checkpoint={prior.absolute()}")
    if method in PU_METHODS:
        teacher = run_dir(out, seed, rate, TEACHER_METHOD) / LAST
        extra += [f"data.pseudo={purify_dir(out, seed, rate, method).absolute()}",
                  "train.distill.enabled=true", f"train.distill.teacher={teacher.absolute()}"]  # fmt: skip
    extra += s.overrides

    def make(epochs: int, milestones: list[int]) -> Config:
        cfg = demo_config(root, m.loss, seed, epochs, milestones, extra=extra)
        cfg.data.folds = root / "folds.csv"
        return cfg

    cfg = config_for_steps(make, s.steps)
    return absolute_paths(cfg)


def predict_settings(s: LossBenchSettings) -> PredictConfig:
    """Whole images in one window (they are smaller than 1024 px), bf16 where native, the
    demo's NMS."""
    return PredictConfig(tile=1024, overlap=128, batch_size=2, precision="auto",
                           nms_iou=s.nms_iou)  # fmt: skip


TEST_KEYS = ("precision", "nfp", "nfp_score", "recall", "froc", "froc_points")
TRAIN_KEYS = ("precision", "t_recall", "r_recall", "true_recall", "true_precision")


def evaluate_run(out: Path, folder: Path, rate: float, s: LossBenchSettings) -> dict:
    """Predict the test images and the training AP images with ``last.pt``; both evaluations."""
    checkpoint = folder / LAST
    test, train_root = out / "data" / "test", out / "data" / rate_name(rate)
    settings = predict_settings(s)
    pred_test, pred_train = folder / "predictions" / "test", folder / "predictions" / "train"
    predict(settings, checkpoint, [test / POS_DIR, test / NEG_DIR], pred_test)
    predict(settings, checkpoint, [train_root / POS_DIR], pred_train)
    on_test = run_evaluate(test, pred_test / "predictions.csv", folder / "eval-test", plot=False)
    on_train = run_evaluate(
        train_root, pred_train / "predictions.csv", folder / "eval-train",
        removed=train_root / REMOVED_DIR, full=train_root / FULL_DIR, plot=False,
    )  # fmt: skip
    return {
        "test": {k: on_test[k] for k in TEST_KEYS},
        "train": {k: on_train[k] for k in TRAIN_KEYS},
        "counts": {
            "test_boxes": on_test["num_gt"],
            "train_kept": on_train["num_gt"],
            "train_removed": on_train["num_removed"],
            "train_true": on_train["num_true"],
        },
    }


def run_mining(folder: Path) -> dict[str, float] | None:
    """A co-mining run's counts summed over its epochs (``metrics.csv`` rows of split
    ``mining``: mined, mined_real, missed, missed_found); None for other methods."""
    mining: dict[str, float] = {}
    for row in read_metrics(folder):
        if row["split"] == "mining":
            mining[row["name"]] = mining.get(row["name"], 0.0) + row["value"]
    return mining or None


def _remove_checkpoints(folder: Path) -> None:
    for name in (LAST, BEST):
        (folder / name).unlink(missing_ok=True)


def run_one(
    out: Path, s: LossBenchSettings, seed: int, rate: float, method: str, keep: bool = False
) -> dict:
    """Train, predict and evaluate one run unless its ``result.json`` is there and current."""
    folder = run_dir(out, seed, rate, method)
    result_file = folder / "result.json"
    pu = method in PU_METHODS
    stamp = purify_settings(out, s, seed, rate, method)[1] if pu else None
    purified = None
    if pu and not (result_file.is_file() and purify_dir(out, seed, rate, method).is_dir()):
        purified = prepare_purified(out, s, seed, rate, method)  # the data: before the config
    cfg = bench_config(out, s, seed, rate, method)
    config = cfg.model_dump(mode="json")
    if result_file.is_file():
        done = json.loads(result_file.read_text())
        if same_config(done.get("config"), cfg) and done.get("purify_settings") == stamp:
            return done
    if pu and purified is None:
        purified = prepare_purified(out, s, seed, rate, method)
    if method == "score_ss" and not (run_dir(out, seed, rate, PRIOR_METHOD) / LAST).is_file():
        raise FileNotFoundError(
            f"score_ss at {rate_name(rate)} seed {seed} needs the focal run's {LAST}; it was "
            f"removed: delete {run_dir(out, seed, rate, PRIOR_METHOD) / 'result.json'} to retrain"
        )
    resume = can_resume(folder, cfg)
    if not resume and folder.exists():
        shutil.rmtree(folder)  # an earlier run with other settings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no ImageNet ResNet-18 weights")  # by design
        summary = train(cfg, folder, resume=resume, progress=False, log=lambda _: None)
    t1 = time.perf_counter()
    metrics = evaluate_run(out, folder, rate, s)
    result = {
        "method": method, "label": METHODS[method].label, "rate": rate, "seed": seed,
        "steps": summary["steps"], "train_seconds": summary["train_seconds"],
        "eval_seconds": time.perf_counter() - t1, "resumed": resume, "commit": git_commit(),
        "machine": summary.get("machine"),  # precision and CPU of the training
        **metrics,
        "mining": run_mining(folder),
        "purify": None if purified is None else purify_result(purified),
        "purify_settings": stamp,
        "config": config,
    }  # fmt: skip
    atomic_write_text(result_file, json.dumps(result, indent=1))
    if not keep:
        pending_prior = method == PRIOR_METHOD and "score_ss" in s.methods
        pending_teacher = method == TEACHER_METHOD and any(m in PU_METHODS for m in s.methods)
        if not (pending_prior or pending_teacher):
            _remove_checkpoints(folder)
        if method == "score_ss":
            _remove_checkpoints(run_dir(out, seed, rate, PRIOR_METHOD))
        if pu and method == [m for m in s.methods if m in PU_METHODS][-1]:
            _remove_checkpoints(run_dir(out, seed, rate, TEACHER_METHOD))
    return result


def run_losses(
    out: Path,
    s: LossBenchSettings,
    log: Callable[[str], None] = print,
    keep_checkpoints: bool = False,
) -> list[dict]:
    """Every run of :func:`plan`, in order; returns their results. Resumes what is done."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.json", s.model_dump_json(indent=1))
    prepare_data(out, s, log)
    runs = plan(s)
    results, t_start, trained = [], time.perf_counter(), 0
    for k, (seed, rate, method) in enumerate(runs, 1):
        t0 = time.perf_counter()
        result = run_one(out, s, seed, rate, method, keep_checkpoints)
        results.append(result)
        took = time.perf_counter() - t0
        fresh = took > 1.0  # a finished run is read back in milliseconds
        trained += fresh
        elapsed = time.perf_counter() - t_start
        eta = elapsed / trained * (len(runs) - k) if trained else float("nan")
        log(
            f"[{k}/{len(runs)}] seed {seed} {rate_name(rate)} {method:<12} "
            f"FROC {_fmt(result['test']['froc'])} R-recall {_fmt(result['train']['r_recall'])}"
            f" {f'{took:.0f} s' if fresh else '(done before)'}; ETA {eta / 60:.0f} min"
        )
    return results


def collect(out: Path, s: LossBenchSettings) -> list[dict]:
    """The results of the runs of :func:`plan` that are done, in plan order."""
    results = []
    for seed, rate, method in plan(s):
        f = run_dir(out, seed, rate, method) / "result.json"
        if f.is_file():
            result = json.loads(f.read_text())
            if "mining" not in result:  # results written before co-mining was benchmarked
                result["mining"] = run_mining(f.parent)
            results.append(result)
    return results


def _fmt(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"
