"""``pathodet purify``: Algorithm 1 of the PU purification paper, on tiles.

1. Positives: the labeled root's AP tiles (``tile`` x ``tile``, stride ``stride``) holding
   an annotated SRC. Unlabeled: the pool's tiles (:mod:`.pool`).
2. Train the PU classifier (:mod:`.classifier`); score every pool tile; select the
   ``select`` best (default ``round(pi_p x pool size)``, the expected number of SRC tiles),
   or, as the paper's U^R control, as many random tiles.
3. With ``--teacher``: the teacher detector pseudo-labels the selected tiles (score >=
   ``tau``, NMS at ``nms_iou``); tiles from NP images get none.

Output folder::

    purify.json         summary: counts, pi_p (given or estimated), selection, and with
                        ``--truth`` the purification precision against the true SRCs
    ranking.csv         every pool tile: rank, score, selected, source, x, y, size, attribute
    selected.csv  pseudo-labels.csv  tiles/    the training set (:mod:`pathodet.data.pseudo`)
    classifier.pt       the PU classifier's weights

Every file is written atomically and ``purify.json`` last: a folder without it is
unfinished, and a rerun starts it again.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from pathodet.core.io import atomic_write_bytes, atomic_write_image, atomic_write_text
from pathodet.core.machine import machine_record, resolve_precision
from pathodet.data.digestpath import load_records
from pathodet.data.pseudo import (
    PSEUDO_COLUMNS,
    SELECTED_COLUMNS,
    TILES_DIR,
    write_csv,
)
from pathodet.data.samples import load_samples
from pathodet.data.tiling import TileDataset, boxes_in_window
from pathodet.data.voc import AnnotationError, read_voc
from pathodet.model.boxes import same_cell
from pathodet.model.config import InferenceConfig
from pathodet.model.retinanet import FrozenDetector
from pathodet.purify.classifier import PUConfig, score, train_classifier
from pathodet.purify.pool import PoolTile, pool_tiles, read_tile
from pathodet.training.checkpoint import load_checkpoint, load_detector

SUMMARY = "purify.json"
RANKING_COLUMNS = ("rank", "score", "selected", "source", "x", "y", "size", "attribute")
PSEUDO_NMS_IOU = 0.3
"""NMS of the teacher's pseudo-labels: SRCs hardly overlap (the demo's prediction NMS). How
much two detections may overlap, not the "same cell" rule
(:func:`pathodet.model.boxes.same_cell`), which :func:`pseudo_hits` uses."""


def _small(rgb: np.ndarray, tile: int, size: int) -> np.ndarray:
    """A tile padded to ``tile`` with white, resized to ``size`` (the classifier's input)."""
    if rgb.shape[:2] != (tile, tile):
        pad = np.full((tile, tile, 3), 255, np.uint8)
        pad[: rgb.shape[0], : rgb.shape[1]] = rgb[:tile, :tile]
        rgb = pad
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA) if size != tile else rgb


def labeled_positives(labeled: Path, cfg: PUConfig) -> tuple[np.ndarray, list]:
    """``(n_p, s, s, 3)`` uint8 AP tiles holding an annotated SRC, and the problems."""
    samples, problems = load_samples(load_records(labeled))
    tiles = TileDataset(samples, cfg.tile, cfg.stride, 0.5)
    counts = tiles.box_counts()
    idx = [i for i, (a, c) in enumerate(zip(tiles.attributes(), counts, strict=True))
           if a == "AP" and c > 0]  # fmt: skip
    if not idx:
        raise ValueError(f"{labeled}: no AP tile holds an annotated SRC; nothing is positive")
    size = cfg.input_size()
    return np.stack([_small(tiles[i]["image"], cfg.tile, size) for i in idx]), problems


def _read_small(pool: list[PoolTile], idx, cfg: PUConfig) -> np.ndarray:
    cache: dict = {}
    size = cfg.input_size()
    return np.stack([_small(read_tile(pool[i], cfg.tile, cache), cfg.tile, size) for i in idx])


def _truth_boxes(truth: Path, source: Path, cache: dict) -> np.ndarray:
    if source not in cache:
        xml = truth / f"{source.stem}.xml"
        try:
            cache[source] = read_voc(xml).boxes if xml.is_file() else np.zeros((0, 4), np.float32)
        except AnnotationError:
            cache[source] = np.zeros((0, 4), np.float32)
    return cache[source]


def separation(g_positive: np.ndarray, g_pool: np.ndarray) -> dict[str, float]:
    """Did the classifier learn? The share of the labeled positive tiles (which it trained
    on) and of the pool tiles with logit ``g > 0``. A classifier that collapsed onto the
    trivial all-negative solution of the PU risk (risk = pi_p) scores its own positives
    negative."""
    return {
        "positives_scored_positive": float(np.mean(g_positive > 0)) if len(g_positive) else 0.0,
        "pool_scored_positive": float(np.mean(g_pool > 0)) if len(g_pool) else 0.0,
    }


