"""``pathodet bench losses --data``: the real-data loss benchmark's split, budget, runs and report.

The data here is the synthetic generator's DigestPath-layout root (real DigestPath is
what the benchmark is run on; it is too slow for ``make test``). Expected values come
from the recipe's numbers and from the annotations themselves.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_training
from typer.testing import CliRunner

from pathodet.bench.losses_real import (
    RealLossBenchSettings,
    at_operating_point,
    budget_config,
    fold_dir,
    fold_manifest,
    in_size,
    prepare_data,
    rate_name,
    run_config,
    run_real_losses,
)
from pathodet.bench.losses_real_report import (
    compute_md,
    coverage_md,
    drop_cost_md,
    in_size_md,
    paired_gap,
    table3_md,
    table4_md,
    write_real_report,
)
from pathodet.bench.losses_real_results import add_figures, collect, restore
from pathodet.cli import app
from pathodet.core.machine import machine_label
from pathodet.data.digestpath import DatasetError, read_manifest
from pathodet.data.drop import REMOVED_DIR
from pathodet.data.predictions import ImagePredictions
from pathodet.data.synth import write_synthetic_dataset
from pathodet.data.voc import read_voc
from pathodet.demo.real import real_config
from pathodet.eval.annotations import load_annotations
from pathodet.eval.chance import chance_recall
from pathodet.training.checkpoint import load_checkpoint, save_checkpoint
from pathodet.training.run_dir import snapshot_name

TINY = tiny_training(2, 2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("real-bench-data")
    write_synthetic_dataset(out, positive=4, negative=4, size=512, seed=1, images_per_slide=1)
    return out


def test_every_run_clips_its_gradients_unless_overridden(tmp_path):
    manifest = tmp_path / "fold-0.csv"
    for method in ("ce", "dghm"):
        assert run_config(RealLossBenchSettings(), manifest, method).train.grad_clip == 35
    assert real_config("dghm").train.grad_clip is None  # the recipe itself is unchanged
    mine = RealLossBenchSettings(overrides=["train.grad_clip=5"])
    assert run_config(mine, manifest, "focal").train.grad_clip == 5  # the user's wins


def test_budget_stretches_the_recipe_milestones_with_the_steps():
    recipe = real_config("dghm")  # 8 epochs of 100 steps, lr x0.1 after epochs 6 and 7
    assert (recipe.train.epochs, recipe.train.milestones) == (8, [6, 7])
    same = budget_config(recipe, 800)
    assert (same.train.epochs, same.train.milestones) == (8, [6, 7])
    long = budget_config(recipe, 2400)  # 24 epochs; 6/8 and 7/8 of them
    assert (long.train.epochs, long.train.milestones) == (24, [18, 21])
    short = budget_config(recipe, 200)  # 2 epochs: ceil(1.5) = 2 is the end, ceil(1.75) too
    assert (short.train.epochs, short.train.milestones) == (2, [])
    with pytest.raises(ValueError, match="multiple of train.max_steps_per_epoch"):
        budget_config(recipe, 850)


def test_held_out_fold_keeps_every_box_and_training_folds_lose_the_dropped_ones(root, tmp_path):
    s = RealLossBenchSettings(folds=2, run_folds=[0], drop_rates=[0.0, 0.5])
    folds_csv = prepare_data(root, tmp_path, s)
    assert fold_manifest(tmp_path, folds_csv, 0.0, 0) == folds_csv
    original = {r.name: r for r in read_manifest(folds_csv)}
    mixed = read_manifest(fold_manifest(tmp_path, folds_csv, 0.5, 0))
    assert sorted(r.name for r in mixed) == sorted(original)
    kept_total = removed_total = 0
    for r in mixed:
        o = original[r.name]
        assert r.fold == o.fold and r.attribute == o.attribute
        if r.attribute != "AP":
            continue
        n_orig, n_now = len(read_voc(o.annotation).boxes), len(read_voc(r.annotation).boxes)
        if r.fold == 0:  # held out: the original annotation file, every box
            assert r.annotation == o.annotation and n_now == n_orig
        else:  # trained on: round(0.5 n) boxes removed (half up), kept apart
            removed = tmp_path / "data" / "drop-50" / "removed-annotations" / r.annotation.name
            n_removed = len(read_voc(removed).boxes)
            assert r.annotation != o.annotation
            assert n_removed == math.floor(0.5 * n_orig + 0.5) and n_now + n_removed == n_orig
            kept_total, removed_total = kept_total + n_now, removed_total + n_removed
    assert removed_total > 0 and kept_total > 0


def test_a_run_resumed_after_training_counts_its_earlier_minutes(root, tmp_path, monkeypatch):
    s = RealLossBenchSettings(folds=2, run_folds=[0], drop_rates=[0.0], methods=["dghm"],
                              steps=4, curve_every=0, overrides=TINY)  # fmt: skip

    def killed(folder):
        raise KeyboardInterrupt("killed after training")

    monkeypatch.setattr("pathodet.bench.losses_real.in_size", killed)
    with pytest.raises(KeyboardInterrupt):
        run_real_losses(root, tmp_path, s, log=lambda _: None)
    monkeypatch.undo()
    # as if the killed segment had trained for an hour: its checkpoint and fold record say so
    folder = fold_dir(tmp_path, 4, 0.0, "dghm", 0)
    state = load_checkpoint(folder / "run" / "last.pt")
    save_checkpoint(folder / "run" / "last.pt", {**state, "train_seconds": 3600.0})
    record = json.loads((folder / "fold.json").read_text())
    (folder / "fold.json").write_text(json.dumps({**record, "train_minutes": 60.0}))
    # the repository moves on while the run evaluates: the result names the code it started on
    head = ["started-here"]
    monkeypatch.setattr("pathodet.bench.losses_real.git_commit", lambda: head[0])
    real_in_size = in_size

    def commit_meanwhile(folder):
        head[0] = "committed-later"
        return real_in_size(folder)

    monkeypatch.setattr("pathodet.bench.losses_real.in_size", commit_meanwhile)
    t0 = time.perf_counter()
    (r,) = run_real_losses(root, tmp_path, s, log=lambda _: None)
    segment = (time.perf_counter() - t0) / 60
    assert r["commit"] == "started-here"
    assert r["train_minutes"] == 60
    assert 60 <= r["minutes"] <= 60 + segment  # the killed hour, plus this segment's wall
    assert r["minutes"] >= r["train_minutes"]


def test_runs_measure_curve_and_recall_then_resume_for_free(root, tmp_path):
    s = RealLossBenchSettings(folds=2, run_folds=[0], drop_rates=[0.0, 0.5], methods=["dghm"],
                              steps=4, curve_every=2, overrides=TINY)  # fmt: skip
    results = run_real_losses(root, tmp_path, s, log=lambda _: None)
    by_rate = {r["rate"]: r for r in results}
    assert sorted(by_rate) == [0.0, 0.5]
    held_out = [r for r in read_manifest(tmp_path / "folds.csv") if r.fold == 0]
    boxes = sum(len(read_voc(r.annotation).boxes) for r in held_out if r.attribute == "AP")
    for r in results:
        assert r["steps"] == 4
        assert r["test"]["num_gt"] == boxes  # the held-out fold is never dropped
        run = fold_dir(tmp_path, 4, r["rate"], "dghm", 0) / "run"
        assert not (run / "last.pt").exists() and not (run / "best.pt").exists()
    zero, half = by_rate[0.0], by_rate[0.5]
    assert [p["step"] for p in zero["curve"]] == [2, 4]
    assert zero["curve"][-1]["froc"] == zero["test"]["froc"]
    run = fold_dir(tmp_path, 4, 0.0, "dghm", 0) / "run"
    assert not (run / snapshot_name(2)).exists() and not (run / snapshot_name(4)).exists()
    assert half["curve"] == []
    assert zero["train"]["r_recall"] is None and zero["train"]["removed_boxes"] == 0
    assert half["train"]["removed_boxes"] > 0 and half["train"]["r_recall"] is not None
    assert 0.0 <= half["train"]["r_recall"] <= 1.0
    # the trained-on AP images' boxes: at 0% all of them; at 50% those kept + those removed
    assert (
        zero["train"]["kept_boxes"] == half["train"]["kept_boxes"] + half["train"]["removed_boxes"]
    )

    # in size: the held-out figures without boxes longer than the largest trained-on box
    for r in results:
        manifest = fold_manifest(tmp_path, tmp_path / "folds.csv", r["rate"], 0)
        trained = [b for m in read_manifest(manifest) if m.fold != 0 and m.attribute == "AP"
                   for b in read_voc(m.annotation).boxes]  # fmt: skip
        side = max(max(b[2] - b[0], b[3] - b[1]) for b in trained)
        sized = r["test_in_size"]
        assert sized["max_side"] == pytest.approx(side)
        assert 0 <= sized["left_out"] <= 1 and sized["froc"] is not None
    assert half["test_in_size"]["max_side"] <= zero["test_in_size"]["max_side"]  # fewer boxes

    # at the held-out operating point: the training recall of the boxes scoring at least it
    for r in results:
        folder = fold_dir(tmp_path, 4, r["rate"], "dghm", 0)
        at, fold_json = r["train"]["at_1fp"], folder / "fold.json"
        assert at["threshold"] == json.loads(fold_json.read_text())["threshold_at_1fp"]
        for k in ("t_recall", "r_recall"):  # fewer boxes count: never above all scores
            assert at[k] is None or at[k] <= r["train"][k]
        # detections made up for the check: each kept box found (score 0.9) and a decoy
        # beside it (0.2). At threshold 0.5 the kept boxes alone count: T-recall 1, their
        # number per image, and chance recalls of exactly these boxes
        written = folder / "train-eval" / "predictions" / "predictions.csv"
        original, rows = written.read_text(), ["image,x1,y1,x2,y2,score"]
        gt_rows = [(Path(m.image).name, b) for m in read_manifest(folder / "train-ap.csv")
                   for b in read_voc(m.annotation).boxes]  # fmt: skip
        for name, b in gt_rows:
            q = (b[2] - b[0]) / 4  # the decoy: the box a quarter of its width along
            rows += [f"{name},{b[0]},{b[1]},{b[2]},{b[3]},0.9",
                     f"{name},{b[0] + q},{b[1]},{b[2] + q},{b[3]},0.2"]  # fmt: skip
        written.write_text("\n".join(rows) + "\n")
        record = fold_json.read_text()
        fold_json.write_text(json.dumps({**json.loads(record), "threshold_at_1fp": 0.5}))
        at = at_operating_point(folder, tmp_path, r["rate"])
        n_ap = len(read_manifest(folder / "train-ap.csv"))
        assert at["t_recall"] == 1.0 and at["detections_per_image"] == len(gt_rows) / n_ap
        chance = at["chance"]  # shifted by the median side of the trained-on boxes
        sides = [max(b[2] - b[0], b[3] - b[1]) for _, b in gt_rows]
        assert chance["cell_px"] == pytest.approx(float(np.median(sides)))
        removed = tmp_path / "data" / rate_name(r["rate"]) / REMOVED_DIR if r["rate"] else None
        gt = load_annotations(folder / "train-ap.csv", removed)
        by_image: dict = {}
        for name, b in gt_rows:
            by_image.setdefault(name, []).append(list(b))
        kept = {
            k: ImagePredictions(np.array(v, float), np.ones(len(v))) for k, v in by_image.items()
        }
        for kind, distance in (("anywhere", None), ("one_cell", chance["cell_px"])):
            assert chance[kind] == chance_recall(
                kept, gt.annotated, 0.3, gt.removed, chance["draws"], distance=distance
            )
            assert (chance[kind]["r_recall"] is None) == (r["rate"] == 0)
        assert chance["one_cell"]["t_recall"] < 1.0  # moved one cell, boxes leave their cells
        written.write_text(original)
        # at threshold 0 every box counts: the all-score figures
        fold_json.write_text(json.dumps({**json.loads(record), "threshold_at_1fp": 0.0}))
        at0 = at_operating_point(folder, tmp_path, r["rate"])
        assert (at0["t_recall"], at0["r_recall"]) == (r["train"]["t_recall"],
                                                      r["train"]["r_recall"])  # fmt: skip
        # no 1-FP threshold (a collapsed detector): nothing kept, every figure 0
        fold_json.write_text(json.dumps({**json.loads(record), "threshold_at_1fp": None}))
        none = at_operating_point(folder, tmp_path, r["rate"])
        zero_r = 0.0 if r["rate"] else None
        assert (none["t_recall"], none["r_recall"], none["detections_per_image"]) == (
            0.0, zero_r, 0.0)  # fmt: skip
        for kind in ("anywhere", "one_cell"):
            assert none["chance"][kind] == {"t_recall": 0.0, "r_recall": zero_r}
        fold_json.write_text(record)
    assert half["train"]["at_1fp"]["r_recall"] is not None  # 0 when no 1-FP threshold
    assert zero["train"]["at_1fp"]["r_recall"] is None

    first = fold_dir(tmp_path, 4, 0.0, "dghm", 0) / "result.json"  # a run made before them
    before = json.loads(first.read_text())
    made_before = {k: v for k, v in before.items() if k != "test_in_size"}
    made_before["train"] = {k: v for k, v in before["train"].items() if k != "at_1fp"}
    first.write_text(json.dumps(made_before))
    assert add_figures(tmp_path, log=lambda _: None) == 1
    assert json.loads(first.read_text()) == before
    assert add_figures(tmp_path, log=lambda _: None) == 0
    no_chance = json.loads(first.read_text())  # made before the chance recalls only
    no_chance["train"]["at_1fp"] = {k: v for k, v in before["train"]["at_1fp"].items()
                                    if k in ("threshold", "t_recall", "r_recall")}  # fmt: skip
    first.write_text(json.dumps(no_chance))
    assert add_figures(tmp_path, log=lambda _: None) == 1
    assert json.loads(first.read_text()) == before  # seeded: the same chance figures again
    old_none = json.loads(first.read_text())  # recorded when no 1-FP point meant no figures
    old_none["train"]["at_1fp"] = {"threshold": None, "t_recall": None, "r_recall": None,
                                   "detections_per_image": None, "chance": None}  # fmt: skip
    first.write_text(json.dumps(old_none))
    assert add_figures(tmp_path, log=lambda _: None) == 1
    assert json.loads(first.read_text()) == before

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/**/result.json")}
    said = []
    again = run_real_losses(root, tmp_path, s, log=said.append)
    assert again == results
    # all done before: the ETA comes from their recorded minutes (run 1 of 2: one run left)
    line = next(x for x in said if x.startswith("[1/2]"))
    assert "(done before)" in line and "nan" not in line
    assert line.endswith(f"ETA {results[0]['minutes']:.0f} min")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/**/result.json")} == stamps
    assert len(collect(tmp_path)) == 2
    other = s.model_copy(update={"seed": 1})  # another training seed, same folders
    with pytest.raises(DatasetError, match="another config"):
        run_real_losses(root, tmp_path, other, log=lambda _: None)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/**/result.json")} == stamps
    assert collect(tmp_path, other) == [] and len(collect(tmp_path, s)) == 2

    md = write_real_report(collect(tmp_path), 4, ["dghm"], [0.0, 0.5], tmp_path / "docs", "cmd")
    text = md.read_text()
    assert "## Table 3 analogue" in text and "| DGHM-C | " in text and "50%" in text
    assert (
        f"| 0% | DGHM-C | {zero['test']['froc']:.3f} (1) | {zero['test_in_size']['froc']:.3f}"
        in text
    )
    for r in results:  # every run has its row: drop, fold, method, then its own figures
        row = (f"| {round(100 * r['rate'])}% | 0 | DGHM-C | {r['test']['froc']:.3f} | "
               f"{r['test_in_size']['froc']:.3f} | {r['train']['t_recall']:.3f} | ")  # fmt: skip
        rr = r["train"]["r_recall"]
        row += ("-" if rr is None else f"{rr:.3f}") + " | "
        row += f"{r['minutes']:.0f} ({r['train_minutes']:.0f}) | {machine_label(r['machine'])} | "
        row += r["commit"][:7]  # the label's form: test_compute_line_gives_each_machine_its_hours
        assert row in text
    (tmp_path / "docs" / "losses-real.md").write_text(
        text.replace("# Which", "# Reading\n\nkept\n\n# Which")
    )
    write_real_report(collect(tmp_path), 4, ["dghm"], [0.0, 0.5], tmp_path / "docs", "cmd2")
    again_text = md.read_text()  # the written part is kept, the generated block replaced
    assert "kept" in again_text and "`cmd2`" in again_text and "`cmd`" not in again_text
    # the report's JSON keeps each run whole, config included: a lost --out comes back from it
    lost = tmp_path / "lost"
    assert restore(tmp_path / "docs" / "losses-real.json", root, lost, s, log=said.append) == 2
    assert run_real_losses(root, lost, s, log=lambda _: None) == [
        {**r, "config": json.loads((fold_dir(lost, 4, r["rate"], "dghm", 0) / "result.json")
                                   .read_text())["config"],
         "restored_from": str(tmp_path / "docs" / "losses-real.json")} for r in results
    ]  # fmt: skip

    gone = fold_dir(tmp_path, 4, 0.5, "dghm", 0)  # a run whose files were deleted
    kept = json.loads((gone / "result.json").read_text())
    del kept["test_in_size"]
    (gone / "result.json").write_text(json.dumps(kept))
    (gone / "train-ap.csv").unlink()
    said = []
    assert add_figures(tmp_path, log=said.append) == 0  # logged, the others untouched
    assert len(said) == 1 and str(gone) in said[0] and "train-ap.csv" in said[0]
    assert "test_in_size" not in json.loads((gone / "result.json").read_text())


def test_a_lost_out_folder_is_restored_from_the_report_and_the_grid_resumes_there(root, tmp_path):
    s = RealLossBenchSettings(folds=2, run_folds=[0], drop_rates=[0.0, 0.5], methods=["dghm"],
                              steps=4, curve_every=2, overrides=TINY)  # fmt: skip
    first = tmp_path / "first"  # the out folder the report was made from, then lost
    folds_csv = prepare_data(root, first, s)

    def recorded(rate: float, method: str = "dghm", **change) -> dict:
        cfg = run_config(s, fold_manifest(first, folds_csv, rate, 0), method)
        if rate == 0:
            cfg.train.snapshot_every = s.curve_every
        return {"method": method, "rate": rate, "fold": 0, "seed": 0, "drop_seed": 0,
                "overrides": TINY, "steps": 4, "minutes": 1.0,
                "test": {"froc": rate, "num_gt": boxes}, "train": {"r_recall": None},
                "config": cfg.model_dump(mode="json"), **change}  # fmt: skip

    boxes = sum(len(read_voc(r.annotation).boxes) for r in read_manifest(folds_csv)
                if r.fold == 0 and r.attribute == "AP")  # fmt: skip
    other_recipe = recorded(0.5)
    other_recipe["config"]["train"]["lr"] *= 2
    other_split = {**recorded(0.5), "test": {"froc": 0.5, "num_gt": boxes + 1}}
    report = tmp_path / "losses-real.json"
    report.write_text(json.dumps([
        recorded(0.5, drop_seed=1), recorded(0.0, fold=1), recorded(0.5, seed=1),
        recorded(0.0, method="ghm"), recorded(0.0), recorded(0.5),
        {**recorded(0.5), "config": None}, other_recipe, other_split,
    ]))  # fmt: skip
    lost = tmp_path / "lost"
    said = []
    # restored: the two runs of s; left out: another drop seed, fold, seed and method (one
    # line), and unlogged, the records of a cell already restored
    assert restore(report, root, lost, s, log=said.append) == 2
    assert said == ["4 recorded run(s) of other grids (seed, drop seed, --set, budget, rate, "
                    "fold or method) left out"]  # fmt: skip
    for rate in (0.0, 0.5):
        got = json.loads((fold_dir(lost, 4, rate, "dghm", 0) / "result.json").read_text())
        assert got["test"]["froc"] == rate and got["restored_from"] == str(report)
        assert got["config"]["data"]["root"] == str(fold_manifest(lost, lost / "folds.csv",
                                                                  rate, 0).resolve())  # fmt: skip
    assert not fold_dir(lost, 4, 0.0, "ghm", 0).exists()
    assert not fold_dir(lost, 4, 0.0, "dghm", 1).exists()
    assert not fold_dir(lost, 4, 0.5, "dghm", 0, drop_seed=1).exists()

    said = []
    results = run_real_losses(root, lost, s, log=said.append)  # nothing left to train
    assert [r["test"]["froc"] for r in results] == [0.0, 0.5]
    progress = [line for line in said if line.startswith("[")]
    assert len(progress) == 2 and all("(done before)" in line for line in progress)
    assert not list(lost.glob("runs/**/last.pt"))

    fresh = tmp_path / "fresh"
    report.write_text(json.dumps([{**recorded(0.5), "config": None}, other_recipe, other_split]))
    said = []
    assert restore(report, root, fresh, s, log=said.append) == 0
    assert len(said) == 3 and "no config" in said[0] and "another recipe" in said[1]
    assert f"had {boxes + 1} boxes, here {boxes}" in said[2]
    assert not (fresh / "runs").exists()
    for bad in ({"not": "a list"}, [recorded(0.0), "a string"]):
        report.write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match="losses-real.json"):
            restore(report, root, fresh, s)


def test_paired_gap_and_its_two_standard_error_mark():
    a = {0: 0.30, 1: 0.50, 2: 0.40}
    b = {0: 0.10, 1: 0.35, 2: 0.20, 3: 0.9}  # fold 3 has no partner: left out
    mean, se, n = paired_gap(a, b)
    diffs = [0.20, 0.15, 0.20]
    m = sum(diffs) / 3
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / 2)
    assert n == 3 and mean == pytest.approx(m) and se == pytest.approx(sd / math.sqrt(3))

    def result(method, fold, froc, rate=0.0, rr=None):
        return {"method": method, "rate": rate, "fold": fold, "steps": 8,
                "test": {"froc": froc, "recall": 0.5, "precision": 0.1, "nfp": 3.0,
                         "froc_points": {"1": froc / 2, "32": froc}},
                "train": {"t_recall": 0.6, "r_recall": rr}}  # fmt: skip

    rows = [result("dghm", f, v) for f, v in b.items()] + [
        result("focal", f, v) for f, v in a.items()
    ]
    table = "\n".join(table3_md(rows, ["focal", "dghm"]))
    assert f"+{m:.3f} ± {sd / math.sqrt(3):.3f} (3) *" in table  # 0.183 > 2 x 0.017
    focal_row = next(r for r in table.splitlines() if r.startswith("| focal |"))
    half = [v / 2 for v in a.values()]  # recall at 1 FP per NP image, per fold
    sd_half = math.sqrt(sum((v - sum(half) / 3) ** 2 for v in half) / 2)
    assert focal_row.split(" | ")[3] == f"{sum(half) / 3:.3f} ± {sd_half:.3f} (3)"
    noisy = [result("dghm", 0, 0.1), result("dghm", 1, 0.5), result("focal", 0, 0.3),
             result("focal", 1, 0.2)]  # fmt: skip
    assert "*" not in "\n".join(table3_md(noisy, ["focal", "dghm"]))  # +0.2 and -0.3: no sign
    # two folds that agree have a standard error near 0, but two pairs are not enough to mark
    two = [result("dghm", 0, 0.1), result("dghm", 1, 0.3), result("focal", 0, 0.3),
           result("focal", 1, 0.5001)]  # fmt: skip
    two_table = "\n".join(table3_md(two, ["focal", "dghm"]))
    assert "+0.200 ± 0.000 (2) |" in two_table and "*" not in two_table
    t4 = [result("dghm", 0, 0.2, 0.5, 0.7), result("ce", 0, 0.1, 0.5, 0.2)]
    t4[0]["train"]["at_1fp"] = {"threshold": 0.4, "t_recall": 0.45, "r_recall": 0.4}
    table = "\n".join(table4_md(t4, ["ce", "dghm"], [0.0, 0.5]))
    # R-recall, its gap, T-recall; at the 1-FP point R- and T-recall (a run made before
    # them has none); held-out FROC and its gap
    assert (
        "| 50% | CE | 0.200 (1) | -0.500 (1) | 0.600 (1) | - | - | 0.100 (1) | -0.100 (1) |"
        in table
    )
    assert (
        "| 50% | DGHM-C | 0.700 (1) | - | 0.600 (1) | 0.400 (1) | 0.450 (1) | 0.200 (1) | - |"
        in table
    )


def test_compute_line_gives_each_machine_its_hours():
    def run(minutes, cpu, capability, precision, device="cpu", gpu=None):
        machine = {"device": device, "cpu_model": cpu, "cpu_capability": capability,
                   "precision": precision, **({"gpu": gpu} if gpu else {})}  # fmt: skip
        return {"minutes": minutes, "machine": machine}

    runs = [run(30, "Intel Xeon", "AVX512", "bf16"), run(48, "Intel Xeon", "AVX512", "bf16"),
            run(150, "AMD EPYC", "AVX2", "fp32"),
            run(6, "AMD EPYC", "AVX512", "bf16", "cuda", "NVIDIA H200"),
            {"minutes": 12}]  # fmt: skip
    assert machine_label(runs[2]["machine"]) == "AMD EPYC (AVX2, fp32)"
    assert (
        machine_label(runs[3]["machine"]) == "NVIDIA H200 (cuda, bf16)"
    )  # the GPU, not its host CPU
    (line,) = compute_md(runs)
    # 246 minutes in all: 78 on the Xeon, 150 on the EPYC, 6 on the GPU, 12 unrecorded
    assert line.startswith("5 runs, 4.1 hours of training, prediction and evaluation")
    assert line.endswith(
        ": 2.5 h on AMD EPYC (AVX2, fp32); 1.3 h on Intel Xeon (AVX512, bf16); "
        "0.2 h on ? (?, ?); 0.1 h on NVIDIA H200 (cuda, bf16)."
    )  # most first


def test_drop_cost_pairs_each_run_with_the_same_fold_at_zero_and_with_dghm():
    def result(method, rate, fold, froc):
        return {"method": method, "rate": rate, "fold": fold, "test": {"froc": froc}}

    dghm = {0.0: {0: 0.2, 1: 0.3, 2: 0.2}, 0.5: {0: 0.4, 1: 0.2, 2: 0.2}}
    ce = {0.0: {0: 0.4, 1: 0.5, 2: 0.7}, 0.5: {0: 0.0, 1: 0.0, 2: 0.5, 3: 0.9}}
    rows = [result(m, rate, f, v) for m, runs in (("dghm", dghm), ("ce", ce))
            for rate, folds in runs.items() for f, v in folds.items()]  # fmt: skip

    def mean_se(xs):
        m = sum(xs) / len(xs)
        return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))

    ce_change = [ce[0.5][f] - ce[0.0][f] for f in range(3)]  # fold 3 has no 0% run
    dghm_change = [dghm[0.5][f] - dghm[0.0][f] for f in range(3)]
    m, se = mean_se(ce_change)  # -0.367 ± 0.088: beyond 2 SE
    d, dse = mean_se([c - g for c, g in zip(ce_change, dghm_change, strict=True)])  # -0.400 ± 0.115
    g, gse = mean_se(dghm_change)  # +0.033 ± 0.088: no mark
    table = drop_cost_md(rows, ["dghm", "ce"], [0.0, 0.5])
    ce_row = next(r for r in table if "| CE |" in r).split(" | ")
    assert ce_row[2] == "0.167 ± 0.289 (3)"  # the 50% runs that have a 0% partner
    assert ce_row[4] == f"{m:+.3f} ± {se:.3f} (3) *"
    assert ce_row[5] == f"{d:+.3f} ± {dse:.3f} (3) * |"
    dghm_row = next(r for r in table if "| DGHM-C |" in r).split(" | ")
    assert dghm_row[4] == f"{g:+.3f} ± {gse:.3f} (3)" and dghm_row[5] == "- |"
    assert len(table) == 4  # header, rule, one row per method; no 0% rows


def test_in_size_table_names_the_largest_trained_box_per_cell():
    def result(fold, rate, side, froc):
        sized = {"froc": froc, "froc_points": {"1": froc / 2}, "max_side": side,
                 "left_out": 0.1 * fold}  # fmt: skip
        return {"method": "dghm", "rate": rate, "fold": fold, "test": {"froc": 0.1},
                "test_in_size": sized}  # fmt: skip

    runs = [result(0, 0.0, 174.0, 0.4), result(1, 0.0, 188.0, 0.2), result(0, 0.7, 168.0, 0.3)]
    rows = {r.split(" | ")[0]: r.split(" | ") for r in in_size_md(runs, ["dghm"], [0.0, 0.7])}
    assert rows["| 0%"][3] == "0.300 ± 0.141 (2)" and rows["| 0%"][6] == "174-188"
    assert rows["| 70%"][3] == "0.300 (1)" and rows["| 70%"][6] == "168"  # one run: no range


def test_cli_real_mode_refuses_methods_that_need_a_teacher(root, tmp_path):
    res = CliRunner().invoke(app, ["bench", "losses", "--data", str(root), "--out", str(tmp_path),
                                   "--methods", "dghm,score_ss"])  # fmt: skip
    assert res.exit_code != 0 and "score_ss" in res.output and "synthetic" in res.output
    res = CliRunner().invoke(app, ["bench", "losses", "--data", str(root), "--out", str(tmp_path),
                                   "--seeds", "0,1"])  # fmt: skip
    assert res.exit_code != 0 and "one seed" in res.output
    res = CliRunner().invoke(app, ["bench", "losses", "--data", str(root), "--out", str(tmp_path),
                                   "--rates", "0,half"])  # fmt: skip
    assert res.exit_code != 0 and "--rates 0,half" in res.output
    res = CliRunner().invoke(app, ["bench", "losses", "--out", str(tmp_path),
                                   "--restore", str(tmp_path / "losses-real.json")])  # fmt: skip
    assert res.exit_code != 0 and "--restore" in res.output and "--data" in res.output
    assert not (tmp_path / "runs").exists()


def test_cli_real_report_only_names_the_command_that_reproduces_it(root, tmp_path):
    docs = tmp_path / "docs"
    res = CliRunner().invoke(app, ["bench", "losses", "--data", str(root), "--out", str(tmp_path),
                                   "--rates", "0,0.5", "--folds", "1", "--steps", "8",
                                   "--report-only", "--docs", str(docs)])  # fmt: skip
    assert res.exit_code == 0, res.output
    md = (docs / "losses-real.md").read_text()
    q = shlex.quote
    assert f"pathodet bench losses --data {q(str(root))} --out {q(str(tmp_path))} --rates 0,0.5 " \
           "--folds 1 --steps 8" in md  # fmt: skip
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_recall_above_chance_is_paired_within_each_run():
    def result(fold, r, anywhere, one_cell):
        chance = {"anywhere": {"t_recall": 0.4, "r_recall": anywhere},
                  "one_cell": {"t_recall": 0.4, "r_recall": one_cell}, "cell_px": 60.0 + fold,
                  "draws": 8}  # fmt: skip
        return {"method": "dghm", "rate": 0.5, "fold": fold, "steps": 8,
                "train": {"at_1fp": {"threshold": 0.3, "t_recall": 0.5, "r_recall": r,
                                     "detections_per_image": 100.0 * (fold + 1),
                                     "chance": chance}}}  # fmt: skip

    runs = [result(0, 0.50, 0.30, 0.50), result(1, 0.40, 0.25, 0.40), result(2, 0.45, 0.20, 0.45)]
    runs.append(
        {
            "method": "dghm",
            "rate": 0.5,
            "fold": 3,
            "steps": 8,  # made before chance
            "train": {"at_1fp": {"threshold": 0.3, "t_recall": 0.9, "r_recall": 0.9}},
        }
    )
    rows = [r for r in coverage_md(runs, ["dghm", "ce"], [0.0, 0.5]) if r.startswith("| ")]
    assert len(rows) == 2  # the header and DGHM-C at 50%: CE has no run, 0% none
    cells = rows[1].strip("| ").split(" | ")
    assert cells[:4] == ["50%", "DGHM-C", "200 ± 100 (3)", "R (dropped)"]
    assert cells[4] == "0.450 ± 0.050 (3)"  # fold 3 lacks chance: left out
    assert cells[5] == "0.250 ± 0.050 (3)"
    diffs = [0.20, 0.15, 0.25]  # R-recall minus its shifted-anywhere recall, per run
    sd = math.sqrt(sum((d - 0.2) ** 2 for d in diffs) / 2)
    assert cells[6] == f"+0.200 ± {sd / math.sqrt(3):.3f} (3) *"
    assert cells[7] == "0.450 ± 0.050 (3), 60-62 px"  # one cell away: the runs' cell sizes
    assert cells[8] == "+0.000 ± 0.000 (3)"  # no better than boxes one cell off: no mark
    one = [r for r in coverage_md(runs[:1], ["dghm"], [0.5]) if r.startswith("| 50%")]
    assert one[0].split(" | ")[7] == "0.500 (1), 60 px"  # one run: one size, no range
