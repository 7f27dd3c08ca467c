"""The loss benchmark's report: mean ± std over seeds, the paper's ordering check, the
markdown tables (as the DGHM paper's Tables 3 and 4) and the plot of R-recall and FROC
against the drop rate."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pathodet.bench.losses import METHODS, LossBenchSettings, collect, plan
from pathodet.bench.pudet import pu_md
from pathodet.bench.speed import git_commit
from pathodet.core.io import atomic_write_text
from pathodet.eval.report import mean_std as eval_mean_std

COLUMNS: dict[str, tuple[str, str]] = {
    "precision": ("test", "precision"),
    "nfp_score": ("test", "NFP score"),
    "recall": ("test", "recall"),
    "froc": ("test", "FROC"),
    "t_recall": ("train", "T-recall"),
    "r_recall": ("train", "R-recall"),
    "true_recall": ("train", "true recall"),
    "true_precision": ("train", "true precision"),
}
"""Report column -> (which evaluation it comes from, header). ``test``: the held-out, fully
annotated test set; ``train``: the training AP images (T-recall on the kept boxes, R-recall on
the removed ones, true values against every real SRC)."""

PAPER_ORDER = ("dghm", "ghm", "ce", "focal")
"""The DGHM paper's finding (Table 4): DGHM-C > GHM-C > CE > focal on R-recall and FROC."""

Stat = tuple[float | None, float | None, int]
"""``(mean, sample std, n)`` over the seeds that have a value; ``(None, None, 0)`` if none."""


def mean_std(values: Sequence[float | None]) -> Stat:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the non-None
    values."""
    stats = eval_mean_std(values)
    if stats is None:
        return None, None, 0
    return stats["mean"], stats["std"] if stats["n"] > 1 else None, stats["n"]


def summarize(results: Sequence[dict]) -> dict[tuple[float, str], dict[str, Stat]]:
    """``{(rate, method): {column: (mean, std, n)}}`` over the seeds of each pair."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["rate"], r["method"]), []).append(r)
    return {
        key: {col: mean_std([r[part][col] for r in runs]) for col, (part, _) in COLUMNS.items()}
        for key, runs in groups.items()
    }


def paper_ordering(
    summary: dict[tuple[float, str], dict[str, Stat]], rates: Sequence[float], column: str
) -> dict[float, dict]:
    """Per drop rate: the methods of :data:`PAPER_ORDER` ranked by the mean of ``column``
    (best first), and whether each is strictly better than the next in the paper's order.
    Rates without all four are left out."""
    out = {}
    for rate in rates:
        means = {m: summary.get((rate, m), {}).get(column, (None, None, 0))[0] for m in PAPER_ORDER}
        if any(v is None for v in means.values()):
            continue
        ranked = sorted(PAPER_ORDER, key=lambda m: -means[m])
        # strictly better at each step: a tie (e.g. two methods that learned nothing, both
        # at 0.000) does not count as the paper's order
        strict = all(
            means[a] > means[b] for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:], strict=False)
        )
        out[rate] = {"ranked": ranked, "means": means, "paper": strict}
    return out


def _cell(stat: Stat, digits: int = 3) -> str:
    mean, std, _ = stat
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _pct(rate: float) -> str:
    return f"{round(rate * 100)}%"


