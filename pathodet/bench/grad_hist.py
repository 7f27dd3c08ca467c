"""Gradient-norm histograms of a briefly trained detector, split by AP_P / AP_N / NP_N.

Reproduces the idea of the DGHM paper's Figure 3: train a model with CE for a short while
on synthetic data, then histogram ``g = |p - p*|`` over the anchors of its training tiles,
one histogram per group. Outliers (large g) of AP_N are where unannotated SRCs hide.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from pathodet.core.io import atomic_write_bytes, atomic_write_text
from pathodet.core.machine import autocast
from pathodet.data.digestpath import load_records
from pathodet.data.samples import load_samples
from pathodet.data.synth import write_synthetic_dataset
from pathodet.data.tiling import TileDataset
from pathodet.losses.common import gradient_norm
from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import Criterion, Targets
from pathodet.model import ModelConfig, build_retinanet
from pathodet.training.batch import collate
from pathodet.training.train import train_step

GROUPS = ("AP_P", "AP_N", "NP_N")


def _balanced_batches(tiles: TileDataset, batch: int, steps: int, rng: np.random.Generator):
    """AP tiles holding an annotated box and NP tiles at 1:3, as the paper's mini-batches."""
    attrs = tiles.attributes()
    ap = [i for i, a in enumerate(attrs) if a == "AP" and len(tiles[i]["boxes"])]
    npi = [i for i, a in enumerate(attrs) if a == "NP"]
    n_ap = max(1, batch // 4)
    for _ in range(steps):
        yield list(rng.choice(ap, n_ap)) + list(rng.choice(npi, batch - n_ap))


def gradient_histograms(
    out: Path,
    steps: int = 150,
    loss: str = "ce",
    tile: int = 384,
    batch: int = 8,
    seed: int = 0,
    bins: int = 50,
    lr: float = 1e-4,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train briefly, then write ``out/grad-hist.png`` and ``out/grad-hist.json``."""
    out = Path(out)
    data = out / "data"
    write_synthetic_dataset(data, positive=8, negative=8, size=1000, seed=seed, annotate_rate=0.5)
    samples, _ = load_samples(load_records(data))
    train = samples
    tiles = TileDataset(train, tile=tile, stride=tile // 2, cache_images=len(train))
    torch.manual_seed(seed)
    model = build_retinanet(ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = Criterion(LossConfig(name=loss), model.cfg.assign)
    rng = np.random.default_rng(seed)
    losses = []
    for idx in _balanced_batches(tiles, batch, steps, rng):
        images, boxes, ap = collate([tiles[i] for i in idx])
        losses.append(train_step(model, opt, criterion, images, Targets(boxes, ap), "auto")["loss"])
        if log is not None and len(losses) % 25 == 0:
            log(f"step {len(losses)}: loss {np.mean(losses[-25:]):.4f}")

    model.eval()
    g_by_group: dict[str, list[np.ndarray]] = {k: [] for k in GROUPS}
    # as the paper's Figure 3: the examples the model was trained on, every training tile
    eval_tiles = TileDataset(train, tile=tile, stride=tile)
    for i in range(len(eval_tiles)):
        images, boxes, ap = collate([eval_tiles[i]])
        with torch.no_grad(), autocast("auto", images.device):
            o = model(images)
        lab = criterion.label(o.anchors, boxes)[0].labels
        valid = lab >= 0
        g = gradient_norm(o.cls_logits[0].float()[valid], (lab[valid] == 1).float()).numpy()
        pos = (lab[valid] == 1).numpy()
        if bool(ap[0]):
            g_by_group["AP_P"].append(g[pos])
            g_by_group["AP_N"].append(g[~pos])
        else:
            g_by_group["NP_N"].append(g)
    edges = np.linspace(0, 1, bins + 1)
    hist = {
        k: np.histogram(np.concatenate(v) if v else np.zeros(0), edges)[0].tolist()
        for k, v in g_by_group.items()
    }
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    centres = (edges[:-1] + edges[1:]) / 2
    for k, colour in zip(GROUPS, ("tab:green", "tab:orange", "tab:blue"), strict=True):
        counts = np.asarray(hist[k], float)
        ax.plot(centres, np.where(counts > 0, counts, np.nan), "o-", color=colour, label=k)
    ax.set_yscale("log")
    ax.set_xlabel("gradient norm g = |p - p*|")
    ax.set_ylabel("anchors (log)")
    ax.set_title(f"{loss} after {steps} steps: g per group (training tiles)")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(out / "grad-hist.png", buf.getvalue())
    result = {
        "loss": loss,
        "steps": steps,
        "lr": lr,
        "tile": tile,
        "final_loss": float(np.mean(losses[-10:])),
        "first_loss": float(np.mean(losses[:10])),
        "bin_edges": edges.tolist(),
        "counts": hist,
    }
    atomic_write_text(out / "grad-hist.json", json.dumps(result, indent=2) + "\n")
    return result
