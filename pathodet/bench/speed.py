"""``pathodet bench speed``: the speed figures of one run, side by side on this machine.

- training step time per loss relative to focal (:func:`pathodet.bench.loss_overhead.measure`);
- image inference megapixels per second, fp32 and bf16 autocast, at two window sizes, with
  the share of wall time spent outside the model's forward pass (forward hooks);
- the detector's achieved GFLOP/s against the bf16 and fp32 matrix-multiply peaks of this
  CPU, measured in the same run (FLOPs of one window counted by
  :class:`torch.utils.flop_counter.FlopCounterMode`: 2 per multiply-add);
- the FROC of fp32 and bf16 prediction on a held-out synthetic split (by default the
  demo's test split and DGHM-C checkpoint), and their difference.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pathodet.bench.slide_speed import torch_timed_detector
from pathodet.core.io import atomic_write_text
from pathodet.core.machine import machine_line, machine_record
from pathodet.model.retinanet import SRCRetinaNet
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import detect_image


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of an ``n x n`` by ``n x n`` matrix product (``2 n^3`` FLOPs), best of
    ``repeats``, through both of torch's CPU libraries: ``torch.mm`` (MKL) and a 1x1
    convolution (oneDNN, the library the detector's convolutions run on), which computes
    the same product. ``peak`` is the higher: the most this CPU was seen to do in ``dtype``.
    """
    a, b = torch.rand(n, n).to(dtype), torch.rand(n, n).to(dtype)
    mm = 2 * n**3 / _best(lambda: torch.mm(a, b), repeats) / 1e9
    side = int(round(n**0.5))  # n pixels of n channels: (side^2 x n) @ (n x n)
    x = torch.rand(1, n, side, side).to(dtype)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).to(dtype).eval()
    with torch.no_grad():
        one = 2 * side * side * n * n / _best(lambda: conv(x), repeats) / 1e9
    return {"mm": mm, "conv1x1": one, "peak": max(mm, one)}


def window_flops(model: SRCRetinaNet, tile: int) -> float:
    """FLOPs of the model's forward pass on one ``tile`` x ``tile`` window."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, tile, tile))
    return float(counter.get_total_flops())


def image_inference(
    model: SRCRetinaNet, rgb: np.ndarray, tile: int, precision: str, repeats: int = 2
) -> dict:
    """Throughput of :func:`detect_image` on ``rgb`` (the production path, per window
    postprocess and whole-image NMS included), median of ``repeats`` after a warm-up; the
    forward passes and windows are counted by :func:`torch_timed_detector`."""
    settings = PredictConfig(tile=tile, overlap=128, batch_size=2, precision=precision)  # type: ignore[arg-type]
    clock: dict[str, float] = {}
    detect = torch_timed_detector(model, settings, clock)
    walls, forwards, windows = [], [], []
    detect_image(detect, rgb[:tile, :tile], settings)  # warm-up
    for _ in range(repeats):
        clock.update(forward=0.0, postprocess=0.0, windows=0)
        t0 = time.perf_counter()
        detect_image(detect, rgb, settings)
        walls.append(time.perf_counter() - t0)
        forwards.append(clock["forward"])
        windows.append(int(clock["windows"]))
    h, w = rgb.shape[:2]
    wall, forward = statistics.median(walls), statistics.median(forwards)
    return {
        "tile": tile,
        "precision": precision,
        "megapixels": h * w / 1e6,
        "windows": windows[0],
        "wall_s": wall,
        "forward_s": forward,
        "mpx_per_s": h * w / 1e6 / wall,
        "outside_forward": 1.0 - forward / wall,
    }


def froc_by_precision(checkpoint: Path, test_root: Path, out: Path, tile: int) -> dict:
    """FROC of fp32 and bf16 prediction of ``test_root`` with ``checkpoint``."""
    from pathodet.eval.evaluate import run_evaluate
    from pathodet.predict.pipeline import predict

    result = {}
    inputs = [test_root / "sig-train-pos", test_root / "sig-train-neg"]
    for precision in ("fp32", "bf16"):
        pred = out / f"froc-{precision}"
        settings = PredictConfig(tile=tile, overlap=128, batch_size=2, precision=precision)  # type: ignore[arg-type]
        predict(settings, checkpoint, inputs, pred)
        m = run_evaluate(test_root, pred / "predictions.csv", pred / "eval")
        result[precision] = {"froc": m["froc"], "recall": m["recall"], "nfp": m["nfp"]}
    result["delta"] = result["bf16"]["froc"] - result["fp32"]["froc"]
    return result


def git_commit() -> str:
    """The commit the code was at (``+dirty`` with uncommitted changes), or ``unknown``."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def run_speed(
    out: Path,
    checkpoint: Path | None,
    test_root: Path | None,
    image_size: int = 2048,
    tiles: tuple[int, ...] = (512, 1024),
    losses: tuple[str, ...] = (
        "ce",
        "focal",
        "ghm",
        "sce",
        "dghm",
        "dghm_star",
        "oss",
        "cleanliness",
    ),  # fmt: skip
    log=print,
) -> dict:
    """Every figure; writes ``out/speed.json`` and ``out/speed.md``."""
    from pathodet.bench.loss_overhead import measure
    from pathodet.data.synth import synthesize_image
    from pathodet.training.checkpoint import load_detector

    out.mkdir(parents=True, exist_ok=True)
    machine = machine_record()
    log(f"machine: {machine_line(machine)}")
    # bf16 is measured only where it is native: emulated, it is ~50x slower and says nothing
    precisions = ("fp32", "bf16") if machine["bf16_native"] else ("fp32",)
    if not machine["bf16_native"]:
        log(f"bf16 not measured: {machine['bf16_reason']}")
    native = precisions[-1]
    result: dict = {"threads": torch.get_num_threads(), "commit": git_commit(),
                    "command": "pathodet bench speed", "machine": machine}  # fmt: skip
    log("matrix-multiply peaks")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    result["matmul_gflops"] = {p: matmul_peak(dtypes[p]) for p in precisions}
    log(f"training step per loss (batch 8, 600 px, {native}, paper model)")
    result["train_step"] = measure(list(losses), precision=native, repeats=3)
    if checkpoint is not None:
        model, _ = load_detector(checkpoint)
        result["model"] = str(checkpoint)
    else:
        from pathodet.demo.settings import demo_config
        from pathodet.model import build_retinanet

        model = build_retinanet(demo_config(".", "dghm", 0, 1, []).model)
        result["model"] = "demo architecture, random weights (same cost)"
    model.eval()
    rgb = synthesize_image(np.random.default_rng(0), image_size, image_size, "AP").rgb
    result["inference"] = []
    for tile in tiles:
        flops = window_flops(model, tile)
        for precision in precisions:
            log(f"inference: {tile}-px windows, {precision}")
            r = image_inference(model, rgb, tile, precision)
            r["gflops_per_window"] = flops / 1e9
            r["achieved_gflops"] = flops * r["windows"] / r["forward_s"] / 1e9
            r["share_of_peak"] = r["achieved_gflops"] / result["matmul_gflops"][precision]["peak"]
            result["inference"].append(r)
    if checkpoint is not None and test_root is not None and "bf16" in precisions:
        log("FROC: fp32 against bf16 prediction")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="pathodet-speed-") as work:
            result["froc"] = froc_by_precision(checkpoint, test_root, Path(work), 1024)
    atomic_write_text(out / "speed.json", json.dumps(result, indent=1))
    text = speed_md(result)
    if (out / "share.md").is_file():  # the two-process figures of pathodet bench share
        from pathodet.bench.share import with_section

        text = with_section(text, (out / "share.md").read_text())
    atomic_write_text(out / "speed.md", text)
    return result


