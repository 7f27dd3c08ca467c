"""Real DigestPath 2019 task-1 images (../shared/digestpath): names, folds, one training step,
prediction and evaluation end to end on 2 AP + 2 NP images.

Skipped, with the reason, when the real data is absent (a fresh clone without ../shared).
The path may be set with PATHODET_DIGESTPATH.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pathodet.data.digestpath import ImageRecord, read_manifest, scan_digestpath, write_manifest
from pathodet.data.folds import assign_folds
from pathodet.data.names import case_of, parse_digestpath_name
from pathodet.data.samples import load_samples, summarize
from pathodet.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("PATHODET_DIGESTPATH", REPO.parent / "shared" / "digestpath"))
needs_real = pytest.mark.skipif(
    not (ROOT / "sig-train-pos").is_dir(),
    reason=f"real DigestPath data not found at {ROOT} (set PATHODET_DIGESTPATH)",
)


# -- names: every naming of the release, from the names themselves (no data needed) -------


@pytest.mark.parametrize(
    ("stem", "slide", "case"),
    [
        ("2018_67251_1-3_2019-02-26 00_02_22-lv0-1-2-2048-2030", "2018_67251_1-3", "2018_67251"),
        ("2018-07-04 00_01_20-lv0-27019-31137-2000-2000", "2018-07-04 00_01_20",
         "2018-07-04 00_01_20"),
        ("18-36771A_2019-05-08 22_29_28-lv0-40882-1-2000-2000", "18-36771A", "18-36771"),
        ("1901991002_2019-06-11 10_08_35-lv0-1-2-2000-2000", "1901991002", "1901991"),
        ("1901940-1_2019-04-30 10_30_47-lv0-1-2-2000-2000", "1901940-1", "1901940"),
        ("G1900703-2_2019-04-30 09_53_59-lv0-1-2-2000-2000", "G1900703-2", "G1900703"),
        ("2019-32176-1-1-1_2019-05-28 11_43_23-lv0-1-2-2000-2000", "2019-32176-1-1-1",
         "2019-32176"),
        ("D20190116702_2019-06-10 16_24_10-lv0-1-2-2000-2000", "D20190116702", "D201901167"),
        ("D201710758_2019-05-21 12_21_03-lv0-1-2-2000-2000", "D201710758", "D201710758"),
        ("2013-12622_2018-07-03 20_23_41-lv0-1-2-2000-2000", "2013-12622", "2013-12622"),
        ("my own image", "my own image", "my own image"),
    ],
)  # fmt: skip
def test_slide_and_case_of_every_naming(stem, slide, case):
    name = parse_digestpath_name(stem)
    assert (name.slide_id, name.case_id) == (slide, case)
    assert case_of(slide) == case


def test_a_scan_stamp_alone_still_gives_the_position():
    name = parse_digestpath_name("2019-06-11 09_48_49-lv0-100-200-2000-1990")
    assert (name.x, name.y, name.width, name.height) == (100, 200, 2000, 1990)
    assert name.scan_time is not None and name.scan_time.hour == 9


# -- the real release ---------------------------------------------------------------------


@needs_real
def test_release_counts_slides_and_cases():
    records = scan_digestpath(ROOT)
    ap = [r for r in records if r.attribute == "AP"]
    nps = [r for r in records if r.attribute == "NP"]
    assert (len(ap), len(nps)) == (64, 193)
    # SOURCES.md: 64 AP images from 16 slides of 9 cases
    assert len({r.slide_id for r in ap}) == 16
    assert len({r.case_id for r in ap}) == 9
    # 65 NP scans; 2013-12622 was scanned twice (two stamps, one slide name)
    assert len({(r.slide_id, parse_digestpath_name(r.image.stem).scan_time) for r in nps}) == 65
    # the scan-stamp-only slides hold 3 images each (at most 3 per slide), not 1
    stamp_only = defaultdict(int)
    for r in nps:
        if r.image.name[:4].isdigit() and r.image.name[4] == "-" and r.image.name[10] == " ":
            stamp_only[r.slide_id] += 1
    assert len(stamp_only) == 17
    assert set(stamp_only.values()) == {3}


@needs_real
@pytest.mark.parametrize("group", ["case", "slide"])
def test_folds_keep_every_case_and_slide_together(group):
    records = assign_folds(scan_digestpath(ROOT), k=5, seed=0, group=group)
    for key in ("slide_id", "case_id") if group == "case" else ("slide_id",):
        folds = defaultdict(set)
        for r in records:
            folds[getattr(r, key)].add(r.fold)
        assert all(len(f) == 1 for f in folds.values()), key
    assert {r.fold for r in records} == set(range(5))
    # every fold holds AP images to measure recall on, and NP images to count FPs on
    for f in range(5):
        assert any(r.fold == f and r.attribute == "AP" for r in records)
        assert any(r.fold == f and r.attribute == "NP" for r in records)
    if group == "case":  # case 2018_67251 (7 slides) is in one fold
        assert len({r.fold for r in records if r.case_id == "2018_67251"}) == 1


def _four(tmp: Path) -> Path:
    """A manifest of 2 AP + 2 NP real images (AP from two cases), folds 0 and 1."""
    records = scan_digestpath(ROOT)
    ap = [r for r in records if r.attribute == "AP"]
    ap = [ap[0], next(r for r in ap if r.case_id != ap[0].case_id)]
    nps = [r for r in records if r.attribute == "NP"][:2]
    chosen = [ImageRecord(r.image, r.attribute, r.annotation, r.slide_id, fold=i % 2)
              for i, r in enumerate(ap + nps)]  # fmt: skip
    return write_manifest(tmp / "four.csv", chosen)


@needs_real
def test_reader_counts_and_sizes_of_real_images(tmp_path):
    samples, problems = load_samples(scan_digestpath(ROOT)[:2] + scan_digestpath(ROOT)[-2:])
    summary = summarize(samples, problems)
    assert summary["positive_images"] == 2 and summary["negative_images"] == 2
    ap = [s for s in samples if s.attribute == "AP"]
    nps = [s for s in samples if s.attribute == "NP"]
    assert all((s.width, s.height) == (2000, 2000) for s in nps)
    assert any((s.width, s.height) != (2000, 2000) for s in ap)  # AP are 2003-2104 px
    assert all(2000 <= s.width <= 2104 and 2000 <= s.height <= 2104 for s in ap)
    sides = np.concatenate([s.boxes[:, 2:] - s.boxes[:, :2] for s in ap])
    assert len(sides) >= 16 and sides.min() >= 17 and sides.max() <= 188
    assert not [p for p in problems if "box" in p.error and "clipped" not in p.error]


@needs_real
def test_one_training_step_then_predict_and_evaluate_at_20x(tmp_path):
    from pathodet.demo.real import real_config
    from pathodet.eval.evaluate import run_evaluate
    from pathodet.predict.config import PredictConfig
    from pathodet.predict.pipeline import predict
    from pathodet.training.train import train

    manifest = _four(tmp_path)
    cfg = real_config("dghm", extra=["train.epochs=1", "train.max_steps_per_epoch=1",
                                     "train.milestones=[1]", "train.val_tiles=2",
                                     "train.num_workers=0", "train.batch_size=2",
                                     "model.fpn_channels=32"])  # fmt: skip
    cfg.data.root = manifest
    cfg.data.held_out_fold = 1
    summary = train(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert summary["steps"] == 1
    from pathodet.training.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["pixels"]["scale"] == 0.5
    held = [line.split(",")[0] for line in manifest.read_text().splitlines()[1:]]
    images = [manifest.parent / p for p in held]
    out = tmp_path / "pred"
    result = predict(PredictConfig(tile=1024, score_threshold=0.0, max_per_image=50),
                     tmp_path / "run" / "last.pt", images, out)["images"]  # fmt: skip
    assert result["images"] == 4 and result["problems"] == 0
    fingerprint = json.loads((out / "predict.json").read_text())["settings"]
    assert fingerprint["predict"]["scale"] == 0.5  # the checkpoint's pixel size, recorded
    metrics = run_evaluate(manifest, out / "predictions.csv", tmp_path / "eval")
    assert metrics["num_positive_images"] == 2 and metrics["num_negative_images"] == 2
    boxes = sum(len(s.boxes) for s in load_samples(read_manifest(manifest))[0])
    assert metrics["num_gt"] == boxes > 0  # every annotated box of the two AP images counts
    # boxes come back in the image's own (40x) pixels: some lie beyond the 20x extent
    from pathodet.data.predictions import read_predictions

    preds = read_predictions(out / "predictions.csv")
    far = max(float(p.boxes[:, 2:].max()) for p in preds.values() if len(p.boxes))
    assert far > 1100


def test_configs_digestpath_yaml_is_the_real_demos_recipe(tmp_path):
    from pathodet.demo.real import real_config

    ours = real_config("dghm", seed=0)
    theirs = load_config(REPO / "configs" / "digestpath.yaml")
    assert ours == theirs
