"""The demo's ``report.md``: the numbers, the FROC plot, test overlays and the slide heatmap.

Overlays show a test image twice, DGHM-C left and focal right, each model's detections at
its own operating point of one false positive per normal (NP) test image: green where a
detection hits a real SRC (IoU >= 0.3), red where it does not; every real SRC is outlined
in yellow underneath.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from pathodet.core.io import atomic_write_image, atomic_write_text
from pathodet.data.digestpath import load_records
from pathodet.data.images import read_image
from pathodet.data.overlay import draw_boxes
from pathodet.data.predictions import ImagePredictions, read_predictions
from pathodet.demo.settings import LOSSES
from pathodet.eval.annotations import load_annotations
from pathodet.eval.overlays import classify

YELLOW, GREEN, RED = (255, 214, 0), (30, 200, 60), (230, 30, 30)
ROWS = (
    ("froc", "FROC (mean recall at 1-32 FPs per NP image)"),
    ("recall", "recall (IoU >= 0.3, every detection >= 0.05)"),
    ("precision", "precision"),
    ("nfp", "NFP: false positives per NP image"),
    ("nfp_score", "NFP score (max(100 - NFP, 0))"),
    ("true_recall", "true recall (every real SRC)"),
    ("true_precision", "true precision"),
    ("threshold_at_1fp", "score threshold at 1 FP per NP image"),
)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _panel(rgb: np.ndarray, truth: np.ndarray, found: ImagePredictions) -> tuple[np.ndarray, int]:
    """``rgb`` with the truth and ``found`` drawn, and how many detections hit an SRC."""
    parts = classify(truth, found)
    img = draw_boxes(rgb, truth, YELLOW, 2)
    img = draw_boxes(img, parts["new"], RED, 3)
    return draw_boxes(img, parts["hits"], GREEN, 3), len(parts["hits"])


def overlays(out: Path, result: dict) -> list[dict]:
    """Side-by-side overlays of the AP test images richest in SRCs and one NP image."""
    test = out / "data" / "test"
    gt = load_annotations(test)
    records = load_records(test)
    ap = sorted((r for r in records if r.attribute == "AP"),
                key=lambda r: (-len(gt.annotated[r.name].boxes), r.name))  # fmt: skip
    np_ = sorted((r for r in records if r.attribute == "NP"), key=lambda r: r.name)
    n = result["settings"]["overlays"]
    chosen = ap[: max(n - 1, 1)] + np_[:1] if n else []
    preds = {k: read_predictions(out / "predictions" / k / "predictions.csv") for k in LOSSES}
    items = []
    for rank, rec in enumerate(chosen):
        rgb = read_image(rec.image)
        truth = gt.annotated[rec.name].boxes
        panels, counts = [], {}
        for k in LOSSES:
            t = result["evaluation"][k]["threshold_at_1fp"]
            p = preds[k].get(rec.name, ImagePredictions())
            keep = p.scores >= (t if t is not None else np.inf)
            panel, hits = _panel(rgb, truth, ImagePredictions(p.boxes[keep], p.scores[keep]))
            panels.append(panel)
            counts[k] = {"detections": int(keep.sum()), "hits": hits}
        gap = np.full((rgb.shape[0], 16, 3), 255, np.uint8)
        both = np.concatenate([panels[0], gap, panels[1]], axis=1)
        small = Image.fromarray(both).resize(
            (both.shape[1] // 2, both.shape[0] // 2), Image.Resampling.LANCZOS
        )
        kind = rec.attribute.lower()
        path = out / "overlays" / f"{kind}-{rank + 1 if kind == 'ap' else 1}.png"  # no spaces
        atomic_write_image(path, np.asarray(small))
        items.append({"file": path.relative_to(out).as_posix(), "image": rec.name,
                      "attribute": rec.attribute, "true_src": len(truth), "counts": counts})  # fmt: skip
    return items


def _executable() -> str:
    """``pathodet``, or the path of the one beside this Python when that is not on PATH
    (``make demo`` runs ``.venv/bin/pathodet``)."""
    local = Path(sys.executable).parent / "pathodet"
    found = shutil.which("pathodet")
    if not local.is_file() or (found and Path(found).resolve() == local.resolve()):
        return "pathodet"
    try:
        return local.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(local)


def review_command(out: Path) -> str:
    """The one command that opens the review app on the demo's DGHM-C results."""
    q = shlex.quote
    return (
        f"{q(_executable())} review --data {q(str(out / 'data' / 'test'))} "
        f"--predictions {q(str(out / 'predictions' / 'dghm'))} "
        f"--db {q(str(out / 'reviews.sqlite'))}"
    )


