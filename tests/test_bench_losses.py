"""``pathodet bench losses``: settings, aggregation, the paper-ordering check, the report,
and a tiny end-to-end run (its metrics against an independent evaluation, resume, clean-up)."""

import json
import statistics

import pytest
from PIL import Image
from typer.testing import CliRunner

from pathodet.bench.losses import (
    METHODS,
    LossBenchSettings,
    bench_config,
    plan,
    rate_name,
    run_dir,
    run_losses,
)
from pathodet.bench.losses_report import (
    COLUMNS,
    mean_std,
    ordering_md,
    paper_ordering,
    summarize,
    tables_md,
    write_report,
)
from pathodet.cli import app
from pathodet.data.digestpath import FULL_DIR, load_records
from pathodet.data.drop import REMOVED_DIR
from pathodet.data.voc import read_voc
from pathodet.eval.evaluate import run_evaluate
from pathodet.training.config import load_config

LABELS = {m: METHODS[m].label for m in METHODS}


def _result(method, rate, seed, **values):
    test = {k: values.get(k) for k in ("precision", "nfp_score", "recall", "froc")}
    train = {k: values.get(k) for k in ("t_recall", "r_recall", "true_recall", "true_precision")}
    return {"method": method, "label": LABELS[method], "rate": rate, "seed": seed,
            "test": test, "train": train, "train_seconds": 1.0, "eval_seconds": 0.5}  # fmt: skip


# --- settings -----------------------------------------------------------------------------


def test_settings_refuse_unknown_methods_bad_rates_and_score_ss_before_its_prior():
    with pytest.raises(ValueError, match="unknown method"):
        LossBenchSettings(methods=["dghm", "gfocal"])
    with pytest.raises(ValueError, match="drop rates"):
        LossBenchSettings(drop_rates=[0.3, 1.0])
    with pytest.raises(ValueError, match="focal run"):
        LossBenchSettings(methods=["score_ss", "focal"])
    with pytest.raises(ValueError, match="repeat"):
        LossBenchSettings(methods=["focal", "focal"])
    assert LossBenchSettings().methods.index("focal") < LossBenchSettings().methods.index(
        "score_ss"
    )


