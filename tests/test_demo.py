"""The demo: budget to steps, schedule, operating threshold, progress, and a tiny end-to-end
run that is deterministic, resumes in place and leaves the user's own files alone."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pathodet.cli import app
from pathodet.core.machine import bf16_native
from pathodet.demo import DemoSettings, run_demo
from pathodet.demo.calibrate import LADDER_RATIO, measure_speed
from pathodet.demo.progress import DemoProgress
from pathodet.demo.settings import (
    BUDGET_USE,
    LOSSES,
    demo_config,
    fixed_seconds,
    schedule,
    step_seconds,
)
from pathodet.demo.synthetic import choose_recipe, machine_speed
from pathodet.eval.metrics import froc_curve, operating_threshold
from pathodet.training.config import load_config

# -- budget and schedule -------------------------------------------------------------------

FAST = {"step_seconds": 0.35, "window_seconds": 0.4}  # about bf16 on AMX (step measured)
SLOW = {"step_seconds": 1.28, "window_seconds": 1.1}  # about fp32 on AVX2 (step measured)


@pytest.mark.parametrize("speed", [FAST, SLOW])
def test_budget_plans_within_twenty_minutes_at_the_measured_speed(speed):
    s = DemoSettings()
    steps = s.train_steps(speed)
    # the plan: fixed work + both models' steps at the measured step time
    planned = fixed_seconds(speed) + len(LOSSES) * steps * step_seconds(speed)
    assert s.planned_seconds(speed) == pytest.approx(planned)
    assert planned <= 20 * 60 * BUDGET_USE + 1e-6
    # and uses what the budget allows: the next rung of the ladder would not fit
    bigger = round(steps * LADDER_RATIO) + 1
    assert fixed_seconds(speed) + len(LOSSES) * bigger * step_seconds(speed) > 20 * 60 * BUDGET_USE


def test_a_slower_machine_trains_fewer_steps_in_the_same_budget():
    s = DemoSettings()
    assert s.train_steps(SLOW) < s.train_steps(FAST)
    ratio = s.train_steps(FAST) / s.train_steps(SLOW)
    assert 2.5 < ratio < 5.5  # about the step-time ratio (3.7), within the ladder's rounding


def test_steps_grow_with_the_budget_and_an_explicit_count_wins():
    counts = [DemoSettings(budget_minutes=m).train_steps(FAST) for m in (5, 10, 20, 40)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert DemoSettings(budget_minutes=0.1).train_steps(FAST) == 20  # the floor
    assert DemoSettings(budget_minutes=20, steps=7).train_steps(SLOW) == 7
    with pytest.raises(ValueError, match="budget_minutes"):
        DemoSettings(budget_minutes=0)


@pytest.mark.parametrize(("steps", "per_epoch"), [(975, 42), (300, 42), (20, 42), (6, 1), (50, 7)])
def test_schedule_stretches_the_papers_fourteen_epochs(steps, per_epoch):
    epochs, milestones = schedule(steps, per_epoch)
    assert epochs >= 1
    # the nearest whole number of epochs to the requested steps
    assert abs(epochs * per_epoch - steps) <= per_epoch / 2 or epochs == 1
    assert milestones == sorted(set(milestones))
    assert all(0 < m < epochs for m in milestones)
    if epochs >= 14:  # long enough for both drops, at 9/14 and 12/14 of the run
        assert milestones == [math.ceil(epochs * 9 / 14), math.ceil(epochs * 12 / 14)]


def test_configs_demo_yaml_is_the_demos_recipe(tmp_path):
    """The file researchers repeat the demo with says what the demo really trains."""
    ours = demo_config(tmp_path, "dghm", seed=3, epochs=23, milestones=[15, 20], folds=8)
    theirs = load_config(
        "configs/demo.yaml",
        [f"data.root={tmp_path}", "data.fold_seed=3", "train.seed=3", "train.epochs=23",
         "train.milestones=[15, 20]"],
    )  # fmt: skip
    assert ours == theirs
    focal = demo_config(tmp_path, "focal", 3, 23, [15, 20], 8)
    assert focal.loss.name == "focal"
    assert focal.model_copy(update={"loss": ours.loss}) == ours  # nothing else differs


# -- operating threshold -------------------------------------------------------------------


def test_operating_threshold_on_hand_made_scores():
    # 2 NP images with scores 0.9, 0.8, 0.3, 0.2; hits at 0.95 and 0.5. Candidate
    # thresholds are all scores; FPs per NP image at t = (NP scores >= t) / 2.
    thresholds, _, nfp = froc_curve(np.array([0.95, 0.5]), np.array([0.9, 0.8, 0.3, 0.2]), 2, 2)
    # 1 FP per image allows 2 FPs: t = 0.5 keeps 0.9 and 0.8; t = 0.3 would add a third
    assert operating_threshold(thresholds, nfp, 1.0) == pytest.approx(0.5)
    # 0.5 per image allows 1 FP: t = 0.9 (t = 0.8 would make 2)
    assert operating_threshold(thresholds, nfp, 0.5) == pytest.approx(0.9)
    # no FP at all: only the hit at 0.95 is above every NP score
    assert operating_threshold(thresholds, nfp, 0.0) == pytest.approx(0.95)
    assert operating_threshold(thresholds, nfp, 100.0) == pytest.approx(0.2)


def test_operating_threshold_none_when_no_score_qualifies():
    thresholds, _, nfp = froc_curve(np.zeros(0), np.array([0.9, 0.9, 0.9]), 1, 1)
    assert operating_threshold(thresholds, nfp, 1.0) is None
    thresholds, _, nfp = froc_curve(np.zeros(0), np.zeros(0), 1, 1)
    assert operating_threshold(thresholds, nfp, 1.0) is None


def test_operating_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(5)
    for _ in range(20):
        hits = rng.choice(np.linspace(0, 1, 11), 6)
        negs = rng.choice(np.linspace(0, 1, 11), 9)
        n_neg = int(rng.integers(1, 5))
        fps = float(rng.choice([0.5, 1, 2]))
        thresholds, _, nfp = froc_curve(hits, negs, 6, n_neg)
        got = operating_threshold(thresholds, nfp, fps)
        ok = [t for t in np.unique(np.r_[hits, negs]) if (negs >= t).sum() / n_neg <= fps]
        assert got == (min(ok) if ok else None)


# -- progress ------------------------------------------------------------------------------


def test_overall_progress_counts_planned_seconds():
    bar = DemoProgress([("a", "A", 10.0), ("b", "B", 20.0), ("c", "C", 10.0)], enabled=False)
    overall = bar.bar.progress.tasks[bar.bar.tasks["whole demo"]]
    assert overall.total == 40
    bar.start("a", "steps")(3, 3)
    bar.finish("a")
    update = bar.start("b", "steps")
    update(5, 10)  # half of B's 20 planned seconds
    assert overall.completed == 10 + 10
    update(10, 10)
    bar.finish("b")
    assert overall.completed == 30
    assert set(bar.seconds) == {"a", "b"} and all(v >= 0 for v in bar.seconds.values())


# -- end to end ----------------------------------------------------------------------------

TINY = {
    "steps": 3, "train_positive": 4, "train_negative": 4, "test_positive": 2,
    "test_negative": 2, "image_size": 384, "folds": 2, "slide_width": 1536,
    "slide_height": 1024, "tile": 384, "overlays": 2, "recipe": "light",
}  # fmt: skip


def _metrics(out):
    return {k: json.loads((out / "predictions" / k / "eval" / "metrics.json").read_text())
            for k in LOSSES}  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file in the output folder
    lines = []
    result = run_demo(out, DemoSettings(**TINY), echo=lines.append, progress=False)
    return out, result, lines


def test_tiny_demo_writes_every_stage(tiny):
    out, result, lines = tiny
    for loss in LOSSES:
        run = out / "runs" / loss
        assert (run / "last.pt").is_file() and (run / "config.yaml").is_file()
        assert result["training"][loss]["steps"] >= 1
        pred = out / "predictions" / loss
        assert (pred / "predictions.csv").is_file()
        for f in ("metrics.json", "froc.png", "report.md"):
            assert (pred / "eval" / f).is_file()
    truth = json.loads((out / "data" / "test" / "synth.json").read_text())
    # the test split is fully annotated, the training split about half
    assert truth["totals"]["n_annotated"] == truth["totals"]["n_src"]
    assert result["data"]["train"]["n_annotated"] < result["data"]["train"]["n_src"]
    slide = out / "predictions" / "dghm" / "slides" / "demo-slide"
    for f in ("detections.geojson", "heatmap.png", "summary.json"):
        assert (slide / f).is_file()
    report = (out / "report.md").read_text()
    assert "![FROC of both models on the test split](froc.png)" in report
    assert "| FROC (mean recall at 1-32 FPs per NP image) |" in report
    # every picture the report shows exists
    for ref in [s.split("](", 1)[1].split(")")[0] for s in report.split("![")[1:]]:
        assert (out / ref).is_file(), ref
    assert (out / "overlays" / "ap-1.png").is_file() and (out / "overlays" / "np-1.png").is_file()
    doc = json.loads((out / "demo.json").read_text())
    assert doc["steps"] == 3
    # the precision and the CPU it ran with are recorded, in demo.json and each checkpoint
    native, _ = bf16_native(torch.device(doc["machine"]["device"]))
    assert doc["precision"] == ("bf16" if native else "fp32")
    assert doc["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert not doc["speed"]["measured"]  # the steps were given: nothing measured
    state = torch.load(out / "runs" / "dghm" / "last.pt", weights_only=True)
    assert state["machine"]["precision"] == doc["precision"]
    assert state["machine"]["cpu_model"] == doc["machine"]["cpu_model"]
    assert doc["machine"]["cpu_model"] in report and doc["precision"] in report
    command = [line for line in lines if "pathodet review" in line]
    assert command and f"--data {out / 'data' / 'test'}" in command[0]
    assert f"--predictions {out / 'predictions' / 'dghm'}" in command[0]


def test_tiny_demo_reports_the_metrics_of_the_predictions_it_wrote(tiny):
    out, result, _ = tiny
    from pathodet.eval.evaluate import run_evaluate

    for loss in LOSSES:
        again = run_evaluate(out / "data" / "test", out / "predictions" / loss /
                             "predictions.csv", out / "check" / loss)  # fmt: skip
        assert again["froc"] == pytest.approx(result["evaluation"][loss]["froc"])
        assert again["recall"] == pytest.approx(result["evaluation"][loss]["recall"])


def test_rerun_in_place_reuses_finished_work_and_keeps_the_users_files(tiny):
    out, first, _ = tiny
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")}
    second = run_demo(out, DemoSettings(**TINY), echo=lambda _: None, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert all(second["training"][k]["resumed"] for k in LOSSES)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == mtimes
    for k in LOSSES:
        assert second["evaluation"][k]["froc"] == first["evaluation"][k]["froc"]
    assert second["slide"]["run"]["slides"][0]["status"] == "resumed"


@pytest.mark.slow  # a second whole demo (35-60 s); resumed training is bit-exact in test_train
def test_fresh_run_elsewhere_gives_the_same_numbers(tiny, tmp_path):
    out, first, _ = tiny
    other = tmp_path / "again"
    run_demo(other, DemoSettings(**TINY), echo=lambda _: None, progress=False)
    assert _metrics(other) == _metrics(out)
    a = (out / "predictions" / "dghm" / "predictions.csv").read_text()
    b = (other / "predictions" / "dghm" / "predictions.csv").read_text()
    assert a == b


@pytest.mark.slow  # 40-50 s; resume-or-retrain is can_resume's rule, tested in test_train.py
def test_changed_settings_retrain_instead_of_resuming(tiny, tmp_path):
    out, first, _ = tiny
    other = tmp_path / "copy"
    import shutil

    shutil.copytree(out, other)
    result = run_demo(other, DemoSettings(**{**TINY, "steps": 9}), echo=lambda _: None,
                      progress=False)  # fmt: skip
    for k in LOSSES:
        assert not result["training"][k]["resumed"]
        assert result["training"][k]["steps"] > first["training"][k]["steps"]


def test_cli_demo_refuses_a_bad_budget(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--budget-minutes", "-1"])
    assert res.exit_code == 2
    assert "budget_minutes" in res.output
    assert not (tmp_path / "data").exists()


CPU = torch.device("cpu")


def test_calibration_measures_this_machine_without_touching_the_runs_random_state(tmp_path):
    s = DemoSettings(tile=256)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    cfg = demo_config(tmp_path, "dghm", 0, 1, [])
    speed = measure_speed(cfg, "auto", s.tile, steps=1)
    assert torch.equal(torch.rand(3), expected)  # the calibration consumed no random numbers
    assert speed["step_seconds"] > 0 and speed["window_seconds"] > 0
    # the calibration's own time is reported: it contains the measured step and the two
    # timed windows after warm-up (each at least the fastest); warm-up steps may be faster
    # than the measured one, so they bound nothing
    assert speed["calibration_seconds"] >= speed["step_seconds"] + 2 * speed["window_seconds"]


def test_the_demo_measures_once_per_folder_and_plans_from_it(tmp_path, monkeypatch):
    import pathodet.demo.synthetic as demo_run

    seen = []

    def fake(cfg, precision, tile, device):  # the real measurement is tested above
        seen.append((cfg.model.fpn_channels, precision, tile))
        return {"step_seconds": 1.0 + len(seen), "window_seconds": 0.5, "calibration_seconds": 9.0}

    monkeypatch.setattr(demo_run, "measure_speed", fake)
    s = DemoSettings(tile=256, budget_minutes=20)
    said = []
    first = machine_speed(tmp_path, s, "fp32", CPU, said.append)
    again = machine_speed(tmp_path, s, "fp32", CPU, said.append)
    assert first["measured"] and not first["reused"] and again["reused"]
    assert again["step_seconds"] == first["step_seconds"]  # the same steps on a re-run
    assert s.train_steps(again) == s.train_steps(first)
    assert (tmp_path / "calibration.json").is_file() and seen == [(128, "fp32", 256)]
    # too few full steps in the budget: the light recipe is measured and chosen
    recipe, speed = choose_recipe(tmp_path, s, "fp32", CPU, said.append)
    assert s.train_steps(first) < 600 and recipe == "light" and seen[-1][0] == 64
    assert speed["calibration_seconds"] == 18.0  # both measurements came out of the budget
    fast = DemoSettings(tile=256, budget_minutes=200)
    assert choose_recipe(tmp_path, fast, "fp32", CPU, said.append)[0] == "full"
    assert not machine_speed(tmp_path, DemoSettings(steps=5), "fp32", CPU, said.append)["measured"]
