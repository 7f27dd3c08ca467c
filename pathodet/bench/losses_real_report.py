"""The report of the real-data loss benchmark (:mod:`pathodet.bench.losses_real`): the
analogues of the DGHM paper's Table 3 (0% dropped) and Table 4 (drop rates), the gaps to
DGHM-C paired by fold, and the curves of held-out FROC against training steps.

A gap is paired: for each fold run by both methods at the same rate, the difference of
their figures; reported as the mean difference ± its standard error (sample std over
folds / sqrt(n)), marked ``*`` when larger than two standard errors and there are at
least :data:`MARK_MIN_RUNS` pairs (with two, the standard error rests on one degree of
freedom: two folds that happen to agree would be marked).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pathodet.bench.losses_methods import METHODS
from pathodet.bench.losses_real import CHANCE_DRAWS
from pathodet.core.machine import machine_label

PAPER_TABLE3 = {"dghm": 0.819, "ghm": 0.743, "ce": 0.593, "sce": 0.559, "focal": 0.503}
"""5-fold FROC of the DGHM paper's Table 3 (ImageNet ResNet-18, full DigestPath, GPU)."""

PAPER_TABLE4 = {  # rate: method: (R-recall, FROC)
    0.3: {"ce": (0.235, 0.449), "focal": (0.143, 0.386), "ghm": (0.704, 0.697),
          "sce": (0.373, 0.425), "dghm": (0.869, 0.833)},
    0.5: {"ce": (0.185, 0.351), "focal": (0.093, 0.217), "ghm": (0.675, 0.667),
          "sce": (0.260, 0.335), "dghm": (0.776, 0.741)},
    0.7: {"ce": (0.104, 0.187), "focal": (0.040, 0.105), "ghm": (0.387, 0.409),
          "sce": (0.112, 0.151), "dghm": (0.687, 0.672)},
}  # fmt: skip
"""R-recall and FROC of the paper's Table 4 (one subset, a fully annotated test set)."""

REFERENCE = "dghm"
MARK_MIN_RUNS = 3  # pairs a gap needs before it may be marked *


def _values(results: Sequence[dict], rate: float, method: str, key: str) -> dict[int, float]:
    """``{fold: value}`` of one column, a dotted path into the results (``test.froc``,
    ``train.r_recall``, ``test.froc_points.1``: recall at 1 FP per NP image)."""
    out = {}
    for r in results:
        if r["rate"] != rate or r["method"] != method:
            continue
        v = r
        for name in key.split("."):
            v = v.get(name) if isinstance(v, dict) else None
        if v is not None:
            out[r["fold"]] = float(v)
    return out


def mean_sd(xs: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def paired_gap(a: dict[int, float], b: dict[int, float]) -> tuple[float, float | None, int]:
    """Mean of ``a[f] - b[f]`` over the folds both have, its standard error, n."""
    folds = sorted(set(a) & set(b))
    if not folds:
        return math.nan, None, 0
    mean, sd = mean_sd([a[f] - b[f] for f in folds])
    return mean, None if sd is None else sd / math.sqrt(len(folds)), len(folds)


def _cell(values: dict[int, float], digits: int = 3) -> str:
    if not values:
        return "-"
    m, sd = mean_sd(list(values.values()))
    return f"{m:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}") + f" ({len(values)})"


def _span(values: dict[int, float]) -> str:
    """The runs' range of a whole-pixel figure, ``61-63``, or one value when all agree."""
    lo, hi = min(values.values()), max(values.values())
    return f"{lo:.0f}" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}"


def _gap(values: dict[int, float], ref: dict[int, float]) -> str:
    mean, se, n = paired_gap(values, ref)
    if n == 0:
        return "-"
    if se is None:
        return f"{mean:+.3f} (1)"
    star = " *" if n >= MARK_MIN_RUNS and abs(mean) > 2 * se else ""
    return f"{mean:+.3f} ± {se:.3f} ({n}){star}"


