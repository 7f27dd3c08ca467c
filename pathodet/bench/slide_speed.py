"""Whole-slide throughput and memory: tissue megapixels per second, time outside the forward.

Each measurement runs ``pathodet.predict.pipeline.predict`` on one synthetic slide in a fresh child process, so
its peak memory (``ru_maxrss`` of the process, and of its tile-reading workers) belongs
to that measurement alone. The detector is wrapped so that the time inside the model's
forward pass is counted apart from the per-window postprocess (box decoding, NMS); every
other second of the wall time (opening the slide, tissue mask, reading and resizing
tiles, core filtering, slide-wide merge, writing the outputs and pictures) is "outside
the forward".

    pathodet bench slide --out docs/benchmarks
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pathodet.core.io import atomic_write_text
from pathodet.model.retinanet import FrozenDetector, SRCRetinaNet
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import predict


def timed_detector(model: SRCRetinaNet, settings: PredictConfig, clock: dict[str, float]):  # noqa: ANN202
    """The production detector (:class:`FrozenDetector` at the run's settings), timed into ``clock``: hooks on
    the model add its forward passes to ``clock["forward"]``, the rest of each call (the
    per-window postprocess) to ``clock["postprocess"]``, and the windows seen to
    ``clock["windows"]``. Returns ``(detector, hook handles)``; remove the handles to stop
    timing this model."""
    for key in ("forward", "postprocess", "windows"):
        clock.setdefault(key, 0.0)
    start: list[float] = []

    def forward_started(*_: object) -> None:
        start.append(time.perf_counter())

    def forward_done(*_: object) -> None:
        clock["forward"] += time.perf_counter() - start.pop()

    handles = [model.register_forward_pre_hook(forward_started),
               model.register_forward_hook(forward_done)]  # fmt: skip
    inference = settings.window_inference(model.cfg.inference)
    detect = FrozenDetector(model, "cpu", settings.precision, inference).detect

    def timed(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        t0 = time.perf_counter()
        forward_before = clock["forward"]
        dets = detect(images)
        clock["postprocess"] += time.perf_counter() - t0 - (clock["forward"] - forward_before)
        clock["windows"] += images.shape[0]
        return dets

    return timed, handles


def measure_one(slide: Path, checkpoint: Path | None, precision: str, batch_size: int,
                workers: int, tile: int) -> dict:  # fmt: skip
    """One slide, one precision, in this process: timings, throughput, peak memory."""
    from pathodet.model import ModelConfig, build_retinanet

    if checkpoint is not None:
        from pathodet.training.checkpoint import load_detector

        model, _ = load_detector(checkpoint)
    else:
        torch.manual_seed(0)
        model = build_retinanet(ModelConfig())
    settings = PredictConfig(tile=tile, batch_size=batch_size, precision=precision,  # type: ignore[arg-type]
                             num_workers=workers)  # fmt: skip
    clock: dict[str, float] = {}
    detector, _ = timed_detector(model, settings, clock)  # a fresh model per process
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        run = predict(settings, None, [slide], out, detector=detector, model_id={"bench": 1},
                      all_slides=True)["slides"]  # fmt: skip
        wall = time.perf_counter() - t0
        if run["failed"]:
            raise RuntimeError(run["slides"])
        summary = json.loads((Path(out) / "slides" / slide.stem / "summary.json").read_text())
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "slide": slide.name,
        "level0": summary["slide"]["level_dimensions"][0],
        "precision": precision,
        "batch_size": batch_size,
        "tile": tile,
        "workers": workers,
        "windows": summary["windows"]["read"],
        "tissue_megapixels": summary["tissue_megapixels"],
        "read_megapixels": summary["read_megapixels"],
        "wall_s": wall,
        "forward_s": clock["forward"],
        "postprocess_s": clock["postprocess"],
        "stages_s": summary["timings"],
        "tissue_mpx_per_s": summary["tissue_megapixels"] / wall,
        "read_mpx_per_s": summary["read_megapixels"] / wall,
        "outside_forward": 1.0 - clock["forward"] / wall,
        "outside_detector": 1.0 - (clock["forward"] + clock["postprocess"]) / wall,
        "peak_rss_gb": self_kb / 2**20,
        "peak_rss_worker_gb": child_kb / 2**20,
        "detections": summary["detections"],
        "model": str(checkpoint) if checkpoint else "random init (ModelConfig defaults)",
    }


def _child(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pathodet.bench.slide_speed", "--child", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_bench(out: Path, sizes: list[tuple[int, int, float]], checkpoint: Path | None,
              batch_size: int = 4, workers: int = 1, tile: int = 1024,
              log=print) -> dict:  # noqa: ANN001  # fmt: skip
    """Synthesize each ``(width, height, tissue_fraction)`` slide and measure fp32, and bf16
    where it is native (emulated bf16 is ~50x slower and not measured)."""
    from pathodet.core.machine import machine_line, machine_record
    from pathodet.data.synth.slide import write_synthetic_slide

    machine = machine_record()
    log(f"machine: {machine_line(machine)}")
    precisions = ("fp32", "bf16") if machine["bf16_native"] else ("fp32",)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w, h, frac in sizes:
            slide = Path(tmp) / f"synthetic-{w}x{h}.tiff"
            t0 = time.perf_counter()
            write_synthetic_slide(slide, w, h, seed=1, tissue_fraction=frac)
            log(f"synthesized {slide.name} in {time.perf_counter() - t0:.0f} s")
            for precision in precisions:
                args = [str(slide), precision, str(batch_size), str(workers), str(tile),
                        str(checkpoint or "")]  # fmt: skip
                row = _child(args)
                log(json.dumps({k: row[k] for k in ("slide", "precision", "wall_s",
                                                    "tissue_mpx_per_s", "outside_forward",
                                                    "peak_rss_gb")}))  # fmt: skip
                rows.append(row)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
              "machine": machine}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "slide-speed.json", json.dumps(result, indent=1))
    atomic_write_text(out / "slide-speed.md", report_md(result))
    return result


def report_md(result: dict) -> str:
    from pathodet.core.machine import machine_line

    machine = result.get("machine")
    lines = [
        "# Whole-slide throughput and memory (this CPU)",
        "",
        f"torch {result['torch']}, {result['threads']} threads"
        + (f", {machine_line(machine)}" if machine else "")
        + ". Each row is one child process "
        "running `pathodet.predict.pipeline.predict` on one synthetic slide; ratios within a table come from one run.",
        "",
        "| slide (level 0) | precision | windows | tissue Mpx | wall s | tissue Mpx/s | "
        "outside forward | outside detector | peak RSS GB (main / worker) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        w, h = r["level0"]
        lines.append(
            f"| {w} x {h} | {r['precision']} | {r['windows']} | {r['tissue_megapixels']:.1f} | "
            f"{r['wall_s']:.1f} | {r['tissue_mpx_per_s']:.2f} | {100 * r['outside_forward']:.1f}% | "
            f"{100 * r['outside_detector']:.1f}% | {r['peak_rss_gb']:.2f} / "
            f"{r['peak_rss_worker_gb']:.2f} |"
        )
    lines += [
        "",
        "*Outside forward*: the share of wall time not spent in the model's forward pass "
        "(reading tiles, resizing, tissue mask, box decoding and NMS, merging, writing the "
        "outputs). *Outside detector* also counts box decoding and per-window NMS as detector.",
        f"Model: {result['rows'][0]['model'] if result['rows'] else '-'}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # the child process of run_bench
    if sys.argv[1:2] == ["--child"]:
        slide, precision, batch, workers, tile, ckpt = sys.argv[2:8]
        row = measure_one(Path(slide), Path(ckpt) if ckpt else None, precision, int(batch),
                          int(workers), int(tile))  # fmt: skip
        print(json.dumps(row))
