"""Whole-slide throughput and memory per engine: tissue area per minute, time outside the forward.

Each measurement runs :func:`pathodet.predict.pipeline.predict` on one slide with one
engine in a fresh child process, so its peak memory (``VmHWM`` of the process, and
``ru_maxrss`` of its tile-reading workers) belongs to that measurement alone. The
detector is timed in two parts: its head outputs (the model's forward: torch under the
run's precision, or ONNX Runtime's session) and the per-window postprocess (box
decoding, NMS). Every other second of the wall time (opening the slide, tissue mask,
reading and resizing tiles, core filtering, slide-wide merge, writing the outputs and
pictures) is "outside the forward".

Engines (:data:`ENGINES`): torch fp32, torch bf16 (measured only where bf16 is native:
emulated bf16 is ~50x slower), ONNX Runtime fp32 (the checkpoint exported once) and ONNX
Runtime int8 (statically quantized, calibrated on real images given by the caller).

    pathodet bench slide --checkpoint last.pt --slides ../shared/realdata/slides/cmu-1-small-region.svs \
        --calibration IMAGES --out docs/benchmarks
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pathodet.core.io import atomic_write_text
from pathodet.model.config import InferenceConfig
from pathodet.model.retinanet import FrozenDetector, HeadOutputs, SRCRetinaNet, postprocess
from pathodet.predict.config import PredictConfig, for_checkpoint
from pathodet.predict.pipeline import predict

ENGINES = ("torch-fp32", "torch-bf16", "onnxruntime-fp32", "onnxruntime-int8")

CM2_PER_MM2 = 0.01


def timed_detector(
    heads: Callable[[torch.Tensor], HeadOutputs], inference: InferenceConfig,
    clock: dict[str, float],
) -> Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]:  # fmt: skip
    """``postprocess(heads(images), inference)`` (the production detector of either engine:
    :class:`~pathodet.model.retinanet.FrozenDetector` or
    :class:`~pathodet.predict.onnx_engine.OnnxDetector`), timed into ``clock``: the head
    outputs into ``clock["forward"]``, the per-window postprocess into
    ``clock["postprocess"]``, the windows seen into ``clock["windows"]``."""
    for key in ("forward", "postprocess", "windows"):
        clock.setdefault(key, 0.0)

    def detect(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        t0 = time.perf_counter()
        outputs = heads(images)
        t1 = time.perf_counter()
        dets = postprocess(outputs, inference)
        clock["forward"] += t1 - t0
        clock["postprocess"] += time.perf_counter() - t1
        clock["windows"] += images.shape[0]
        return dets

    return detect


def torch_timed_detector(
    model: SRCRetinaNet, settings: PredictConfig, clock: dict[str, float]
) -> Callable[[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """:func:`timed_detector` of ``model`` run as prediction runs it (``settings``' precision
    and per-window postprocess)."""
    frozen = FrozenDetector(model, "cpu", settings.precision)
    return timed_detector(frozen, settings.window_inference(model.cfg.inference), clock)


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB: ``VmHWM``, which starts afresh at exec
    (``ru_maxrss`` would carry the parent's peak over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # not Linux


def measure_one(slide: Path, engine: str, model_path: Path | None, batch_size: int,
                workers: int) -> dict:  # fmt: skip
    """One slide with one engine, in this process: timings, throughput, peak memory.

    ``model_path``: a checkpoint for the torch engines, a ``.onnx`` file for ONNX Runtime;
    None: a random-init detector (``ModelConfig`` defaults, torch only).

    Raises:
        RuntimeError: the slide failed (the message is the pipeline's).
    """
    from pathodet.model import ModelConfig, build_retinanet

    kind, precision = engine.split("-")
    clock: dict[str, float] = {}
    settings = PredictConfig(batch_size=batch_size, num_workers=workers,
                             precision="fp32" if kind == "onnxruntime" else precision)  # type: ignore[arg-type]  # fmt: skip
    if kind == "onnxruntime":
        from pathodet.predict.onnx_engine import OnnxDetector

        onnx = OnnxDetector(model_path)
        settings = for_checkpoint(settings, onnx.config)
        detector = timed_detector(onnx, settings.window_inference(onnx.inference), clock)
    else:
        if model_path is not None:
            from pathodet.training.checkpoint import load_detector

            model, train_cfg = load_detector(model_path)
        else:
            torch.manual_seed(0)
            model, train_cfg = build_retinanet(ModelConfig()), None
        settings = for_checkpoint(settings, train_cfg)
        detector = torch_timed_detector(model, settings, clock)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run = predict(settings, None, [slide], out, detector=detector, model_id={"bench": 1},
                      all_slides=True)["slides"]  # fmt: skip
        wall = time.perf_counter() - t0
        if run["failed"]:
            raise RuntimeError(f"{slide}: {run['slides']}")  # e.g. unreadable, no tissue
        summary = json.loads((Path(out) / "slides" / slide.stem / "summary.json").read_text())
    tissue_cm2 = summary["tissue_area_mm2"] * CM2_PER_MM2
    return {
        "threads": torch.get_num_threads(),
        "slide": slide.name,
        "level0": summary["slide"]["level_dimensions"][0],
        "mpp": summary["slide"]["mpp"],
        "detection_mpp": summary["detection_mpp"],
        "engine": engine,
        "batch_size": batch_size,
        "window": settings.window,
        "workers": workers,
        "windows": summary["windows"]["read"],
        "tissue_megapixels": summary["tissue_megapixels"],
        "tissue_cm2": tissue_cm2,
        "read_megapixels": summary["read_megapixels"],
        "wall_s": wall,
        "forward_s": clock["forward"],
        "postprocess_s": clock["postprocess"],
        "stages_s": summary["timings"],
        "tissue_mpx_per_s": summary["tissue_megapixels"] / wall,  # NoTissue fails the slide
        "read_mpx_per_s": summary["read_megapixels"] / wall,
        "min_per_cm2": wall / 60 / tissue_cm2,
        "outside_forward": 1.0 - clock["forward"] / wall,
        "outside_detector": 1.0 - (clock["forward"] + clock["postprocess"]) / wall,
        "peak_rss_gb": peak_rss_gb(),
        "peak_rss_worker_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
        "detections": summary["detections"],
        "model": str(model_path) if model_path else "random init (ModelConfig defaults)",
    }


def _child(slide: Path, engine: str, model_path: Path | None, batch_size: int,
           workers: int) -> dict:  # fmt: skip
    cmd = [sys.executable, "-m", "pathodet.bench.slide_speed", "--child", str(slide), engine,
           str(model_path or ""), str(batch_size), str(workers)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"{slide.name}, {engine}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def engine_models(
    engines: Sequence[str], checkpoint: Path | None, calibration: Sequence[Path], tmp: Path,
    log: Callable[[str], None] = print,
) -> dict[str, Path | None]:  # fmt: skip
    """The model file each engine runs: the checkpoint for torch; for ONNX Runtime the
    checkpoint exported once into ``tmp`` (and quantized to int8, calibrated on
    ``calibration``). An engine that cannot run here is left out, with a log line: bf16
    where it is emulated, int8 without calibration images, ONNX without a checkpoint.

    Raises:
        ValueError: an engine not in :data:`ENGINES`.
    """
    from pathodet.core.machine import machine_record

    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    models: dict[str, Path | None] = {}
    for engine in engines:
        if engine == "torch-bf16" and not machine_record()["bf16_native"]:
            log("torch-bf16: skipped, bf16 is emulated on this CPU (about 50x slower)")
        elif engine.startswith("onnxruntime") and checkpoint is None:
            log(f"{engine}: skipped, needs --checkpoint to export")
        elif engine == "onnxruntime-int8" and not calibration:
            log("onnxruntime-int8: skipped, needs --calibration images")
        else:
            models[engine] = checkpoint
    if any(e.startswith("onnxruntime") for e in models):
        from pathodet.model.onnx import export_onnx
        from pathodet.training.checkpoint import load_detector

        model, cfg = load_detector(checkpoint)
        fp32 = tmp / "model.onnx"
        t0 = time.perf_counter()
        export_onnx(model, fp32, cfg.model_dump(mode="json"), tile=cfg.data.tiling.tile_size)
        log(f"exported {checkpoint} to ONNX in {time.perf_counter() - t0:.0f} s")
        models = {e: fp32 if e.startswith("onnxruntime") else p for e, p in models.items()}
        if "onnxruntime-int8" in models:
            from pathodet.predict.onnx_engine import quantize_int8

            t0 = time.perf_counter()
            models["onnxruntime-int8"] = quantize_int8(fp32, tmp / "model-int8.onnx", calibration)
            log(
                f"quantized to int8 on {len(calibration)} images in {time.perf_counter() - t0:.0f} s"
            )
    return models


def run_bench(out: Path, sizes: list[tuple[int, int, float]], checkpoint: Path | None,
              batch_size: int = 4, workers: int = 1, slides: Sequence[Path] = (),
              engines: Sequence[str] = ENGINES, calibration: Sequence[Path] = (),
              log=print) -> dict:  # noqa: ANN001  # fmt: skip
    """Measure each engine on each of ``slides`` and on a synthetic slide per
    ``(width, height, tissue_fraction)`` (0.25 µm/px, seed 1); writes ``slide-speed.json``
    and ``.md`` into ``out``."""
    from pathodet.core.machine import machine_line, machine_record
    from pathodet.data.synth.slide import write_synthetic_slide
    from pathodet.predict.reader import Slide, SlideError

    machine = machine_record()
    log(f"machine: {machine_line(machine)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = engine_models(engines, checkpoint, calibration, Path(tmp), log)
        todo = [Path(s) for s in slides]
        for w, h, frac in sizes:
            slide = Path(tmp) / f"synthetic-{w}x{h}.tiff"
            t0 = time.perf_counter()
            write_synthetic_slide(slide, w, h, seed=1, tissue_fraction=frac)
            log(f"synthesized {slide.name} in {time.perf_counter() - t0:.0f} s")
            todo.append(slide)
        failed = []
        for slide in todo:
            try:  # an unreadable slide fails here, once, not in a child per engine
                Slide(slide).close()
            except SlideError as exc:
                log(f"failed: {exc}")
                failed += [{"slide": slide.name, "engine": e, "error": str(exc)} for e in models]
                continue
            for engine, model_path in models.items():
                try:
                    row = _child(slide, engine, model_path, batch_size, workers)
                except RuntimeError as exc:  # one bad slide or engine never loses the others
                    log(f"failed: {exc}")
                    failed.append({"slide": slide.name, "engine": engine, "error": str(exc)})
                    continue
                log(json.dumps({k: row[k] for k in ("slide", "engine", "wall_s", "min_per_cm2",
                                                    "outside_forward", "peak_rss_gb",
                                                    "detections")}))  # fmt: skip
                rows.append(row)
    threads = sorted({r["threads"] for r in rows}) or [torch.get_num_threads()]
    result = {"torch": torch.__version__, "threads": threads[0] if len(threads) == 1 else threads,
              "rows": rows, "failed": failed, "machine": machine,
              "model": str(checkpoint) if checkpoint else None}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "slide-speed.json", json.dumps(result, indent=1))
    atomic_write_text(out / "slide-speed.md", report_md(result))
    return result


def report_md(result: dict) -> str:
    """The table of :func:`run_bench`'s rows, with the machine at the top."""
    from pathodet.core.machine import machine_line

    machine = result.get("machine")
    lines = [
        "# Whole-slide throughput and memory per engine",
        "",
        f"torch {result['torch']}, {result['threads']} threads"
        + (f", {machine_line(machine)}" if machine else "")
        + ". Each row is one child process running `pathodet.predict.pipeline.predict` on "
        "one slide with one engine; ratios within a table come from one run.",
        "",
        "| slide (level 0, µm/px) | engine | windows | tissue mm² | wall s | min per cm² | "
        "tissue Mpx/s (level 0) | outside forward | outside detector | peak RSS GB "
        "(main / worker) | detections |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        w, h = r["level0"]
        mpp = sum(r["mpp"]) / len(r["mpp"]) if isinstance(r["mpp"], list) else r["mpp"]
        lines.append(
            f"| {r['slide']} ({w} x {h}, {mpp:.3g}) | {r['engine']} | {r['windows']} | "
            f"{100 * r['tissue_cm2']:.1f} | {r['wall_s']:.1f} | {r['min_per_cm2']:.1f} | "
            f"{r['tissue_mpx_per_s']:.2f} | {100 * r['outside_forward']:.1f}% | "
            f"{100 * r['outside_detector']:.1f}% | {r['peak_rss_gb']:.2f} / "
            f"{r['peak_rss_worker_gb']:.2f} | {r['detections']} |"
        )
    lines += [f"| {f['slide']} | {f['engine']} | failed: {f['error'][-200:]} |"
              for f in result.get("failed", [])]  # fmt: skip
    lines += [
        "",
        "*Min per cm²*: wall time over the tissue area the mask found. *Outside forward*: the "
        "share of wall time not spent computing the model's outputs (reading tiles, "
        "resizing, tissue mask, box decoding and NMS, merging, writing the outputs). "
        "*Outside detector* also counts box decoding and per-window NMS as detector. The "
        "worker's peak includes the pages it shares with the main process from the fork.",
        f"Model: {result.get('model') or 'random init (ModelConfig defaults)'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # the child process of run_bench
    if sys.argv[1:2] == ["--child"]:
        slide, engine, model_path, batch, workers = sys.argv[2:7]
        row = measure_one(Path(slide), engine, Path(model_path) if model_path else None,
                          int(batch), int(workers))  # fmt: skip
        print(json.dumps(row))
