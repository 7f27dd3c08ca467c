"""Where a training step of the real-data recipe goes, and what makes it faster.

    .venv/bin/python docs/benchmarks/train_profile.py [--steps 12] [--out /tmp/train-profile]

The recipe is ``configs/digestpath.yaml`` (ResNet-18, 128-channel FPN, DGHM-C, batch 8 of
256-px crops at 20x). The batch is real: 8 crops of real AP DigestPath images (halved,
as the recipe does) holding their annotated boxes, made once, so that every variant times
the same work. Each variant is timed as the median of ``--steps`` steps after 3 warm-up
steps, in this one process, one variant after the other:

* ``baseline``: what ``pathodet train`` runs (``precision: auto``);
* ``fp32``: the same in fp32;
* ``channels_last``: model and images in channels-last memory format;
* ``fused_adam``: ``torch.optim.Adam(fused=True)``;
* ``compile``: ``torch.compile`` of the model (inductor; its compile time apart).

Then ``torch.profiler`` over 3 baseline steps gives the operators by self CPU time.
Written: ``OUT/train_profile.json`` and a Markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
DIGESTPATH = ROOT.parent / "shared" / "digestpath"


def real_batch(cfg, n: int = 8, crop: int = 256, seed: int = 0):
    """``(images (n, 3, crop, crop) float, boxes list of (K, 4), is_ap (n,))`` from real AP
    images, halved as the recipe does, each crop centred on an annotated box."""
    from pathodet.data.digestpath import load_records
    from pathodet.data.images import read_image, rescale_image
    from pathodet.data.samples import load_sample

    rng = np.random.default_rng(seed)
    records = [r for r in load_records(DIGESTPATH) if r.attribute == "AP"]
    images, boxes = [], []
    for r in records[:: max(1, len(records) // n)][:n]:
        s = load_sample(r, verify_image=False)
        rgb = rescale_image(read_image(r.image), cfg.data.scale)
        b = s.boxes * cfg.data.scale
        c = b[rng.integers(len(b))]
        cx, cy = (c[0] + c[2]) / 2, (c[1] + c[3]) / 2
        x0 = int(np.clip(cx - crop / 2, 0, rgb.shape[1] - crop))
        y0 = int(np.clip(cy - crop / 2, 0, rgb.shape[0] - crop))
        tile = rgb[y0 : y0 + crop, x0 : x0 + crop]
        k = b - [x0, y0, x0, y0]
        k[:, 0::2] = k[:, 0::2].clip(0, crop)
        k[:, 1::2] = k[:, 1::2].clip(0, crop)
        k = k[((k[:, 2] - k[:, 0]) > 4) & ((k[:, 3] - k[:, 1]) > 4)]
        images.append(torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1))
        boxes.append(torch.from_numpy(k.astype(np.float32)))
    return torch.stack(images).float() / 255, boxes, torch.ones(len(images), dtype=torch.bool)


def time_steps(model, opt, criterion, images, targets, precision, steps: int) -> list[float]:
    from pathodet.training.train import train_step

    for _ in range(3):
        train_step(model, opt, criterion, images, targets, precision)
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        train_step(model, opt, criterion, images, targets, precision)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("/tmp/train-profile"))
    args = parser.parse_args()
    from pathodet.core.machine import machine_record, resolve_precision
    from pathodet.losses.criterion import Criterion, Targets
    from pathodet.model.retinanet import SRCRetinaNet
    from pathodet.training.config import load_config

    cfg = load_config(ROOT / "configs" / "digestpath.yaml", [f"data.root={DIGESTPATH}"])
    native = resolve_precision("auto")
    images, boxes, is_ap = real_batch(cfg)
    targets = Targets(boxes, is_ap)
    result = {"machine": machine_record(native), "batch": list(images.shape),
              "boxes": int(sum(len(b) for b in boxes)), "variants": {}}  # fmt: skip

    def fresh(**adam):
        torch.manual_seed(0)
        model = SRCRetinaNet(cfg.model)
        return model, torch.optim.Adam(model.parameters(), lr=cfg.train.lr, **adam)

    def record(name: str, times: list[float], extra: dict | None = None) -> None:
        med = statistics.median(times)
        result["variants"][name] = {"step_s": med, "tiles_per_s": len(images) / med,
                                    "spread_s": [min(times), max(times)], **(extra or {})}  # fmt: skip
        print(f"{name}: {med:.3f} s/step, {len(images) / med:.1f} tiles/s", file=sys.stderr)

    crit = Criterion(cfg.loss)
    model, opt = fresh()
    record("baseline", time_steps(model, opt, crit, images, targets, native, args.steps))
    model, opt = fresh()
    record("fp32", time_steps(model, opt, crit, images, targets, "fp32", args.steps))
    model, opt = fresh()
    model = model.to(memory_format=torch.channels_last)
    cl = images.contiguous(memory_format=torch.channels_last)
    record("channels_last", time_steps(model, opt, crit, cl, targets, native, args.steps))
    model, opt = fresh(fused=True)
    record("fused_adam", time_steps(model, opt, crit, images, targets, native, args.steps))
    model, opt = fresh()
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    try:
        from pathodet.training.train import train_step

        train_step(compiled, opt, crit, images, targets, native)
        compile_s = time.perf_counter() - t0
        record("compile", time_steps(compiled, opt, crit, images, targets, native, args.steps),
               {"compile_s": compile_s})  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - reported, the other variants stand
        result["variants"]["compile"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(f"compile failed: {exc}", file=sys.stderr)

    model, opt = fresh()
    from torch.profiler import ProfilerActivity, profile

    from pathodet.training.train import train_step

    for _ in range(2):
        train_step(model, opt, crit, images, targets, native)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            train_step(model, opt, crit, images, targets, native)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    result["profile_top"] = [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 3e3,
                              "share": e.self_cpu_time_total / total, "calls_per_step": e.count / 3}
                             for e in events[:15]]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_profile.json").write_text(json.dumps(result, indent=1))
    base = result["variants"]["baseline"]["step_s"]
    print("| variant | s/step | tiles/s | vs baseline |\n|---|---|---|---|")
    for name, v in result["variants"].items():
        if "step_s" in v:
            print(
                f"| {name} | {v['step_s']:.3f} | {v['tiles_per_s']:.1f} | {base / v['step_s']:.2f}x |"
            )
    print("\n| operator | ms per step | share |\n|---|---|---|")
    for e in result["profile_top"]:
        print(f"| `{e['op']}` | {e['self_cpu_ms_per_step']:.1f} | {e['share']:.1%} |")


if __name__ == "__main__":
    main()