def test_default_covers_the_issue_floor():
    s = LossBenchSettings()
    assert set(s.methods) == set(METHODS) and len(METHODS) == 17
    assert s.drop_rates == [0.0, 0.3, 0.5, 0.7] and len(s.seeds) >= 2
    runs = plan(s)
    assert len(runs) == len(s.seeds) * 4 * 17
    # seed-major: the first half of the plan is every run of the first seed
    assert {seed for seed, _, _ in runs[: len(runs) // 2]} == {s.seeds[0]}


def test_comining_methods_configure_the_bases_and_attribute_awareness():
    want = {  # method: (loss, attribute-aware, co-generation on)
        "comining": ("focal", True, True), "comining_orig": ("focal", False, True),
        "comining_dghm": ("dghm", True, True), "comining_dghm_orig": ("dghm", False, True),
        "joint_dghm": ("dghm", True, False),
    }  # fmt: skip
    for method, (loss, aware, mine) in want.items():
        m = METHODS[method]
        cfg = load_config(None, [f"loss.name={m.loss}", *m.overrides])
        co = cfg.train.comining
        assert (cfg.loss.name, co.enabled, co.attribute_aware, co.mine) == (loss, True, aware, mine)
    enabled = {
        m for m, x in METHODS.items()
        if load_config(None, [f"loss.name={x.loss}", *x.overrides]).train.comining.enabled
    }  # fmt: skip
    assert enabled == set(want)


def test_rate_names():
    assert [rate_name(r) for r in (0.0, 0.3, 0.5, 0.7)] == [
        "drop-00", "drop-30", "drop-50", "drop-70",
    ]  # fmt: skip


# --- aggregation and the ordering check ---------------------------------------------------


def test_mean_std_is_the_sample_statistics_of_the_present_values():
    xs = [0.61, 0.74, 0.66]
    mean, std, n = mean_std([*xs, None])
    assert n == 3
    assert mean == pytest.approx(statistics.mean(xs))
    assert std == pytest.approx(statistics.stdev(xs))  # ddof 1
    assert mean_std([0.5]) == (0.5, None, 1)
    assert mean_std([None, None]) == (None, None, 0)


def test_summarize_groups_by_rate_and_method():
    results = [
        _result("dghm", 0.5, 0, froc=0.8, r_recall=0.9),
        _result("dghm", 0.5, 1, froc=0.6, r_recall=0.7),
        _result("focal", 0.5, 0, froc=0.2, r_recall=None),
    ]
    s = summarize(results)
    assert set(s) == {(0.5, "dghm"), (0.5, "focal")}
    assert s[(0.5, "dghm")]["froc"][0] == pytest.approx(0.7)
    assert s[(0.5, "dghm")]["froc"][1] == pytest.approx(statistics.stdev([0.8, 0.6]))
    assert s[(0.5, "focal")]["r_recall"] == (None, None, 0)
    assert set(s[(0.5, "dghm")]) == set(COLUMNS)


def test_paper_ordering_detects_both_outcomes():
    results = []
    for m, f30, f70 in (
        ("dghm", 0.9, 0.5),
        ("ghm", 0.8, 0.7),
        ("ce", 0.7, 0.3),
        ("focal", 0.6, 0.2),
    ):
        results += [_result(m, 0.3, 0, froc=f30), _result(m, 0.7, 0, froc=f70)]
    o = paper_ordering(summarize(results), [0.3, 0.5, 0.7], "froc")
    assert set(o) == {0.3, 0.7}  # 0.5 has no runs: left out
    assert o[0.3]["paper"] and o[0.3]["ranked"] == ["dghm", "ghm", "ce", "focal"]
    assert not o[0.7]["paper"] and o[0.7]["ranked"] == ["ghm", "dghm", "ce", "focal"]
    # CE and focal tied (both learned nothing): not the paper's order, shown as a tie
    tied = [
        _result(m, 0.5, 0, froc=f)
        for m, f in (("dghm", 0.9), ("ghm", 0.8), ("ce", 0.0), ("focal", 0.0))
    ]
    assert not paper_ordering(summarize(tied), [0.5], "froc")[0.5]["paper"]
    assert "CE (0.000) = focal (0.000)" in "\n".join(ordering_md(summarize(tied), [0.5], LABELS))


def test_tables_and_report_files(tmp_path):
    results = [
        _result(m, r, seed, precision=0.1, nfp_score=90.0, recall=0.8, froc=v + seed * 0.02,
                t_recall=0.9, r_recall=None if r == 0 else v, true_recall=0.85,
                true_precision=0.2)
        for seed in (0, 1) for r in (0.0, 0.5)
        for m, v in (("ce", 0.5), ("focal", 0.4), ("ghm", 0.6), ("dghm", 0.7))
    ]  # fmt: skip
    lines = tables_md(summarize(results), [0.0, 0.5], ["dghm", "focal"], LABELS)
    text = "\n".join(lines)
    assert "### Drop rate 50%" in text
    # FROC of DGHM-C at 50%: mean of 0.70 and 0.72, sample std 0.01414
    assert "| DGHM-C | 0.100 ± 0.000 | 90.000 ± 0.000 | 0.800 ± 0.000 | 0.710 ± 0.014 |" in text
    # R-recall at 0% is undefined (nothing removed)
    assert "| focal | – | 0.400 ± 0.000 |" in text
    settings = LossBenchSettings(methods=["ce", "focal", "ghm", "dghm"]).model_dump(mode="json")
    doc = write_report(results, settings, tmp_path, ["# header"], LABELS)
    md = (tmp_path / "losses.md").read_text()
    assert "R-recall at 50%: DGHM-C (0.700) > GHM-C (0.600) > CE (0.500) > focal (0.400)" in md
    assert "**the paper's order**" in md
    assert json.loads((tmp_path / "losses.json").read_text())["paper_ordering"] == json.loads(
        json.dumps(doc["paper_ordering"])
    )
    with Image.open(tmp_path / "losses.png") as im:
        assert im.size[0] > 800


# --- end to end ---------------------------------------------------------------------------


TINY_BENCH = pytest.mark.slow
"""The tiny end-to-end bench (4 trainings, 8 predictions, 40-75 s) runs with `make slow`:
`make test` keeps the benchmark's settings, aggregation, report and CLI checks; training,
prediction and evaluation have their own tests."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two rates, focal then score SS (whose prior is the focal run), 3 steps each."""
    out = tmp_path_factory.mktemp("bench")
    s = LossBenchSettings(
        seeds=[0], drop_rates=[0.0, 0.5], methods=["focal", "score_ss"], steps=3,
        train_positive=3, train_negative=2, test_positive=1, test_negative=1, image_size=384,
        overrides=["model.fpn_channels=32"],  # a quarter of the demo's head: quick anywhere
    )  # fmt: skip
    lines: list[str] = []
    results = run_losses(out, s, log=lines.append)
    return out, s, results, lines


@TINY_BENCH
def test_every_run_has_a_result_and_logs_a_line(tiny):
    out, s, results, lines = tiny
    assert [(r["seed"], r["rate"], r["method"]) for r in results] == plan(s)
    assert len([x for x in lines if x.startswith("[")]) == len(plan(s))
    for r in results:
        assert r["steps"] >= 1
        assert (run_dir(out, r["seed"], r["rate"], r["method"]) / "result.json").is_file()


@TINY_BENCH
def test_dropped_copy_removes_half_the_boxes_and_trains_on_every_image(tiny):
    out, s, _, _ = tiny
    root = out / "data" / rate_name(0.5)
    full = out / "data" / "full"
    for rec in load_records(full):
        if rec.attribute != "AP":
            continue
        n = len(read_voc(rec.annotation).boxes)
        kept = len(read_voc(root / rec.annotation.relative_to(full)).boxes)
        assert kept == n - int(n * 0.5 + 0.5)  # round half up, as pathodet data drop
    folds = load_records(root / "folds.csv")
    assert sum(r.fold == 1 for r in folds) == s.train_positive + s.train_negative
    held = [r for r in folds if r.fold == 0]
    assert sorted(r.attribute for r in held) == ["AP", "NP"]
    assert all("data/test" in r.image.as_posix() for r in held)


@TINY_BENCH
def test_metrics_equal_an_independent_evaluation(tiny):
    out, _, results, _ = tiny
    r = next(x for x in results if x["rate"] == 0.5 and x["method"] == "focal")
    folder = run_dir(out, 0, 0.5, "focal")
    root = out / "data" / rate_name(0.5)
    on_train = run_evaluate(root, folder / "predictions" / "train" / "predictions.csv",
                            out / "check-train", removed=root / REMOVED_DIR,
                            full=root / FULL_DIR)  # fmt: skip
    on_test = run_evaluate(out / "data" / "test",
                           folder / "predictions" / "test" / "predictions.csv",
                           out / "check-test")  # fmt: skip
    for k in ("t_recall", "r_recall", "true_recall", "true_precision"):
        assert r["train"][k] == on_train[k]
    for k in ("precision", "nfp_score", "recall", "froc"):
        assert r["test"][k] == on_test[k]
    assert r["counts"]["train_removed"] > 0
    r0 = next(x for x in results if x["rate"] == 0.0 and x["method"] == "focal")
    assert r0["train"]["r_recall"] is None and r0["counts"]["train_removed"] == 0


@TINY_BENCH
def test_score_ss_uses_the_focal_run_and_checkpoints_are_removed_after(tiny):
    out, s, _, _ = tiny
    cfg = bench_config(out, s, 0, 0.5, "score_ss")
    assert cfg.loss.name == "score_ss"
    assert cfg.loss.soft_sampling.prior_checkpoint == run_dir(out, 0, 0.5, "focal") / "last.pt"
    for m in ("focal", "score_ss"):
        assert not (run_dir(out, 0, 0.5, m) / "last.pt").exists()
    # the same recipe for every method: only the loss section differs
    focal = bench_config(out, s, 0, 0.5, "focal").model_dump()
    other = cfg.model_dump()
    assert {k for k in focal if focal[k] != other[k]} == {"loss"}


@TINY_BENCH
def test_rerun_reads_results_back_and_changed_settings_retrain(tiny):
    out, s, results, _ = tiny
    files = [run_dir(out, *k) / "result.json" for k in plan(s)]
    before = [f.stat().st_mtime_ns for f in files]
    again = run_losses(out, s, log=lambda _: None)
    assert [f.stat().st_mtime_ns for f in files] == before
    assert [r["test"] for r in again] == [r["test"] for r in results]
    # another learning rate for focal at 0%: that run is redone, the others are left alone
    s2 = s.model_copy(update={"drop_rates": [0.0], "methods": ["focal"],
                              "overrides": ["train.lr=0.0002"]})  # fmt: skip
    redone = run_losses(out, s2, log=lambda _: None)
    assert redone[0]["config"]["train"]["lr"] == 0.0002
    assert files[0].stat().st_mtime_ns != before[0]
    assert [f.stat().st_mtime_ns for f in files[1:]] == before[1:]


def test_cli_refuses_an_unknown_method(tmp_path):
    bad = CliRunner().invoke(app, ["bench", "losses", "--quick", "--out", str(tmp_path / "c"),
                                   "--methods", "focal,nope"])  # fmt: skip
    assert bad.exit_code != 0 and "unknown method" in bad.output
    assert not (tmp_path / "c" / "runs").exists()
    bad = CliRunner().invoke(app, ["bench", "losses", "--quick", "--out", str(tmp_path / "c"),
                                   "--seeds", "0,x"])  # fmt: skip
    assert bad.exit_code != 0 and "--seeds 0,x" in bad.output


@pytest.mark.slow  # 20-35 s: run_losses is run by the `tiny` fixture, the report by a unit test
def test_cli_quick_smoke_writes_the_report(tmp_path):
    res = CliRunner().invoke(app, [
        "bench", "losses", "--quick", "--out", str(tmp_path / "b"), "--steps", "2",
        "--methods", "dghm", "--rates", "0.5", "--docs", str(tmp_path / "docs"),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    md = (tmp_path / "docs" / "losses.md").read_text()
    assert "--quick" in md and "### Drop rate 50%" in md and "| DGHM-C |" in md
    assert (tmp_path / "docs" / "losses.png").is_file()
    bad = CliRunner().invoke(app, ["bench", "losses", "--quick", "--out", str(tmp_path / "c"),
                                   "--methods", "focal,nope"])  # fmt: skip
    assert bad.exit_code != 0 and "unknown method" in bad.output


# --- gradient shares ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def init_checkpoint(tiny, tmp_path_factory):
    """A detector at initialisation (every p near the prior 0.01), saved as a checkpoint."""
    import torch

    from pathodet.model import build_retinanet
    from pathodet.training.checkpoint import save_checkpoint

    out, s, _, _ = tiny
    cfg = bench_config(out, s, 0, 0.5, "focal")
    torch.manual_seed(0)
    model = build_retinanet(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "init.pt"
    save_checkpoint(path, {"config": cfg.model_dump_json(), "model": model.state_dict()})
    return path


@TINY_BENCH
def test_gradient_shares_at_initialisation_follow_from_the_prior(tiny, init_checkpoint):
    from pathodet.bench.grad_share import GROUPS, gradient_shares

    out, _, _, _ = tiny
    full = out / "data" / "full"
    r = gradient_shares(init_checkpoint, out / "data" / rate_name(0.5), full, ("ce", "ghm"),
                        n_ap=8, n_np=8, batch=64)  # one mini-batch  # fmt: skip
    n = r["anchors"]
    assert n["AP_P"] > 0 and n["AP_N missed"] > 0 and n["NP_N"] > 0
    for name in ("ce", "ghm"):
        assert sum(r["losses"][name][g]["share"] for g in GROUPS) == pytest.approx(1.0)
    # at initialisation every p is about the prior 0.01: CE's gradient is (p - y) per anchor,
    # so positives get n_pos (1 - p) of n_pos (1 - p) + n_neg p
    p, n_pos = 0.01, n["AP_P"]
    n_neg = n["AP_N missed"] + n["AP_N other"] + n["NP_N"]
    expected = n_pos * (1 - p) / (n_pos * (1 - p) + n_neg * p)
    assert r["losses"]["ce"]["AP_P"]["share"] == pytest.approx(expected, rel=0.25)
    # GHM-C: positives (g near 0.99) and negatives (g near 0.01) fill one bin each, and each
    # bin gets the same total weight: positives get (1 - p) / ((1 - p) + p)
    assert r["losses"]["ghm"]["AP_P"]["share"] == pytest.approx(1 - p, abs=0.01)
    # with nothing dropped there is no missed SRC
    r0 = gradient_shares(init_checkpoint, out / "data" / rate_name(0.0), full, ("ce",),
                         n_ap=8, n_np=8)  # fmt: skip
    assert r0["anchors"]["AP_N missed"] == 0


@pytest.mark.slow  # 72 s: purification is tested in test_purify.py; `make slow` runs this
def test_pu_students_get_the_pool_prior_and_retrain_when_purification_changes(tmp_path):
    """The PUDet methods on a tiny bench. Pool images are one tile each (~480 px images,
    512 px tiles), so the true pi_p is the share of pool images with an SRC in their full
    annotations; both selections take round(pi_p x pool) tiles. Changing the PU settings
    redoes the students; their teacher, whose checkpoint was removed when they were done,
    is retrained to the same result."""
    s = LossBenchSettings(
        seeds=[0], drop_rates=[0.5], methods=["dghm", "pudet", "pudet_random"], steps=2,
        train_positive=3, train_negative=2, test_positive=1, test_negative=1, image_size=480,
        pool_positive=2, pool_negative=3, pu_steps=2, overrides=["model.fpn_channels=32"],
    )  # fmt: skip
    results = {r["method"]: r for r in run_losses(tmp_path, s, log=lambda _: None)}
    pool = tmp_path / "data" / "pool"
    stems = sorted(p.stem for p in (tmp_path / "data" / "pool-images").iterdir())
    with_src = [st for st in stems if (pool / FULL_DIR / f"{st}.xml").is_file()
                and len(read_voc(pool / FULL_DIR / f"{st}.xml").boxes) > 0]  # fmt: skip
    prior = len(with_src) / len(stems)
    assert len(stems) == 5 and 0 < prior < 1
    for m in ("pudet", "pudet_random"):
        p = results[m]["purify"]
        assert p["prior"] == pytest.approx(prior) and not p["prior_estimated"]
        assert p["pool_prior"] == pytest.approx(prior)
        assert p["pool_tiles"] == 5 and p["selected"] == round(prior * 5)
        assert results[m]["purify_settings"]["pu"]["prior"] == pytest.approx(prior)
    assert results["pudet"]["purify"]["selection"] == "pu"
    assert results["pudet_random"]["purify"]["selection"] == "random"

    files = {m: run_dir(tmp_path, 0, 0.5, m) / "result.json" for m in results}
    before = {m: f.stat().st_mtime_ns for m, f in files.items()}
    redone = run_losses(tmp_path, s.model_copy(update={"pu_steps": 3}), log=lambda _: None)
    after = {m: f.stat().st_mtime_ns for m, f in files.items()}
    assert after["pudet"] != before["pudet"] and after["pudet_random"] != before["pudet_random"]
    assert after["dghm"] != before["dghm"]  # retrained for the new purification ...
    teacher = json.loads(files["dghm"].read_text())
    assert teacher["test"] == results["dghm"]["test"]  # ... to the same result
    assert [r["purify_settings"]["pu"]["steps"] for r in redone if r["purify"]] == [3, 3]