def speed_md(r: dict) -> str:
    """The markdown report of :func:`run_speed`'s result."""
    ts = r["train_step"]
    machine = r.get("machine")
    lines = [
        "# Speed",
        "",
        f"`{r.get('command', 'pathodet bench speed')}` at commit {r.get('commit', 'unknown')}: "
        f"one run on this machine, {r['threads']} torch threads; every ratio below is between "
        "figures of the same run.",
        "",
        f"Machine: {machine_line(machine) if machine else 'not recorded'}."
        + (
            ""
            if not machine or machine["bf16_native"]
            else f" bf16 not measured: {machine['bf16_reason']}."
        ),
        "",
        "## Training step per loss (relative to focal)",
        "",
        f"Batch {ts['setting']['batch']}, {ts['setting']['size']} px, "
        f"{ts['setting'].get('precision', 'bf16')}, the paper's model "
        "(256-channel FPN), median of 3 alternating rounds.",
        "",
        "| loss | step (s) | ratio to focal |",
        "|---|---|---|",
    ]
    for name, s in ts["step_s"].items():
        lines.append(f"| {name} | {s:.3f} | {ts['step_ratio_to_focal'][name]:.3f} |")
    mm = r["matmul_gflops"]
    peaks = ", ".join(
        f"{p} {m['peak']:.0f} GFLOP/s (mm {m['mm']:.0f}, 1x1 conv {m['conv1x1']:.0f})"
        for p, m in mm.items()
    )
    lines += [
        "",
        "## Image inference",
        "",
        f"Model: {r['model']}. A synthetic image, the production path (`detect_image`: "
        "windows, per-window postprocess, whole-image NMS). Matrix-multiply peak of this CPU "
        "in the same run, 2048 x 2048 products, the better of `torch.mm` (MKL) and a 1x1 "
        f"convolution (oneDNN): {peaks}.",
        "",
        "| window | precision | Mpx/s | outside the forward | GFLOP/s achieved | share of "
        "the matmul peak |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["inference"]:
        lines.append(
            f"| {x['tile']} | {x['precision']} | {x['mpx_per_s']:.2f} | "
            f"{100 * x['outside_forward']:.1f}% | {x['achieved_gflops']:.0f} | "
            f"{100 * x['share_of_peak']:.0f}% |"
        )
    if "froc" in r:
        f = r["froc"]
        lines += [
            "",
            "## bf16 against fp32 accuracy",
            "",
            "FROC on the held-out split (1024-px windows, NMS at IoU 0.5): fp32 "
            f"{f['fp32']['froc']:.4f}, bf16 {f['bf16']['froc']:.4f}, difference "
            f"{f['delta']:+.4f} (target: within 0.005).",
        ]
    return "\n".join(lines) + "\n"
