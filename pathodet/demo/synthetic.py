"""``pathodet demo``: the whole mission on synthetic data, end to end, on a CPU.

Stages, each with its own progress bar (:class:`~pathodet.demo.progress.DemoProgress`):

1. synthesize a partially annotated training set (``annotate_rate`` of the SRCs boxed) and
   a held-out, fully annotated test set;
2. train DGHM-C and focal with the same recipe and number of steps;
3. predict the test images with each final checkpoint and evaluate (recall, NFP, FROC,
   true recall/precision), with both FROC curves in one plot;
4. synthesize a small pyramidal slide and run slide inference with the DGHM-C model;
5. write ``report.md`` (:mod:`pathodet.demo.report`).

Output folder::

    data/train/  data/test/           synthetic DigestPath roots (test also holds the slide)
    runs/dghm/  runs/focal/           training runs (pathodet train layout)
    predictions/dghm/  .../focal/     predictions, eval/ (pathodet evaluate), slides/ (dghm)
    froc.png  overlays/  report.md  demo.json

Re-running into the same folder asks nothing and touches only these files. Finished work is
kept when its inputs are unchanged: training resumes from ``last.pt`` (so a killed demo
continues where it stopped), predictions and slides skip what is done.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from pathodet.core.dist import DistInfo, pick_device
from pathodet.core.io import atomic_write_text
from pathodet.core.machine import machine_line, machine_record, resolve_precision
from pathodet.data.digestpath import FULL_DIR, NEG_DIR, POS_DIR
from pathodet.data.predictions import ImagePredictions, read_predictions
from pathodet.data.synth import write_synthetic_dataset
from pathodet.data.synth.slide import truth_path, write_synthetic_slide
from pathodet.demo.calibrate import calibrated_speed, measure_speed
from pathodet.demo.progress import DemoProgress
from pathodet.demo.report import review_command, write_report
from pathodet.demo.settings import (
    LOSSES,
    MIN_FULL_STEPS,
    NOMINAL_SPEED,
    RECIPES,
    DemoSettings,
    config_for_steps,
    demo_config,
    step_seconds,
)
from pathodet.eval.annotations import load_annotations
from pathodet.eval.evaluate import run_evaluate
from pathodet.eval.matching import greedy_match
from pathodet.eval.metrics import curve, operating_threshold
from pathodet.eval.report import froc_png
from pathodet.eval.validation import tile_metrics
from pathodet.predict.config import PredictConfig, SlideConfig
from pathodet.predict.pipeline import predict
from pathodet.training.run_dir import LAST, can_resume
from pathodet.training.train import train

SLIDE_NAME = "demo-slide.tiff"


def _stages(steps: int, speed: dict) -> list[tuple[str, str, float]]:
    """``(key, label, planned seconds)`` of every stage, in order, at the measured speed."""
    window = speed["window_seconds"]  # with its reading and postprocessing
    return [
        ("synth", "synthesize data", 20.0),
        *[
            (f"train_{k}", f"train {label}", steps * step_seconds(speed))
            for k, label in LOSSES.items()
        ],  # fmt: skip
        ("evaluate", "predict + evaluate", 50 * window),
        ("slide", "whole slide", 50 * window),
        ("report", "report", 10.0),
    ]


def machine_speed(
    out: Path,
    s: DemoSettings,
    precision: str,
    device: torch.device,
    echo: Callable[[str], None],
    recipe: str = "full",
) -> dict:
    """This machine's speed on a demo ``recipe`` (:mod:`pathodet.demo.calibrate`), measured
    once per output folder and machine; nominal figures when ``s.steps`` fixes the steps."""
    if s.steps is not None:
        return {**NOMINAL_SPEED, "measured": False}
    cfg = demo_config(out / "data" / "train", "dghm", s.seed, 1, [], s.folds, RECIPES[recipe])
    key = {"recipe": recipe, "precision": precision, "tile": s.tile, "device": str(device),
           "model": cfg.model.model_dump(mode="json"),
           "crop": cfg.train.augment.crop, "batch": cfg.train.batch_size}  # fmt: skip
    echo(f"measuring this machine's speed on the {recipe} demo recipe (a few throwaway steps)")
    speed = calibrated_speed(out, key, lambda: measure_speed(cfg, precision, s.tile, device))
    return {**speed, "measured": True}


def choose_recipe(
    out: Path, s: DemoSettings, precision: str, device: torch.device, echo: Callable[[str], None]
) -> tuple[str, dict]:
    """``(recipe, speed)``: ``s.recipe``, or with ``auto`` the full recipe when the budget
    gives it at least :data:`MIN_FULL_STEPS` steps on this machine, else the light one."""
    recipe = "full" if s.recipe == "auto" else s.recipe
    speed = machine_speed(out, s, precision, device, echo, recipe)
    if s.recipe == "auto" and speed["measured"] and s.train_steps(speed) < MIN_FULL_STEPS:
        echo(f"the full recipe fits {s.train_steps(speed)} steps (< {MIN_FULL_STEPS}) in "
             f"{s.budget_minutes:g} min here: using the light one ({' '.join(RECIPES['light'])})")  # fmt: skip
        recipe = "light"
        full = speed["calibration_seconds"]
        speed = machine_speed(out, s, precision, device, echo, recipe)
        speed["calibration_seconds"] += full  # both measurements are spent from the budget
    return recipe, speed


def synthesize(out: Path, s: DemoSettings, update: Callable[[int, int], None]) -> dict:
    """The training root (partially annotated) and the test root (every SRC annotated)."""
    n_train = s.train_positive + s.train_negative
    total = n_train + s.test_positive + s.test_negative
    train = write_synthetic_dataset(
        out / "data" / "train", s.train_positive, s.train_negative, s.image_size, s.seed,
        s.annotate_rate, images_per_slide=2, progress=lambda d, _: update(d, total),
    )  # fmt: skip
    test = write_synthetic_dataset(
        out / "data" / "test", s.test_positive, s.test_negative, s.image_size, s.seed + 1000,
        1.0, images_per_slide=1, progress=lambda d, _: update(n_train + d, total),
    )  # fmt: skip
    return {"train": train["totals"], "test": test["totals"]}


def train_model(
    out: Path,
    loss: str,
    s: DemoSettings,
    steps: int,
    recipe: str,
    update: Callable[[int, int], None],
) -> dict:
    """Train one model with ``recipe`` for about ``steps`` steps; resumes an identical
    earlier run."""
    root = out / "data" / "train"
    extra = [*RECIPES[recipe], f"train.precision={s.precision}"]
    cfg = config_for_steps(
        lambda epochs, milestones: demo_config(
            root, loss, s.seed, epochs, milestones, s.folds, extra
        ),
        steps,
    )
    run_dir = out / "runs" / loss
    resume = can_resume(run_dir, cfg)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own earlier run, made with other settings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no ImageNet ResNet-18 weights")  # by design
        summary = train(
            cfg, run_dir, resume=resume, progress=False, log=lambda _: None,
            val_metrics=tile_metrics, on_step=lambda step, total, _: update(step, total),
        )  # fmt: skip
    seconds = summary["train_seconds"]  # over every resumed segment, kept in the checkpoint
    update(summary["steps"], summary["steps"])
    return {
        "loss": loss,
        "steps": summary["steps"],
        "epochs": cfg.train.epochs,
        "milestones": cfg.train.milestones,
        "resumed": resume,
        "seconds": seconds,
        "checkpoint": str(run_dir / LAST),
    }


def _settings(s: DemoSettings, count_threshold: float = 0.5) -> PredictConfig:
    return PredictConfig(
        tile=s.tile, overlap=128, batch_size=2, precision=s.precision, nms_iou=s.nms_iou,
        slides=SlideConfig(count_threshold=count_threshold),
    )  # fmt: skip


def evaluate_models(out: Path, s: DemoSettings, update: Callable[[int, int], None]) -> dict:
    """Predict the test images with each final checkpoint; metrics, curves, the FROC plot."""
    test = out / "data" / "test"
    inputs = [test / POS_DIR, test / NEG_DIR]
    n = s.test_positive + s.test_negative
    gt = load_annotations(test)
    results, curves = {}, {}
    for k, loss in enumerate(LOSSES):
        pred = out / "predictions" / loss
        predict(
            _settings(s), out / "runs" / loss / LAST, inputs, pred,
            progress=lambda _, d, __, k=k: update(k * n + d, len(LOSSES) * n),
        )  # fmt: skip
        metrics = run_evaluate(test, pred / "predictions.csv", pred / "eval", full=test / FULL_DIR)
        thresholds, recall, nfp = curve(read_predictions(pred / "predictions.csv"), gt.annotated)
        curves[LOSSES[loss]] = (recall, nfp)
        metrics["threshold_at_1fp"] = operating_threshold(thresholds, nfp, 1.0)
        results[loss] = metrics
    froc_png(curves, out / "froc.png")
    return results


def slide_inference(out: Path, s: DemoSettings, threshold: float | None, update) -> dict:
    """Synthesize the demo slide (unless an identical one is there) and detect on it."""
    slide = out / "data" / "test" / SLIDE_NAME
    stamp = slide.with_suffix(".params.json")
    params = {"width": s.slide_width, "height": s.slide_height, "seed": s.seed}
    if not (slide.is_file() and truth_path(slide).is_file() and stamp.is_file()
            and json.loads(stamp.read_text()) == params):  # fmt: skip
        write_synthetic_slide(slide, s.slide_width, s.slide_height, seed=s.seed,
                              tissue_fraction=0.5)  # fmt: skip
        atomic_write_text(stamp, json.dumps(params))
    count = threshold if threshold is not None else 0.5
    pred = out / "predictions" / "dghm"
    summary = predict(
        _settings(s, count), out / "runs" / "dghm" / LAST, [slide], pred,
        all_slides=True, progress=lambda _, d, t: update(d, t),
    )["slides"]  # fmt: skip
    record = summary["slides"][0] if summary.get("slides") else {}
    if record.get("status") == "failed":
        return {"error": record.get("error", "unknown error"), "run": summary}
    folder = pred / "slides" / slide.stem
    found = read_predictions(folder / "detections.csv").get(slide.name, ImagePredictions())
    truth = read_predictions(truth_path(slide)).get(slide.name, ImagePredictions()).boxes
    keep = found.scores >= count
    match = greedy_match(found.boxes[keep], found.scores[keep], truth)
    doc = json.loads((folder / "summary.json").read_text())
    return {
        "folder": str(folder),
        "count_threshold": count,
        "true_src": len(truth),
        "detections": int(keep.sum()),
        "hits": int((match >= 0).sum()),
        "recall": float((match >= 0).sum() / len(truth)) if len(truth) else None,
        "precision": float((match >= 0).mean()) if len(match) else None,
        "summary": doc,
        "run": summary,
    }


def run_demo(
    out: str | Path,
    settings: DemoSettings | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Run every stage into ``out``; returns what ``demo.json`` holds."""
    out = Path(out)
    s = settings or DemoSettings()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = pick_device("auto", DistInfo())
    precision = resolve_precision(s.precision, device, log=echo)
    s = s.model_copy(update={"precision": precision})
    machine = machine_record(precision, device)
    echo(f"machine: {machine_line(machine)}; precision {precision}")
    recipe, speed = choose_recipe(out, s, precision, device, echo)
    steps = s.train_steps(speed)
    plan = s.planned_seconds(speed)
    echo(
        f"pathodet demo into {out}: seed {s.seed}, {steps} training steps per model "
        + (f"(budget {s.budget_minutes:g} min; measured {speed['step_seconds']:.2f} s per step"
           f"{', reused' if speed.get('reused') else ''}; about {plan / 60:.0f} min planned)"
           if speed["measured"] else "(fixed)")
    )  # fmt: skip
    result: dict = {"settings": s.model_dump(), "steps": steps, "speed": speed,
                    "precision": precision, "recipe": recipe}  # fmt: skip
    with DemoProgress(_stages(steps, speed), enabled=progress) as bar:
        result["data"] = synthesize(out, s, bar.start("synth", "images"))
        bar.finish("synth")
        result["training"] = {}
        for loss in LOSSES:
            key = f"train_{loss}"
            tr = train_model(out, loss, s, steps, recipe, bar.start(key, "steps"))
            result["training"][loss] = tr
            bar.finish(key, f"{tr['steps']} steps" + (", reused" if tr["resumed"] else ""))
        result["evaluation"] = ev = evaluate_models(out, s, bar.start("evaluate", "images"))
        bar.finish("evaluate", _frocs(ev))
        threshold = ev["dghm"]["threshold_at_1fp"]
        result["slide"] = sl = slide_inference(out, s, threshold, bar.start("slide", "windows"))
        bar.finish("slide", sl.get("error") or f"{sl['detections']} SRC detections")
        bar.start("report", "files")
        result["seconds"] = _seconds(bar.seconds, time.perf_counter() - t0, result["training"])
        result["machine"] = {**machine, "cpus": machine["cores"], "platform": platform.platform()}
        write_report(out, result)
        bar.finish("report")
    result["seconds"] = _seconds(bar.seconds, time.perf_counter() - t0, result["training"])
    atomic_write_text(out / "demo.json", json.dumps(result, indent=2, default=str) + "\n")
    echo(_headline(result))
    echo(f"report: {out / 'report.md'}")
    echo("review the DGHM-C results (opens the app on http://127.0.0.1:8501):")
    echo(f"  {review_command(out)}")
    return result


def _seconds(stages: dict, total: float, training: dict) -> dict:
    """Stage and total wall times of this invocation, and ``end_to_end``: the total with the
    training time of runs this invocation reused or resumed (the trainer's ``train_seconds``,
    kept in each checkpoint) put back."""
    now = sum(stages.get(f"train_{k}", 0.0) for k in training)
    before = sum(training[k]["seconds"] for k in training)
    return {**stages, "total": total, "end_to_end": total - now + before}


def _frocs(ev: dict) -> str:
    return "FROC " + ", ".join(
        f"{LOSSES[k]} {ev[k]['froc']:.3f}" if ev[k].get("froc") is not None else f"{LOSSES[k]} n/a"
        for k in LOSSES
    )


def _headline(result: dict) -> str:
    t = result["seconds"]
    return (f"held-out {_frocs(result['evaluation'])}; {t['total'] / 60:.1f} min "
            f"({t['end_to_end'] / 60:.1f} min end to end)")  # fmt: skip
