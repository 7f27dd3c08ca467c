"""Engines x precisions on real held-out DigestPath: speed, peak memory and FROC.

    .venv/bin/python docs/benchmarks/engines.py CHECKPOINT CV_FOLD_DIR [--out /tmp/engines]

``CV_FOLD_DIR`` is a fold folder of ``pathodet cv`` (``held-out.csv`` beside the fold's
run, whose checkpoint is ``CHECKPOINT``); its ``../folds.csv`` gives the training images,
of which 64 windows calibrate the int8 model (never the held-out ones). Each of torch
fp32, torch bf16, ONNX Runtime fp32 and ONNX Runtime int8 predicts the held-out images in
its own process (``pathodet predict``'s library call, the same windows and postprocess),
alone on the machine; then ``pathodet evaluate`` scores it. Written: ``OUT/engines.json``
and a Markdown table on stdout. Mpx/s counts the pixels the detector sees (the images
resized by the checkpoint's scale), including reading, resizing and merging.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def child(model: str, engine: str, precision: str, held_out: str, out: str) -> None:
    from pathodet.bench.slide_speed import peak_rss_gb
    from pathodet.data.digestpath import read_manifest
    from pathodet.predict.config import PredictConfig
    from pathodet.predict.pipeline import predict

    images = [r.image for r in read_manifest(held_out)]
    config = PredictConfig(engine=engine, precision="fp32" if precision == "int8" else precision,
                           nms_iou=0.3, num_workers=1)  # fmt: skip
    t0 = time.perf_counter()
    summary = predict(config, model, images, out)
    seconds = time.perf_counter() - t0
    peak_mb = peak_rss_gb() * 1024
    print(json.dumps({"seconds": seconds, "summary": summary["images"], "maxrss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("fold_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/engines"))
    args = parser.parse_args()
    from PIL import Image

    from pathodet.core.machine import machine_record
    from pathodet.data.digestpath import read_manifest
    from pathodet.eval.evaluate import run_evaluate
    from pathodet.model.onnx import export_onnx
    from pathodet.predict.onnx_engine import quantize_int8
    from pathodet.training.checkpoint import load_detector

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    held_out = args.fold_dir / "held-out.csv"
    held = {r.image for r in read_manifest(held_out)}
    train_images = [r.image for r in read_manifest(args.fold_dir.parent / "folds.csv")
                    if r.image not in held]  # fmt: skip
    model, cfg = load_detector(args.checkpoint)
    fp32, int8 = out / "model.onnx", out / "model.int8.onnx"
    t = time.perf_counter()
    if not fp32.is_file():
        export_onnx(model, fp32, cfg.model_dump(mode="json"), tile=cfg.data.tiling.tile_size)
    export_s = time.perf_counter() - t
    t = time.perf_counter()
    if not int8.is_file():
        quantize_int8(fp32, int8, train_images[::7], windows=64)
    quant_s = time.perf_counter() - t
    scale = cfg.data.scale
    mpx = sum(round(w * scale) * round(h * scale) for w, h in
              (Image.open(p).size for p in sorted(held))) / 1e6  # fmt: skip
    results = {"machine": machine_record("bf16"), "checkpoint": str(args.checkpoint),
               "held_out_images": len(held), "detector_mpx": mpx, "export_s": export_s,
               "quantize_s": quant_s, "runs": []}  # fmt: skip
    for engine, precision in RUNS:
        model_file = {"onnxruntime": {"fp32": fp32, "int8": int8}}.get(engine, {}).get(
            precision, args.checkpoint
        )
        pred = out / f"{engine}-{precision}"
        res = subprocess.run(
            [sys.executable, __file__, "--child", str(model_file), engine, precision,
             str(held_out), str(pred)], capture_output=True, text=True, check=True,
        )  # fmt: skip
        run = json.loads(res.stdout.strip().splitlines()[-1])
        metrics = run_evaluate(held_out, pred / "predictions.csv", pred / "eval", plot=False)
        row = {"engine": engine, "precision": precision, "seconds": run["seconds"],
               "mpx_per_s": mpx / run["seconds"], "maxrss_mb": run["maxrss_mb"],
               "froc": metrics["froc"], "recall": metrics["recall"],
               "detections": run["summary"]["predictions"]}  # fmt: skip
        results["runs"].append(row)
        print(json.dumps(row), file=sys.stderr)
    (out / "engines.json").write_text(json.dumps(results, indent=1))
    print(
        "| engine | precision | s | Mpx/s | peak RSS MB | FROC | recall |\n|---|---|---|---|---|---|---|"
    )
    for r in results["runs"]:
        print(f"| {r['engine']} | {r['precision']} | {r['seconds']:.1f} | {r['mpx_per_s']:.2f} | "
              f"{r['maxrss_mb']:.0f} | {r['froc']:.3f} | {r['recall']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:7])
    else:
        main()
