"""How much time a classification loss adds to a training step, against focal loss.

Times (a) the whole training step (forward, loss, backward, Adam step) and (b) the loss
alone, on one fixed batch, alternating the losses so machine noise hits both alike, and
reports medians and the ratio to focal loss.
"""

from __future__ import annotations

import statistics
import time

import torch

from pathodet.core.machine import PrecisionSetting, autocast
from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import Criterion, Targets
from pathodet.model import ModelConfig, build_retinanet
from pathodet.training.train import train_step


def _random_batch(
    batch: int, size: int, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Images with a few SRC-sized boxes, AP:NP 1:3 as the paper's batches."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g)
    ap = torch.arange(batch) % 4 == 0
    boxes = []
    for i in range(batch):
        k = int(torch.randint(3, 12, (1,), generator=g)) if ap[i] else 0
        xy = torch.rand(k, 2, generator=g) * (size - 100)
        wh = 30 + torch.rand(k, 2, generator=g) * 60
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return images, boxes, ap


def measure(
    losses: list[str],
    batch: int = 8,
    size: int = 600,
    repeats: int = 5,
    precision: PrecisionSetting = "auto",
    seed: int = 0,
) -> dict:
    """Median step and loss-only times per loss, and their ratios to ``focal``."""
    torch.manual_seed(seed)
    model = build_retinanet(ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, boxes, ap = _random_batch(batch, size, seed)
    names = ["focal", *[n for n in losses if n != "focal"]]
    step_t: dict[str, list[float]] = {n: [] for n in names}
    loss_t: dict[str, list[float]] = {n: [] for n in names}
    targets = Targets(boxes, ap)
    train_step(model, opt, Criterion(LossConfig(name="focal")), images, targets, precision)
    for _ in range(repeats):
        for n in names:
            criterion = Criterion(LossConfig(name=n))
            t0 = time.perf_counter()
            train_step(model, opt, criterion, images, targets, precision)
            step_t[n].append(time.perf_counter() - t0)
            with torch.no_grad(), autocast(precision, images.device):
                out = model(images)
            t0 = time.perf_counter()
            for _ in range(5):
                criterion(out, targets)
            loss_t[n].append((time.perf_counter() - t0) / 5)
    med_step = {n: statistics.median(v) for n, v in step_t.items()}
    med_loss = {n: statistics.median(v) for n, v in loss_t.items()}
    return {
        "setting": {
            "batch": batch, "size": size, "repeats": repeats, "precision": precision,
            "threads": torch.get_num_threads(),
        },
        "step_s": med_step,
        "loss_s": med_loss,
        "step_ratio_to_focal": {n: med_step[n] / med_step["focal"] for n in names},
        "loss_overhead_share_of_focal_step": {
            n: (med_loss[n] - med_loss["focal"]) / med_step["focal"] for n in names
        },
    }  # fmt: skip