def tables_md(
    summary: dict[tuple[float, str], dict[str, Stat]],
    rates: Sequence[float],
    methods: Sequence[str],
    labels: dict[str, str],
) -> list[str]:
    """One Table-3-like table per drop rate, then the Table-4-like R-recall / FROC table."""
    lines: list[str] = []
    head = "| method | " + " | ".join(h for _, h in COLUMNS.values()) + " |"
    rule = "|---" * (len(COLUMNS) + 1) + "|"
    for rate in rates:
        lines += [f"### Drop rate {_pct(rate)}", "", head, rule]
        for m in methods:
            if (rate, m) in summary:
                cells = [_cell(summary[(rate, m)][c]) for c in COLUMNS]
                lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["### R-recall and FROC against the drop rate (as the paper's Table 4)", ""]
    for column, name in (("r_recall", "R-recall"), ("froc", "FROC"), ("t_recall", "T-recall")):
        lines += [f"**{name}**", "", "| method | " + " | ".join(_pct(r) for r in rates) + " |"]
        lines.append("|---" * (len(rates) + 1) + "|")
        for m in methods:
            cells = [_cell(summary.get((r, m), {}).get(column, (None, None, 0))) for r in rates]
            lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def ordering_md(summary, rates: Sequence[float], labels: dict[str, str]) -> list[str]:
    """Whether the paper's DGHM-C > GHM-C > CE > focal holds, per metric and drop rate."""
    lines = []
    for column, name in (("r_recall", "R-recall"), ("froc", "FROC")):
        for rate, o in paper_ordering(summary, [r for r in rates if r > 0], column).items():
            ranked = labels[o["ranked"][0]] + f" ({o['means'][o['ranked'][0]]:.3f})"
            for a, b in zip(o["ranked"], o["ranked"][1:], strict=False):
                sign = "=" if o["means"][a] == o["means"][b] else ">"
                ranked += f" {sign} {labels[b]} ({o['means'][b]:.3f})"
            verdict = "the paper's order" if o["paper"] else "not the paper's order"
            lines.append(f"- {name} at {_pct(rate)}: {ranked}: **{verdict}**.")
    return lines