def pseudo_label(
    teacher: Path, tiles: list[np.ndarray], cfg: PUConfig
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Algorithm 1, step 3: ``(boxes (K, 4), scores (K,))`` per tile, teacher score >= tau."""
    model, _ = load_detector(teacher)
    infer = InferenceConfig(score_threshold=cfg.tau, nms_iou=PSEUDO_NMS_IOU)
    frozen = FrozenDetector(model, "cpu", cfg.precision, infer)
    out = []
    for rgb in tiles:
        det = frozen.detect(torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255.0))[0]
        out.append((det["boxes"].float().numpy(), det["scores"].float().numpy()))
    return out


def run_purify(
    labeled: str | os.PathLike[str],
    unlabeled: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: PUConfig,
    teacher: str | os.PathLike[str] | None = None,
    truth: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run purification into ``out`` (see the module docstring); returns the summary.

    Raises:
        ValueError: no positive tile, an empty pool, or a bad option.
        FileNotFoundError: a missing input.
    """
    labeled, unlabeled, out = Path(labeled), Path(unlabeled), Path(out)
    t0 = time.perf_counter()
    positives, problems = labeled_positives(labeled, cfg)
    pool, pool_problems = pool_tiles(unlabeled, cfg.tile)
    problems += pool_problems
    for p in problems:
        log(f"warning: {p.file}: {p.error}")
    if not pool:
        raise ValueError(f"{unlabeled}: no readable tile in the unlabeled pool")
    log(f"{len(positives)} positive tiles, {len(pool)} pool tiles")
    rng = np.random.default_rng([cfg.seed, 5])
    state = load_checkpoint(teacher)["model"] if teacher is not None else None
    info: dict = {}
    net = None
    if cfg.selection == "pu":
        train_idx = np.sort(rng.permutation(len(pool))[: cfg.max_unlabeled])
        net, info = train_classifier(positives, _read_small(pool, train_idx, cfg), cfg, state, log)
        scores = np.concatenate([
            score(net, _read_small(pool, range(k, min(k + 64, len(pool))), cfg), cfg)
            for k in range(0, len(pool), 64)
        ])  # fmt: skip
        prior = info["prior"]
        info.update(separation(score(net, positives, cfg), scores))
        if info["positives_scored_positive"] < 0.5:
            log(f"warning: the PU classifier calls only {info['positives_scored_positive']:.0%} "
                "of its own positive tiles positive: it has not learned what a positive tile "
                "looks like, and its ranking is close to arbitrary (compare with --selection "
                "random; try more --steps or a better teacher)")  # fmt: skip
    else:
        scores = rng.random(len(pool))
        prior = cfg.prior
    n_select = cfg.select if cfg.select is not None else (
        round(prior * len(pool)) if prior is not None else None)  # fmt: skip
    if n_select is None:
        raise ValueError("random selection needs --select N or --prior")
    n_select = min(n_select, len(pool))
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(pool), np.int64)
    rank[order] = np.arange(1, len(pool) + 1)
    chosen = [int(i) for i in order[:n_select]]

    # the selected tiles and their pseudo-labels
    tiles_dir = out / TILES_DIR
    if tiles_dir.exists():
        shutil.rmtree(tiles_dir)  # an earlier, unfinished or different run
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)
    cache: dict = {}
    images = [read_tile(pool[i], cfg.tile, cache) for i in chosen]
    names = [f"{TILES_DIR}/{r:05d}_{pool[i].name}.png" for r, i in enumerate(chosen, 1)]
    for name, rgb in zip(names, images, strict=True):
        atomic_write_image(out / name, rgb)
    selected_rows = [
        {"rank": r, "tile": name, "attribute": pool[i].attribute, "score": f"{scores[i]:.6g}",
         "source": str(pool[i].source), "x": pool[i].x, "y": pool[i].y,
         "width": pool[i].size, "height": pool[i].size}
        for r, (i, name) in enumerate(zip(chosen, names, strict=True), 1)
    ]  # fmt: skip
    write_csv(out / "selected.csv", SELECTED_COLUMNS, selected_rows)
    picked = set(chosen)
    write_csv(out / "ranking.csv", RANKING_COLUMNS, [
        {"rank": int(rank[i]), "score": f"{scores[i]:.6g}", "selected": int(i in picked),
         "source": str(t.source), "x": t.x, "y": t.y, "size": t.size, "attribute": t.attribute}
        for i, t in sorted(enumerate(pool), key=lambda it: rank[it[0]])
    ])  # fmt: skip
    labels = None
    if teacher is not None:
        labels = pseudo_label(Path(teacher), images, cfg)
        rows = [
            {"tile": name, "x1": f"{b[0]:.1f}", "y1": f"{b[1]:.1f}", "x2": f"{b[2]:.1f}",
             "y2": f"{b[3]:.1f}", "score": f"{s:.4f}"}
            for name, i, (boxes, scores_t) in zip(names, chosen, labels, strict=True)
            if pool[i].attribute != "NP"
            for b, s in zip(boxes, scores_t, strict=True)
        ]  # fmt: skip
        write_csv(out / "pseudo-labels.csv", PSEUDO_COLUMNS, rows)
    if net is not None:
        buf = io.BytesIO()
        torch.save({"classifier": net.state_dict(), "config": cfg.model_dump_json()}, buf)
        atomic_write_bytes(out / "classifier.pt", buf.getvalue())
    summary = {
        "labeled": str(labeled), "unlabeled": str(unlabeled),
        "teacher": None if teacher is None else str(teacher),
        "config": cfg.model_dump(mode="json"),
        "machine": machine_record(resolve_precision(cfg.precision, "cpu", log=lambda _: None)),
        "positives": len(positives), "pool_tiles": len(pool), "selected": len(chosen),
        "prior": prior, "prior_estimated": bool(info.get("prior_estimated", False)),
        "classifier": {k: v for k, v in info.items() if k not in ("prior", "prior_estimated")},
        "pseudo_boxes": None if labels is None else int(sum(
            len(b) for (b, _), i in zip(labels, chosen, strict=True)
            if pool[i].attribute != "NP")),
        "problems": [p.as_dict() for p in problems],
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    if truth is not None:
        summary["truth"] = purification_truth(Path(truth), pool, chosen, labels, cfg.tile)
        t = summary["truth"]
        log(f"purification precision {t['precision']:.3f} ({t['selected_with_src']} of "
            f"{len(chosen)} selected tiles hold an SRC; pool prior {t['pool_prior']:.3f})")  # fmt: skip
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1))
    return summary


