"""How fast this machine runs the demo, measured before anything is trained.

``pathodet demo --budget-minutes M`` turns its budget into training steps with the time
of a training step measured here, on a throwaway model (a few steps of the demo recipe on
a random batch at its crop size, in the precision the run will use), and the time of one
prediction window. The random state of the run is untouched (``torch.random.fork_rng``),
so the calibration changes nothing in the trained models.

A measured time varies from run to run by a few percent; the step count derived from it
is rounded down onto a coarse ladder (:func:`ladder_steps`) and the measurement is kept in
``OUT/calibration.json``: a re-run into the same folder (a killed demo resuming) reuses it
while the machine and recipe are the same, and two fresh runs on one machine land on the
same rung unless the measurement sits at a rung's edge.
"""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from pathlib import Path

import torch

from pathodet.core.io import atomic_write_text
from pathodet.core.machine import machine_record
from pathodet.training.config import Config

CALIBRATION_FILE = "calibration.json"

LADDER_RATIO = 2 ** (1 / 8)
"""Step counts are rounded down to ``100 * LADDER_RATIO**k`` (about 9% apart)."""


def ladder_steps(steps: float, floor: int = 20) -> int:
    """The largest rung ``round(100 * LADDER_RATIO**k)`` (integer ``k``, may be negative) at or
    below ``steps``, and at least ``floor``.

    >>> ladder_steps(1000), ladder_steps(999.9), ladder_steps(5)
    (917, 917, 20)
    """
    if steps <= floor:
        return floor
    k = math.floor(math.log(steps / 100.0, LADDER_RATIO) + 1e-9)
    while round(100 * LADDER_RATIO ** (k + 1)) <= steps:  # float edge cases
        k += 1
    while round(100 * LADDER_RATIO**k) > steps:
        k -= 1
    return max(floor, round(100 * LADDER_RATIO**k))


def random_batch(batch: int, size: int, g: torch.Generator):
    """Images ``(batch, 3, size, size)`` and a few SRC-sized boxes in every fourth image
    (AP:NP 1:3, as the demo's batches)."""
    images = torch.rand(batch, 3, size, size, generator=g)
    ap = torch.arange(batch) % 4 == 0
    boxes = []
    for i in range(batch):
        k = 6 if ap[i] else 0
        xy = torch.rand(k, 2, generator=g) * (size - 100)
        boxes.append(torch.cat([xy, xy + 30 + torch.rand(k, 2, generator=g) * 60], dim=1))
    return images, boxes, ap


def measure_speed(
    cfg: Config, precision: str, tile: int, device: torch.device | str = "cpu", steps: int = 5
) -> dict:
    """Seconds of one training step of ``cfg``'s recipe (median of ``steps`` after three
    warm-up steps) and of one ``tile`` x ``tile`` prediction window (best of two after a
    warm-up), on a throwaway model on ``device`` in ``precision``.

    Returns ``{"step_seconds", "window_seconds", "calibration_seconds"}``.
    """
    from pathodet.core.machine import autocast
    from pathodet.losses.criterion import Criterion, Targets
    from pathodet.model import build_retinanet
    from pathodet.training.train import train_step

    device = torch.device(device)

    def sync() -> None:  # CUDA runs asynchronously: wait before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t_start = time.perf_counter()
    tc = cfg.train
    with torch.random.fork_rng(devices=[]):
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="no ImageNet ResNet-18 weights")
            model = build_retinanet(cfg.model.model_copy(update={"weights": None})).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
        crop = tc.augment.crop or cfg.data.tiling.tile_size
        images, boxes, ap = random_batch(tc.batch_size, crop, g)
        images, ap, boxes = images.to(device), ap.to(device), [b.to(device) for b in boxes]
        times = []
        for i in range(steps + 3):
            t0 = time.perf_counter()
            train_step(model, opt, Criterion(cfg.loss, cfg.model.assign), images,
                       Targets(boxes, ap), precision)  # fmt: skip
            sync()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        model.eval()
        window = torch.rand(1, 3, tile, tile, generator=g).to(device)
        forward = []
        with torch.no_grad(), autocast(precision, device):
            for _ in range(3):
                t0 = time.perf_counter()
                model(window)
                sync()
                forward.append(time.perf_counter() - t0)
    return {
        "step_seconds": statistics.median(times),
        "window_seconds": min(forward[1:]),
        "calibration_seconds": time.perf_counter() - t_start,
    }


def calibrated_speed(out: Path, key: dict, measure, echo=print) -> dict:
    """The speed for ``key`` (recipe, precision, tile: what the measurement depends on):
    from ``out/calibration.json`` when it holds a measurement of the same key on this
    machine (same CPU model, capability and threads), else ``measure()``, then saved there.
    """
    machine = machine_record()
    ident = {**key, "machine": {k: machine[k] for k in
                                ("cpu_model", "cpu_capability", "torch_threads", "torch")}}  # fmt: skip
    path = out / CALIBRATION_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = []
    saved = saved if isinstance(saved, list) else []
    for entry in saved:
        if entry.get("key") == ident:
            return {**entry["speed"], "reused": True}
    speed = measure()
    saved.append({"key": ident, "speed": speed})
    atomic_write_text(path, json.dumps(saved, indent=2) + "\n")
    return {**speed, "reused": False}