def table3_md(results: Sequence[dict], methods: Sequence[str]) -> list[str]:
    """0% dropped: held-out figures per method, FROC gap to DGHM-C, the paper's FROC."""
    lines = ["| method | FROC | gap to DGHM-C (paired) | recall at 1 FP per NP image | "
             "recall, all | precision, all | FPs per NP image, all | T-recall (train) | "
             "paper FROC |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    ref = _values(results, 0.0, REFERENCE, "test.froc")
    for m in methods:
        froc = _values(results, 0.0, m, "test.froc")
        if not froc:
            continue
        cells = [_cell(froc), "-" if m == REFERENCE else _gap(froc, ref)]
        cells += [_cell(_values(results, 0.0, m, k))
                  for k in ("test.froc_points.1", "test.recall", "test.precision", "test.nfp",
                            "train.t_recall")]  # fmt: skip
        paper = PAPER_TABLE3.get(m)
        cells.append("-" if paper is None else f"{paper:.3f}")
        lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
    return lines


def table4_md(results: Sequence[dict], methods: Sequence[str], rates: Sequence[float]) -> list[str]:
    """Per drop rate > 0: R-recall and T-recall on the training images, at every score and
    at the held-out 1-FP-per-NP-image threshold, held-out FROC, and the paired gaps to
    DGHM-C of R-recall and FROC."""
    lines = ["| drop | method | R-recall | gap to DGHM-C | T-recall | R-recall at 1 FP | "
             "T-recall at 1 FP | held-out FROC | gap to DGHM-C | paper R-recall / FROC |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rate in rates:
        if rate == 0:
            continue
        ref_r = _values(results, rate, REFERENCE, "train.r_recall")
        ref_f = _values(results, rate, REFERENCE, "test.froc")
        for m in methods:
            rr = _values(results, rate, m, "train.r_recall")
            froc = _values(results, rate, m, "test.froc")
            if not froc:
                continue
            paper = PAPER_TABLE4.get(rate, {}).get(m)
            cells = [f"{round(100 * rate)}%", METHODS[m].label, _cell(rr),
                     "-" if m == REFERENCE else _gap(rr, ref_r),
                     _cell(_values(results, rate, m, "train.t_recall")),
                     _cell(_values(results, rate, m, "train.at_1fp.r_recall")),
                     _cell(_values(results, rate, m, "train.at_1fp.t_recall")), _cell(froc),
                     "-" if m == REFERENCE else _gap(froc, ref_f),
                     "-" if paper is None else f"{paper[0]:.3f} / {paper[1]:.3f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def drop_cost_md(
    results: Sequence[dict], methods: Sequence[str], rates: Sequence[float]
) -> list[str]:
    """Per drop rate > 0: what dropping the labels cost each method's held-out FROC, paired
    by fold against the same method at 0%, and that cost against DGHM-C's (the difference
    of the two per-fold changes). A method robust to missing labels loses least; the
    second gap separates that from how well a method does with every label."""
    lines = ["| drop | method | held-out FROC | same folds at 0% | change from 0% (paired) | "
             "change against DGHM-C's (paired) |", "|---|---|---|---|---|---|"]  # fmt: skip
    ref0 = _values(results, 0.0, REFERENCE, "test.froc")
    for rate in rates:
        if rate == 0:
            continue
        ref = _values(results, rate, REFERENCE, "test.froc")
        ref_change = {f: ref[f] - ref0[f] for f in set(ref) & set(ref0)}
        for m in methods:
            froc = _values(results, rate, m, "test.froc")
            at0 = _values(results, 0.0, m, "test.froc")
            folds = set(froc) & set(at0)
            if not folds:
                continue
            change = {f: froc[f] - at0[f] for f in folds}
            cells = [f"{round(100 * rate)}%", METHODS[m].label,
                     _cell({f: froc[f] for f in folds}), _cell({f: at0[f] for f in folds}),
                     _gap(change, {f: 0.0 for f in folds}),
                     "-" if m == REFERENCE else _gap(change, ref_change)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def coverage_md(
    results: Sequence[dict], methods: Sequence[str], rates: Sequence[float]
) -> list[str]:
    """Training recall at the held-out 1-FP point against what the same detections reach
    shifted at random (:func:`pathodet.bench.losses_real.at_operating_point`'s ``chance``),
    per rate and method: R-recall (the dropped boxes) where labels were dropped, T-recall
    at 0%. Shifted anywhere in the image, boxes lose both the tissue and the cells they
    were put on; shifted one cell away, only the cells. Gaps are paired within each run
    (mean ± standard error, n)."""
    lines = ["| drop | method | detections per training AP image | boxes | recall at 1 FP | "
             "shifted anywhere | above it | shifted one cell (px) | above it |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    at = "train.at_1fp."
    for rate in rates:
        kind = "r" if rate else "t"
        for m in methods:
            anywhere = _values(results, rate, m, f"{at}chance.anywhere.{kind}_recall")
            if not anywhere:
                continue
            one_cell = _values(results, rate, m, f"{at}chance.one_cell.{kind}_recall")
            real = _values(results, rate, m, f"{at}{kind}_recall")
            real = {f: v for f, v in real.items() if f in anywhere}
            cell = _span(_values(results, rate, m, f"{at}chance.cell_px"))
            cells = [f"{round(100 * rate)}%", METHODS[m].label,
                     _cell(_values(results, rate, m, f"{at}detections_per_image"), digits=0),
                     "R (dropped)" if rate else "T (all)", _cell(real), _cell(anywhere),
                     _gap(real, anywhere), f"{_cell(one_cell)}, {cell} px",
                     _gap(real, one_cell)]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def in_size_md(
    results: Sequence[dict], methods: Sequence[str], rates: Sequence[float]
) -> list[str]:
    """Held-out FROC with and without the boxes larger than any SRC a run was trained on
    (:func:`pathodet.bench.losses_real.in_size`), per rate and method."""
    lines = ["| drop | method | held-out FROC | FROC within the trained size | gap to DGHM-C, "
             "within size | recall at 1 FP per NP image, within size | largest trained box, "
             "px | share of predicted boxes left out |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for rate in rates:
        ref = _values(results, rate, REFERENCE, "test_in_size.froc")
        for m in methods:
            froc = _values(results, rate, m, "test_in_size.froc")
            if not froc:
                continue
            side = _values(results, rate, m, "test_in_size.max_side")
            cells = [f"{round(100 * rate)}%", METHODS[m].label,
                     _cell(_values(results, rate, m, "test.froc")), _cell(froc),
                     "-" if m == REFERENCE else _gap(froc, ref),
                     _cell(_values(results, rate, m, "test_in_size.froc_points.1")),
                     _span(side),
                     _cell(_values(results, rate, m, "test_in_size.left_out"))]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def curves_md(results: Sequence[dict], methods: Sequence[str]) -> list[str]:
    """Held-out FROC at each measured step, mean over the folds that reached it."""
    steps = sorted({p["step"] for r in results if r["rate"] == 0 for p in r.get("curve", [])})
    if not steps:
        return []
    lines = ["| method | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]  # fmt: skip
    for m in methods:
        cells = []
        for s in steps:
            xs = [p["froc"] for r in results if r["rate"] == 0 and r["method"] == m
                  for p in r.get("curve", []) if p["step"] == s]  # fmt: skip
            cells.append(_cell(dict(enumerate(xs))))
        if any(c != "-" for c in cells):
            lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
    return lines


def curves_png(results: Sequence[dict], methods: Sequence[str], path: Path) -> Path | None:
    """Held-out FROC against steps at 0% dropped: one thin line per fold, the mean bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    drawn = False
    for k, m in enumerate(methods):
        colour = plt.get_cmap("tab10")(k)
        runs = [r for r in results if r["rate"] == 0 and r["method"] == m and r.get("curve")]
        by_step: dict[int, list[float]] = {}
        for r in runs:
            xs = [p["step"] for p in r["curve"]]
            ys = [p["froc"] for p in r["curve"]]
            ax.plot(xs, ys, color=colour, alpha=0.35, linewidth=0.9)
            for x, y in zip(xs, ys, strict=True):
                by_step.setdefault(x, []).append(y)
        if by_step:
            xs = sorted(by_step)
            ax.plot(xs, [sum(by_step[x]) / len(by_step[x]) for x in xs], "-o", color=colour,
                    linewidth=2.2, label=f"{METHODS[m].label} (mean of {len(runs)})")  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    tc = next((r["config"]["train"] for r in results if r.get("config")), None)
    for k, epoch in enumerate(tc["milestones"] if tc else []):  # where the learning rate drops
        ax.axvline(epoch * tc["max_steps_per_epoch"], color="0.5", linestyle="--", linewidth=0.8,
                   label="learning rate x0.1" if k == 0 else None)  # fmt: skip
    ax.set_xlabel("training steps (batch 8 of 256-px crops at 20x)")
    ax.set_ylabel("held-out FROC")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title("Held-out FROC against steps, 0% dropped (thin: one fold)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def runs_md(results: Sequence[dict], methods: Sequence[str]) -> list[str]:
    """One row per run, by drop rate, held-out fold and method: the figures the tables above
    average, so a reader sees each fold, how long each run took and the code that made it."""

    def fig(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    order = {m: i for i, m in enumerate(methods)}
    lines = ["| drop | fold | method | held-out FROC | within trained size | T-recall | "
             "R-recall | minutes (training) | machine | commit |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    chosen = [r for r in results if r["method"] in order]
    for r in sorted(chosen, key=lambda r: (r["rate"], r["fold"], order[r["method"]])):
        commit = r.get("commit") or "?"
        sized = r.get("test_in_size") or {}
        cells = [f"{round(100 * r['rate'])}%", str(r["fold"]), METHODS[r["method"]].label,
                 fig(r["test"].get("froc")), fig(sized.get("froc")),
                 fig(r["train"].get("t_recall")), fig(r["train"].get("r_recall")),
                 f"{r.get('minutes', 0.0):.0f} ({r.get('train_minutes', 0.0):.0f})",
                 machine_label(r.get("machine")),
                 commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compute_md(results: Sequence[dict]) -> list[str]:
    """Total compute, and the hours each machine (:func:`~pathodet.core.machine.machine_label`:
    CPU or GPU, kernels, precision) gave, most first. A run resumed on another machine
    counts whole on the machine of its last segment."""
    hours: dict[str, float] = {}
    for r in results:
        label = machine_label(r.get("machine"))
        hours[label] = hours.get(label, 0.0) + r.get("minutes", 0.0) / 60
    by_hours = sorted(hours.items(), key=lambda kv: (-kv[1], kv[0]))
    per_machine = "; ".join(f"{h:.1f} h on {label}" for label, h in by_hours)
    return [f"{len(results)} runs, {sum(hours.values()):.1f} hours of training, prediction "
            f"and evaluation in all: {per_machine}."]  # fmt: skip


def report_md(results: Sequence[dict], steps: int, methods: Sequence[str],
              rates: Sequence[float]) -> str:  # fmt: skip
    """The generated part of ``losses-real.md``: the runs at budget ``steps``, with the
    curves of their 0% runs."""
    at = [r for r in results if r["steps"] == steps]
    lines = [f"## Table 3 analogue: 0% dropped, {steps} steps", "",
             "Mean ± sample std over held-out folds (n); gap: the mean paired difference to "
             "DGHM-C over the folds both ran ± its standard error (n), * where it exceeds two "
             "standard errors over at least 3 folds (with 3 a loose mark: a t-test's 95% "
             "needs 4.3). \"All\": "
             "every detection kept by prediction (score at least 0.05, up to 2000 per image), "
             "the challenge's recall and NFP; FROC and recall at 1 FP per NP image rank them "
             "by score.", "",
             *table3_md(at, methods), "",
             f"## Table 4 analogue: annotations dropped from the training folds, {steps} steps",
             "", *table4_md(at, methods, rates), "",
             "## What dropping labels cost each method (held-out FROC)", "",
             "Each run against the same method and fold at 0% dropped; the change is the "
             "mean per-fold difference ± its standard error (n), * beyond two standard "
             "errors. \"Against DGHM-C's\": that change minus DGHM-C's on the same fold, "
             "the paper's claim put as a number (negative: the method lost more than "
             "DGHM-C).", "",
             *drop_cost_md(at, methods, rates), "",
             "## Recall at the operating point against chance", "",
             "A detector that covers SRC-rich tissue with boxes finds cells whether or not it "
             "recognises them. The same detections (scoring at least the held-out 1-FP "
             "threshold) are shifted and matched again, with one random offset per training "
             f"image, mean of {CHANCE_DRAWS} draws: anywhere in the image (wrapped around "
             "it; box number, sizes and pattern kept), and by one cell (the median longer "
             "side of the training boxes) in a random direction, which keeps the tissue the "
             "boxes chose and loses the cells. \"Above it\": the recall minus that baseline, "
             "mean ± standard error over runs (n), * beyond two standard errors (a loose "
             "mark with 3 runs). Runs restored from a report lack the files these need.", "",
             *coverage_md(at, methods, rates), "",
             "## Detections larger than any trained SRC", "",
             "The held-out figures again, without the predicted boxes whose longer side "
             "exceeds the largest box annotated on the run's training AP images (the kept "
             "boxes at a drop rate; pixels of the 40x image). The rule comes from the "
             "training annotations alone.", "",
             *in_size_md(at, methods, rates), "",
             f"## Held-out FROC against training steps (0% dropped, {steps}-step runs)", "",
             *curves_md([r for r in at if r["rate"] == 0], methods), "",
             "## Every run", "",
             "Minutes: wall time of training, prediction and evaluation (training alone in "
             "brackets); machine: CPU (torch kernels, precision) or GPU (cuda, precision); "
             "machine and commit: as recorded by the run's last segment.", "",
             *runs_md(at, methods), "",
             "## Compute", "", *compute_md(results), ""]  # fmt: skip
    return "\n".join(lines)


START, END = "<!-- generated by pathodet bench losses --data: start -->", "<!-- generated: end -->"


def write_real_report(results: Sequence[dict], steps: int, methods: Sequence[str],
                      rates: Sequence[float], docs: Path, command: str) -> Path:  # fmt: skip
    """Write the tables into ``docs/losses-real.md`` between :data:`START` and :data:`END`
    (the written reading around them is kept; a new file gets a title), the curves into
    ``losses-real-curves.png`` and the results, configs included, into ``losses-real.json``."""
    import json

    from pathodet.core.io import atomic_write_text

    docs.mkdir(parents=True, exist_ok=True)
    png = curves_png([r for r in results if r["steps"] == steps], methods,
                     docs / "losses-real-curves.png")  # fmt: skip
    block = [START, "", f"`{command}`", "", report_md(results, steps, methods, rates)]
    if png is not None:
        block += [f"![held-out FROC against steps]({png.name})", ""]
    block.append(END)
    md = docs / "losses-real.md"
    text = (
        md.read_text()
        if md.is_file()
        else "# Which loss copes with missing labels, on real DigestPath\n\n"
    )
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + "\n".join(block) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    atomic_write_text(md, text)
    # configs kept: ``bench losses --restore`` puts a lost ``--out`` back from this file
    atomic_write_text(docs / "losses-real.json", json.dumps(list(results), indent=1))
    return md
