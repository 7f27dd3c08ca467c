"""Where each loss puts its classification gradient, per anchor group, on fixed training tiles
and one trained detector: the mechanism behind the loss benchmark's numbers.

Anchors are labelled against the *kept* annotations, as training sees them; synthetic data
also knows the dropped boxes, so the AP negatives split into two groups:

- ``AP_P``: positives, anchors on annotated SRCs;
- ``AP_N missed``: negatives of AP tiles with IoU >= ``fg_iou`` with an SRC whose box was
  dropped: label noise, the examples DGHM-C down-weights as noisy outliers;
- ``AP_N other``: the remaining negatives of AP tiles;
- ``NP_N``: negatives of NP tiles (clean).

For every loss and group: the share of ``sum |dL_cls/dx|`` over the anchors (``x`` the
logit), and the mean ``|dL_cls/dx|`` per anchor. Each mini-batch is one loss call, as in
training (GHM-C and DGHM-C histogram g within it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pathodet.data.digestpath import load_records
from pathodet.data.samples import load_samples
from pathodet.data.tiling import TileDataset, boxes_in_window
from pathodet.losses.criterion import AnchorBatch, Criterion
from pathodet.model.assign import NEGATIVE, POSITIVE, assign_retinanet
from pathodet.model.boxes import box_iou
from pathodet.training.batch import collate
from pathodet.training.checkpoint import load_detector

GROUPS = ("AP_P", "AP_N missed", "AP_N other", "NP_N")
PROBED = ("ce", "focal", "ghm", "sce", "dghm", "dghm_star", "oss")
"""Losses whose gradient is probed: those that need neither a prior detector (score SS) nor
their own anchor labelling (cleanliness)."""


def _tiles(kept_root: Path, full_root: Path, tile: int, stride: int, min_visible: float):
    samples, _ = load_samples(load_records(kept_root))
    full, _ = load_samples(load_records(full_root))
    truth = {s.record.name: s.boxes for s in full}
    missing = [s.record.name for s in samples if s.record.name not in truth]
    if missing:
        raise ValueError(f"{full_root}: no full annotation for {missing[0]!r}")
    return TileDataset(samples, tile, stride, min_visible), truth


def _padded(items: list[dict]) -> list[dict]:
    """Tiles of images smaller than the tile differ in size: pad them (bottom and right,
    white like slide background) to the largest of the batch; boxes are unchanged."""
    h = max(it["image"].shape[0] for it in items)
    w = max(it["image"].shape[1] for it in items)
    out = []
    for it in items:
        img = it["image"]
        pad = ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0))
        out.append({**it, "image": np.pad(img, pad, constant_values=255)})
    return out


def gradient_shares(
    checkpoint: Path,
    kept_root: Path,
    full_root: Path,
    losses: tuple[str, ...] = PROBED,
    n_ap: int = 24,
    n_np: int = 24,
    batch: int = 8,
    seed: int = 0,
) -> dict:
    """Per loss and group: ``share`` of the summed ``|dL/dx|`` and ``mean`` per anchor.

    Args:
        checkpoint: the detector whose logits are probed (``eval`` mode, fp32).
        kept_root: the training root with the kept annotations (``pathodet data drop`` output).
        full_root: the same images with every SRC annotated (the synthetic source root).
        n_ap, n_np: AP tiles holding a kept box and NP tiles, drawn with ``seed``; batches mix
            them as the training sampler does (AP first, then NP, ``batch`` tiles each).
    """
    model, cfg = load_detector(checkpoint)
    model.eval()
    t = cfg.data.tiling
    tiles, truth = _tiles(kept_root, full_root, t.tile_size, t.stride, t.min_visible)
    attrs, counts = tiles.attributes(), tiles.box_counts()
    rng = np.random.default_rng(seed)
    ap = [i for i, (a, c) in enumerate(zip(attrs, counts, strict=True)) if a == "AP" and c]
    np_ = [i for i, a in enumerate(attrs) if a == "NP"]
    chosen_ap = rng.choice(ap, min(n_ap, len(ap)), replace=False)
    chosen_np = rng.choice(np_, min(n_np, len(np_)), replace=False)
    # mix AP and NP tiles in every mini-batch, as the AP/NP batch sampler does
    order = [int(i) for pair in zip(chosen_ap, chosen_np, strict=False) for i in pair]
    order += [int(i) for i in [*chosen_ap[len(chosen_np) :], *chosen_np[len(chosen_ap) :]]]
    sums = {name: dict.fromkeys(GROUPS, 0.0) for name in losses}
    n_anchors = dict.fromkeys(GROUPS, 0)
    assign = cfg.model.assign
    for start in range(0, len(order), batch):
        items = _padded([tiles[i] for i in order[start : start + batch]])
        images, boxes, ap_image = collate(items)
        with torch.no_grad():
            out = model(images)
        logits = out.cls_logits.float()
        groups, valid, targets, iou = [], [], [], []
        for k, it in enumerate(items):
            lab = assign_retinanet(out.anchors, boxes[k], assign.fg_iou, assign.bg_iou,
                                   assign.allow_low_quality)  # fmt: skip
            all_boxes, _ = boxes_in_window(truth[it["name"]], it["window"], t.min_visible)
            true_iou = (
                box_iou(torch.as_tensor(all_boxes), out.anchors).max(dim=0).values
                if len(all_boxes) else torch.zeros(len(out.anchors))
            )  # fmt: skip
            g = np.full(len(out.anchors), "", dtype=object)
            neg = (lab.labels == NEGATIVE).numpy()
            if bool(ap_image[k]):
                g[(lab.labels == POSITIVE).numpy()] = "AP_P"
                missed = neg & (true_iou >= assign.fg_iou).numpy()
                g[missed] = "AP_N missed"
                g[neg & ~missed] = "AP_N other"
            else:
                g[neg] = "NP_N"
            keep = (lab.labels >= 0).numpy()
            groups.append(g[keep])
            valid.append(torch.from_numpy(keep))
            targets.append((lab.labels[keep] == POSITIVE).float())
            iou.append(lab.max_iou[keep])
        group = np.concatenate(groups)
        for name in GROUPS:
            n_anchors[name] += int((group == name).sum())
        flat_ap = torch.cat(
            [torch.full((int(v.sum()),), bool(a)) for v, a in zip(valid, ap_image, strict=True)]
        )
        flat_logits = torch.cat([logits[k][v] for k, v in enumerate(valid)])
        tgt = torch.cat(targets)
        for name in losses:
            x = flat_logits.clone().requires_grad_(True)
            ab = AnchorBatch(logits=x, targets=tgt, ap_image=flat_ap, iou=torch.cat(iou),
                             normalizer=tgt.sum().clamp(min=1))  # fmt: skip
            criterion = Criterion(cfg.loss.model_copy(update={"name": name}))
            (grad,) = torch.autograd.grad(criterion.classification(ab), x)
            mag = grad.abs().numpy()
            for gname in GROUPS:
                sums[name][gname] += float(mag[group == gname].sum())
    result = {"checkpoint": str(checkpoint), "tiles": {"AP": len(chosen_ap), "NP": len(chosen_np)},
              "anchors": n_anchors, "losses": {}}  # fmt: skip
    for name in losses:
        total = sum(sums[name].values()) or 1.0
        result["losses"][name] = {
            g: {"share": sums[name][g] / total,
                "mean": sums[name][g] / n_anchors[g] if n_anchors[g] else None}
            for g in GROUPS
        }  # fmt: skip
    return result


def shares_md(result: dict, labels: dict[str, str]) -> list[str]:
    """A markdown table: per loss, the share of the gradient of each group (mean per anchor)."""
    n = result["anchors"]
    lines = [
        "| loss | " + " | ".join(f"{g} ({n[g]} anchors)" for g in GROUPS) + " |",
        "|---" * (len(GROUPS) + 1) + "|",
    ]
    for name, groups in result["losses"].items():
        cells = []
        for g in GROUPS:
            v = groups[g]
            mean = "–" if v["mean"] is None else f"{v['mean']:.2e}"
            cells.append(f"{100 * v['share']:.1f}% ({mean})")
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return lines
