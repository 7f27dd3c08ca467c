"""``pathodet cv``: one model per fold, resumable, and never a stale result reused silently."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_training

from pathodet.data.digestpath import DatasetError, read_manifest
from pathodet.data.synth import write_synthetic_dataset
from pathodet.demo.real import real_config
from pathodet.eval.cv import run_cv, summarize_cv
from pathodet.predict.config import PredictConfig

TINY = tiny_training(1, 1)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv-data")
    write_synthetic_dataset(out, positive=4, negative=4, size=300, seed=1, images_per_slide=1)
    return out


def test_cv_runs_every_fold_then_reuses_repredicts_or_refuses(root, tmp_path):
    cfg = real_config("dghm", extra=TINY)
    out = tmp_path / "cv"
    settings = PredictConfig(nms_iou=0.3, score_threshold=0.0, max_per_image=20)
    summary = run_cv(cfg, root, out, k=2, settings=settings, log=lambda _: None)
    assert [r["fold"] for r in summary["folds"]] == [0, 1]
    assert summary["froc"]["n"] == 2 and summary["steps"]["mean"] == 1
    # every held-out image is predicted and evaluated exactly once, in its own fold
    held = [read_manifest(out / f"fold-{f}" / "held-out.csv") for f in (0, 1)]
    names = [r.name for h in held for r in h]
    assert len(names) == len(set(names)) == 8
    for f, h in enumerate(held):
        assert {r.fold for r in h} == {f}
        assert json.loads((out / f"fold-{f}" / "eval" / "metrics.json").read_text())[
            "num_positive_images"
        ] == sum(r.attribute == "AP" for r in h)
    assert "mean ± std" in (out / "cv.md").read_text() and (out / "froc.png").is_file()

    weights = out / "fold-0" / "run" / "last.pt"
    before = (weights.stat().st_mtime_ns, (out / "fold-0" / "fold.json").read_text())
    run_cv(cfg, root, out, k=2, settings=settings, only=[0], log=lambda _: None)
    assert (weights.stat().st_mtime_ns, (out / "fold-0" / "fold.json").read_text()) == before

    lines: list[str] = []  # other prediction settings: predicted again, not retrained
    other = PredictConfig(nms_iou=0.5, score_threshold=0.0, max_per_image=20)
    again = run_cv(cfg, root, out, k=2, settings=other, only=[0], log=lines.append)
    assert weights.stat().st_mtime_ns == before[0]
    record = json.loads((out / "fold-0" / "fold.json").read_text())
    assert record["predict_settings"]["nms_iou"] == 0.5
    # fold 1 was predicted with the old settings: left out of this summary, and said so
    assert [r["fold"] for r in again["folds"]] == [0]
    assert any("fold-1" in line and "left out" in line for line in lines)

    with pytest.raises(DatasetError, match="another config"):
        run_cv(real_config("focal", extra=TINY), root, out, k=2, settings=other, only=[0],
               log=lambda _: None)  # fmt: skip
    with pytest.raises(DatasetError, match="another split"):
        run_cv(cfg, root, out, k=3, settings=other, log=lambda _: None)
    with pytest.raises(DatasetError, match="numbered 0 to 1"):
        run_cv(cfg, root, out, k=2, settings=other, only=[2], log=lambda _: None)


def test_summary_is_mean_and_sample_std_and_tolerates_a_fold_without_froc():
    folds = [{"fold": 0, "froc": 0.2, "froc_points": {"1": 0.1}},
             {"fold": 1, "froc": 0.4, "froc_points": {"1": 0.3}},
             {"fold": 2, "froc": None, "froc_points": None}]  # fmt: skip
    s = summarize_cv(folds)
    assert s["froc"]["mean"] == pytest.approx(0.3) and s["froc"]["n"] == 2
    assert s["froc"]["std"] == pytest.approx(((0.1**2 + 0.1**2) / 1) ** 0.5)
    assert s["froc@1"]["mean"] == pytest.approx(0.2)