def write_report(out: Path, result: dict) -> Path:
    """Overlays and ``out/report.md`` from the demo's result dict."""
    items = overlays(out, result)
    ev, tr, s = result["evaluation"], result["training"], result["settings"]
    data = result["data"]
    labels = [LOSSES[k] for k in LOSSES]
    dg, fo = ev["dghm"].get("froc"), ev["focal"].get("froc")
    met = dg is not None and dg >= 0.7 and (fo is None or dg > fo)
    lines = [
        "# pathodet demo",
        "",
        f"Synthetic DigestPath-like data (seed {s['seed']}), both models trained from scratch "
        f"for {result['steps']} steps each in {result.get('precision', 'fp32')}. "
        + _speed_text(result)
        + f" The whole demo took {result['seconds']['end_to_end'] / 60:.1f} min end to end"
        + (
            f" (this run {result['seconds']['total'] / 60:.1f} min, reusing earlier training)"
            if any(tr[k]["resumed"] for k in tr)
            else ""
        )
        + ".",
        "",
        "## Data",
        "",
        f"- training: {data['train']['positive']} AP + {data['train']['negative']} NP images "
        f"of about {s['image_size']} px, {data['train']['n_src']} SRCs of which "
        f"{data['train']['n_annotated']} are annotated "
        f"({100 * data['train']['annotated_fraction']:.0f}%: the rest look like background "
        f"to a naive loss), {data['train']['n_mimics']} SRC mimics (goblet cells, "
        "histiocytes, fat);",
        f"- held-out test: {data['test']['positive']} AP + {data['test']['negative']} NP "
        f"images, every one of the {data['test']['n_src']} SRCs annotated.",
        "",
        "## Held-out test split",
        "",
        f"Target: DGHM-C FROC >= 0.7 and above focal: **{'met' if met else 'not met'}**.",
        "",
        "| metric | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(ev[k].get(key)) for k in LOSSES) + " |")
    points = ev["dghm"].get("froc_points") or {}
    for fp in points:
        vals = [_fmt((ev[k].get("froc_points") or {}).get(fp)) for k in LOSSES]
        lines.append(f"| recall at {fp} FP/NP image | " + " | ".join(vals) + " |")
    lines.append(
        "| training (steps, minutes) | "
        + " | ".join(f"{tr[k]['steps']}, {tr[k]['seconds'] / 60:.1f}" for k in LOSSES)
        + " |"
    )
    lines += [
        "",
        "Each model is the final checkpoint of a fixed schedule (no selection on held-out "
        f"data); windows of {s['tile']} px, {result.get('precision', 'fp32')}, NMS at IoU "
        f"{s['nms_iou']:g}. Per-model "
        "reports: `predictions/<loss>/eval/report.md`.",
        "",
        "![FROC of both models on the test split](froc.png)",
        "",
        "## Detections on test images",
        "",
        "Left DGHM-C, right focal, each at its threshold of 1 false positive per NP image. "
        "Yellow: every real SRC; green: detection on an SRC; red: detection elsewhere.",
        "",
    ]
    for it in items:
        c = it["counts"]
        found = ", ".join(f"{LOSSES[k]} {c[k]['hits']}/{c[k]['detections']}" for k in LOSSES)
        lines += [f"**{it['image']}** ({it['attribute']}, {it['true_src']} SRC; hits/detections: "
                  f"{found})", "", f"![{it['image']}]({it['file']})", ""]  # fmt: skip
    lines += _slide_lines(out, result)
    lines += ["## Review", "", "Open the DGHM-C results in the review app:", "", "```bash",
              review_command(out), "```", ""]  # fmt: skip
    text = "\n".join(lines)
    return atomic_write_text(out / "report.md", text)


def _speed_text(result: dict) -> str:
    """Where the run happened and how its step count was chosen."""
    m, sp = result["machine"], result.get("speed") or {}
    where = (f"Machine: {m.get('cpu_model', '?')}, torch CPU capability "
             f"{m.get('cpu_capability', '?')} ({'native' if m.get('bf16_native') else 'no native'}"
             f" bf16), {m['cpus']} core(s).")  # fmt: skip
    recipe = result.get("recipe", "full")
    where += f" Recipe: {recipe}" + (" (64-channel FPN and head)." if recipe == "light" else ".")
    if not sp.get("measured"):
        return where + " The step count was given (no speed measurement)."
    return where + (
        f" Measured before training{' (in an earlier run into this folder)' if sp.get('reused') else ''}: "
        f"{sp['step_seconds']:.3f} s per training step and "
        f"{sp['window_seconds']:.3f} s per {result['settings']['tile']}-px prediction window, "
        f"which set {result['steps']} steps for the {result['settings']['budget_minutes']:g}-"
        "minute budget."
    )


def _slide_lines(out: Path, result: dict) -> list[str]:
    sl = result["slide"]
    if sl.get("error"):
        return ["## Whole slide", "", f"The slide stage failed: {sl['error']}", ""]
    doc = sl["summary"]
    folder = Path(sl["folder"]).relative_to(out).as_posix()
    w, h = doc["slide"]["level_dimensions"][0]
    t = doc.get("timings", {}).get("total")
    return [
        "## Whole slide",
        "",
        f"A {w} x {h} px pyramidal TIFF (0.25 um/px) with {sl['true_src']} SRCs, read through "
        f"OpenSlide; {doc['windows']['read']} windows on {doc['tissue_area_mm2']:.2f} mm2 of "
        f"tissue{f' in {t:.0f} s' if t else ''}. At the DGHM-C threshold "
        f"{sl['count_threshold']:.3f}: {sl['detections']} detections, {sl['hits']} on real SRCs "
        f"(recall {_fmt(sl['recall'])}, precision {_fmt(sl['precision'])}). Detections for "
        f"QuPath: `{folder}/detections.geojson`.",
        "",
        f"![SRC density heatmap]({folder}/heatmap.png)",
        "",
    ]
