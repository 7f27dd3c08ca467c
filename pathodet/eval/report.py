"""What ``pathodet evaluate`` writes: ``metrics.json``, ``froc.png`` and ``report.md``;
and the cross-validation summary of several runs (mean +- std, as the paper's tables)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pathodet.core.io import atomic_write_bytes, atomic_write_text
from pathodet.eval.metrics import FROC_FPS

TABLE_KEYS = ("precision", "nfp_score", "recall", "froc", "t_recall", "r_recall",
              "true_recall", "true_precision")  # fmt: skip


def froc_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Recall against NFP (log axis) per labelled curve ``(recall, nfp)``; FROC points marked."""
    import matplotlib

    matplotlib.use("Agg")
    from io import BytesIO

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for label, (recall, nfp) in curves.items():
        order = np.argsort(nfp, kind="stable")
        x, y = np.maximum(nfp[order], 1e-2), np.maximum.accumulate(recall[order])
        line = ax.step(x, y, where="post", label=label)[0]
        pts = [(k, float(y[x <= k].max()) if (x <= k).any() else 0.0) for k in FROC_FPS]
        ax.plot(*zip(*pts, strict=True), "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlim(0.5, 64)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(FROC_FPS, [str(k) for k in FROC_FPS])
    ax.set_xlabel("false positives per normal (NP) image")
    ax.set_ylabel("recall (IoU >= 0.3)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("FROC (points: 1, 2, 4, 8, 16, 32 FPs)")
    fig.tight_layout()
    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def report_md(metrics: dict, per_image: Sequence[dict], source: str, worst: int = 10) -> str:
    """The evaluation report: headline numbers, FROC points, plot, the worst images."""
    lines = [f"# Evaluation: {source}", ""]
    if metrics.get("max_side") is not None:
        lines += [f"Not the challenge's score: predicted boxes longer than "
                  f"{metrics['max_side']:g} px ({metrics['oversized_predictions']}) were left "
                  "out before scoring (--max-side).", ""]  # fmt: skip
    lines += ["![FROC](froc.png)", "", "| metric | value |", "|---|---|"]
    for k in ("recall", "precision", "precision_ok", "nfp", "nfp_score", "froc", "t_recall",
              "r_recall", "true_recall", "true_precision", "num_gt", "num_positive_images",
              "num_negative_images", "num_predictions", "iou_threshold", "max_side",
              "oversized_predictions"):  # fmt: skip
        if k in metrics:
            lines.append(f"| {k} | {_fmt(metrics[k])} |")
    if metrics.get("froc_points"):
        pts = metrics["froc_points"]
        lines += ["", "| FPs per NP image | " + " | ".join(pts) + " |",
                  "|---" * (len(pts) + 1) + "|",
                  "| recall | " + " | ".join(f"{v:.4f}" for v in pts.values()) + " |"]  # fmt: skip
    ap = sorted((r for r in per_image if r["attribute"] == "AP" and r["boxes"]),
                key=lambda r: (r["recall"], -r["boxes"]))[:worst]  # fmt: skip
    np_ = sorted((r for r in per_image if r["attribute"] == "NP"),
                 key=lambda r: -r["false_positives"])[:worst]  # fmt: skip
    lines += ["", "## Lowest recall (AP images)", "", "| image | boxes | matched | recall |",
              "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['image']} | {r['boxes']} | {r['matched']} | {r['recall']:.2f} |" for r in ap]
    lines += ["", "## Most false positives (NP images)", "", "| image | predictions |",
              "|---|---|"]  # fmt: skip
    lines += [f"| {r['image']} | {r['false_positives']} |" for r in np_]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, metrics: dict, per_image: Sequence[dict], recall, nfp, source: str,
    plot: bool = True,
) -> None:  # fmt: skip
    """``metrics.json``, ``per_image.json``, ``report.md`` and (``plot``) ``froc.png``."""
    out.mkdir(parents=True, exist_ok=True)
    if plot:
        froc_png({"model": (recall, nfp)}, out / "froc.png")
    atomic_write_text(out / "per_image.json", json.dumps(per_image, indent=1))
    atomic_write_text(out / "report.md", report_md(metrics, per_image, source))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))


def mean_std(values: Sequence[object]) -> dict | None:
    """``{"mean", "std", "n"}`` of the numeric ``values`` (others, such as None, are left
    out): the sample standard deviation (ddof 1), 0.0 for a single value; None for none."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not xs:
        return None
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return {"mean": float(np.mean(xs)), "std": std, "n": len(xs)}


def cross_validation(runs: Sequence[Path]) -> dict:
    """Mean and sample std (ddof 1) over the ``metrics.json`` of several fold runs."""
    folds = []
    for r in runs:
        p = Path(r) / "metrics.json" if Path(r).is_dir() else Path(r)
        try:
            folds.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: cannot read fold metrics: {exc}") from None
    out: dict = {"runs": [str(r) for r in runs]}
    for k in TABLE_KEYS:
        stats = mean_std([f.get(k) for f in folds])
        if stats is not None:
            out[k] = stats
    return out


def cv_md(summary: dict) -> str:
    keys = [k for k in TABLE_KEYS if k in summary]
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    row = "| " + " | ".join(f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in keys)
    return f"# Cross-validation over {len(summary['runs'])} runs\n\n" + head + row + " |\n"


def write_cross_validation(runs: Sequence[Path], out: Path) -> dict:
    """Aggregate fold evaluation folders (:func:`cross_validation`) into ``out/cv.json``
    and ``out/cv.md``; returns the summary."""
    summary = cross_validation(runs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cv.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "cv.md", cv_md(summary))
    return summary