def mining_md(
    results: Sequence[dict], rates: Sequence[float], methods: Sequence[str], labels: dict[str, str]
) -> list[str]:
    """Co-mining runs: what was mined over the whole run, summed over seeds, per drop rate.

    A cell is ``precision · boxes per run · found``: the share of mined boxes that are real
    SRCs (IoU >= 0.3 with a true SRC), the boxes mined per run (both views, every step),
    and the share of unannotated SRC sightings in the training tiles that a mined box found.
    """

    def mines(r: dict) -> bool:  # co-mining with co-generation on (not the 'Joint' control)
        co = r.get("config", {}).get("train", {}).get("comining", {})
        return bool(r.get("mining")) and co.get("mine", True)

    mined = [m for m in methods if any(r["method"] == m and mines(r) for r in results)]
    if not mined:
        return []
    lines = [
        "### Co-mining: what was mined (against the synthetic truth)", "",
        "Each cell: mining precision · boxes mined per run · share of unannotated SRC "
        "sightings found; summed over seeds.", "",
        "| method | " + " | ".join(_pct(r) for r in rates) + " |",
        "|---" * (len(rates) + 1) + "|",
    ]  # fmt: skip
    for m in mined:
        cells = []
        for rate in rates:
            runs = [r["mining"] for r in results
                    if r["method"] == m and r["rate"] == rate and r.get("mining")]  # fmt: skip
            if not runs:
                cells.append("–")
                continue
            tot = {k: sum(x.get(k, 0.0) for x in runs) for k in runs[0]}
            prec = f"{tot['mined_real'] / tot['mined']:.2f}" if tot.get("mined") else "–"
            found = f"{tot['missed_found'] / tot['missed']:.2f}" if tot.get("missed") else "–"
            cells.append(f"{prec} · {tot['mined'] / len(runs):.0f} · {found}")
        lines.append(f"| {labels[m]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot_png(
    summary: dict[tuple[float, str], dict[str, Stat]],
    rates: Sequence[float],
    methods: Sequence[str],
    labels: dict[str, str],
    path: Path,
) -> Path:
    """Two panels, R-recall and FROC against the drop rate, one line per method (error bars:
    the std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    styles = ["-o", "-s", "-^", "-v", "-D", "--o", "--s", "--^", "--v", "--D", ":o", ":s"]
    # 20 distinct colours: the dark half of tab20 first, then the light half
    palette = [plt.get_cmap("tab20")(i) for i in [*range(0, 20, 2), *range(1, 20, 2)]]
    for ax, (column, name) in zip(axes, (("r_recall", "R-recall"), ("froc", "FROC")), strict=True):
        for k, m in enumerate(methods):
            xs, ys, es = [], [], []
            for r in rates:
                mean, std, _ = summary.get((r, m), {}).get(column, (None, None, 0))
                if mean is not None:
                    xs.append(100 * r)
                    ys.append(mean)
                    es.append(0.0 if std is None else std)
            if xs:
                ax.errorbar(xs, ys, yerr=es, fmt=styles[k % len(styles)], capsize=3,
                            color=palette[k % len(palette)], label=labels[m],
                            linewidth=2.2 if m == "dghm" else 1.2)  # fmt: skip
        ax.set_xlabel("annotation drop rate (%)")
        ax.set_xticks([100 * r for r in rates])
        ax.set_ylabel(name)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(f"{name} against drop rate")
    handles, names = axes[1].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(
    results: Sequence[dict],
    settings: dict,
    docs: Path,
    header: Sequence[str],
    labels: dict[str, str],
) -> dict:
    """``losses.md``, ``losses.json`` (every run's metrics, the summary and the settings) and
    ``losses.png`` into ``docs``; returns the JSON document."""
    docs.mkdir(parents=True, exist_ok=True)
    rates = sorted({r["rate"] for r in results})
    methods = [m for m in settings["methods"] if any(r["method"] == m for r in results)]
    summary = summarize(results)
    plot_png(summary, rates, methods, labels, docs / "losses.png")
    orders = {
        c: paper_ordering(summary, [r for r in rates if r > 0], c) for c in ("r_recall", "froc")
    }
    doc = {
        "settings": settings,
        "summary": [
            {
                "rate": rate,
                "method": m,
                **{c: dict(zip(("mean", "std", "n"), v, strict=True)) for c, v in cols.items()},
            }
            for (rate, m), cols in sorted(summary.items())
        ],  # fmt: skip
        "paper_ordering": {c: {str(r): o for r, o in v.items()} for c, v in orders.items()},
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in results],
    }
    atomic_write_text(docs / "losses.json", json.dumps(doc, indent=1))
    lines = [*header, "", "## Does the paper's ordering reproduce?", ""]
    lines += ordering_md(summary, rates, labels) or ["- (needs CE, focal, GHM-C and DGHM-C)"]
    lines += ["", "![R-recall and FROC against drop rate](losses.png)", "", "## Tables", ""]
    lines += tables_md(summary, rates, methods, labels)
    lines += mining_md(results, rates, methods, labels)
    lines += pu_md(results, rates, labels)
    atomic_write_text(docs / "losses.md", "\n".join(lines) + "\n")
    return doc


def report(out: Path, s: LossBenchSettings, docs: Path, command: str) -> dict:
    """Write ``losses.md/.json/.png`` into ``docs`` from the finished runs (all or some)."""
    results = collect(out, s)
    if not results:
        raise FileNotFoundError(f"{out}: no finished run to report")
    n_runs = len(plan(s))
    made = ", ".join(f"`{c}`" for c in sorted({r.get("commit", "") for r in results} - {""}))
    made = made or "not recorded (see docs/benchmarks/losses-findings.md)"
    hours = sum(r["train_seconds"] + r["eval_seconds"] for r in results) / 3600
    header = [
        "# Loss comparison under controlled missing labels (synthetic DigestPath)",
        "",
        f"- Command: `{command}`",
        f"- Runs made at commit(s) {made}; report written at `{git_commit()}`; "
        f"{len(results)} of {n_runs} runs; "
        f"{hours:.2f} h of training and evaluation on this machine (2 CPU cores).",
        f"- Data: {s.train_positive} AP + {s.train_negative} NP training images of "
        f"{s.image_size} px, every SRC annotated, then a share removed per drop rate "
        f"(`pathodet data drop`, seed {s.data_seed}); held-out test set of "
        f"{s.test_positive} AP + {s.test_negative} NP images, every SRC annotated.",
        f"- Training: the demo recipe (`configs/demo.yaml`), {s.steps} steps per run on the "
        f"paper's stretched 14-epoch schedule, seeds {s.seeds}"
        + (f", overrides {s.overrides}" if s.overrides else "")
        + "; `last.pt` evaluated.",
        "- What the numbers mean, and the investigation of why the paper's ordering does "
        "not reproduce at this budget: [losses-findings.md](losses-findings.md).",
        "- Columns: precision, NFP score, recall and FROC on the test set (fully annotated, "
        "so these are true values); T-recall, R-recall, true recall and true precision on the "
        "training AP images (kept boxes, removed boxes, every real SRC). Mean ± sample std "
        "over seeds; every prediction at score >= 0.05 counts for recall and precision.",
    ]
    labels = {m: METHODS[m].label for m in METHODS}
    return write_report(results, s.model_dump(mode="json"), Path(docs), header, labels)