def purification_truth(
    truth: Path,
    pool: list[PoolTile],
    chosen: list[int],
    labels: list[tuple[np.ndarray, np.ndarray]] | None,
    tile: int,
) -> dict:
    """How good the selection is against every true SRC (synthetic data): precision and
    recall of the selected tiles (a tile holds an SRC when at least half of one lies in
    it), the pool's true prior, and with pseudo-labels their precision and recall
    (:func:`pseudo_hits`). ``truth`` holds ``<source stem>.xml`` with every SRC (level-0 pixels)."""
    cache: dict = {}
    in_tile = []
    for t in pool:
        boxes = _truth_boxes(truth, t.source, cache)
        scale = tile / t.size  # slide tiles are resized to ``tile``
        found = boxes_in_window(boxes, (t.x, t.y, t.x + t.size, t.y + t.size), 0.5)[0] * scale
        in_tile.append(found)
    has = np.array([len(b) > 0 for b in in_tile])
    sel = np.zeros(len(pool), bool)
    sel[chosen] = True
    result = {
        "pool_prior": float(has.mean()),
        "pool_src_tiles": int(has.sum()),
        "selected_with_src": int((has & sel).sum()),
        "precision": float(has[sel].mean()) if sel.any() else None,
        "recall": float((has & sel).sum() / has.sum()) if has.any() else None,
    }
    if labels is not None:
        hits = n_boxes = found = n_true = 0
        for i, (boxes, _) in zip(chosen, labels, strict=True):
            n_boxes, n_true = n_boxes + len(boxes), n_true + len(in_tile[i])
            h, f = pseudo_hits(boxes, in_tile[i])
            hits, found = hits + h, found + f
        result["pseudo_precision"] = hits / n_boxes if n_boxes else None
        result["pseudo_recall"] = found / n_true if n_true else None
    return result


def pseudo_hits(boxes: np.ndarray, true: np.ndarray) -> tuple[int, int]:
    """``(hits, found)`` for one tile: how many of the ``(K, 4)`` pseudo boxes are the same
    cell as one of the ``(T, 4)`` true SRC boxes (tile pixels), and how many true SRCs one
    pseudo box is the same cell as, by :func:`pathodet.model.boxes.same_cell` (IoU >= 0.3,
    the challenge's matching)."""
    same = same_cell(np.asarray(boxes, np.float64), np.asarray(true, np.float64))
    if same.size == 0:
        return 0, 0
    return int(same.any(axis=1).sum()), int(same.any(axis=0).sum())
