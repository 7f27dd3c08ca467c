"""The ``pathodet data`` commands through typer's CliRunner: JSON on stdout, exit codes."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict

import numpy as np
import pytest
from conftest import REAL_STEM, image_bytes, parse_boxes, stem, write_image, write_voc_text
from typer.testing import CliRunner

from pathodet.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def quirky_root(make_root):
    pos = {
        REAL_STEM: (300, 260, [(10.5, 20.25, 40.75, 60.0), (280, 240, 320, 280)]),  # 1 clipped
        stem("S1", 1): (256, 200, [(1, 1, 30, 30), (50, 50, 40, 80)]),  # one xmin >= xmax
        stem("S2", 0): (200, 256, [(300, 10, 350, 40), (5, 5, 15, 15)]),  # one fully outside
        stem("S2", 1): (200, 200, None),  # AP without XML
        stem("S3", 0): (200, 200, [(1, 1, 9, 9)]),  # image truncated below
        stem("S4", 0): (200, 200, [(1, 1, 9, 9)]),  # XML malformed below
    }
    neg = {stem("N1", 0): (128, 128, None), stem("N1", 1): (128, 128, []), stem("N2", 0): (64, 64, None)}  # fmt: skip
    root = make_root(pos, neg)
    p = root / "sig-train-pos"
    trunc = p / f"{stem('S3', 0)}.jpeg"
    trunc.write_bytes(trunc.read_bytes()[:-300])
    (p / f"{stem('S4', 0)}.xml").write_text("<annotation><object><bndbox><xmin>1</xmin>")
    garbage = root / "sig-train-neg" / "garbage bytes.jpeg"
    garbage.write_bytes(bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8)))
    return root


def test_summary_reports_counts_and_problems(quirky_root):
    result = invoke("data", "summary", quirky_root)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    pos, neg = quirky_root / "sig-train-pos", quirky_root / "sig-train-neg"
    assert summary["positive_images"] == 5  # the truncated one is unusable
    assert summary["negative_images"] == 3  # the garbage one is unusable
    assert summary["boxes"] == 2 + 1 + 1  # REAL (2, one clipped), S1 (1 of 2), S2 (1 of 2)
    assert summary["clipped_boxes"] == 1
    assert summary["usable"] is True
    problems = defaultdict(list)
    for q in summary["problems"]:
        assert set(q) == {"file", "error"}
        problems[q["file"]].append(q["error"])
    assert set(problems) == {
        str(pos / f"{stem('S1', 1)}.xml"),
        str(pos / f"{stem('S2', 0)}.xml"),
        str(pos / f"{stem('S2', 1)}.jpeg"),
        str(pos / f"{stem('S3', 0)}.jpeg"),
        str(pos / f"{stem('S4', 0)}.xml"),
        str(neg / "garbage bytes.jpeg"),
    }
    assert "xmin >= xmax" in problems[str(pos / f"{stem('S1', 1)}.xml")][0]
    assert "outside" in problems[str(pos / f"{stem('S2', 0)}.xml")][0]
    assert "truncated" in problems[str(pos / f"{stem('S3', 0)}.jpeg")][0]
    assert "malformed XML" in problems[str(pos / f"{stem('S4', 0)}.xml")][0]
    assert all(len(v) == 1 for v in problems.values())


def test_summary_unusable_dataset_exits_1(make_root):
    root = make_root({"a": (64, 64, [])}, {"n": (64, 64, None)})
    result = invoke("data", "summary", root)
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["usable"] is False and summary["positive_images"] == 1
    assert "not usable" in result.stderr


@pytest.mark.parametrize("kind", ["missing", "not a layout", "bad manifest"])
def test_summary_bad_input_exits_2(tmp_path, kind):
    if kind == "missing":
        target = tmp_path / "nowhere"
    elif kind == "not a layout":
        target = tmp_path / "folder"
        write_image(target / "a.jpeg", 64, 64)
    else:
        target = tmp_path / "m.csv"
        target.write_text("image,attribute\na.jpeg,AP\nb.jpeg,??\n")
    result = invoke("data", "summary", target)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"pathodet: error: {target}")
    assert len(result.stderr.strip().splitlines()) == 1  # one line, no traceback
    if kind == "bad manifest":
        assert "line 3" in result.stderr


def test_summary_of_a_manifest(tmp_path):
    write_image(tmp_path / "i" / "t.png", 90, 70)
    write_voc_text(tmp_path / "i" / "t.xml", [(10, 10, 20, 25), (0, 0, 5, 5)])
    (tmp_path / "i" / "n.jpg").write_bytes(image_bytes(50, 40))
    m = tmp_path / "list.csv"
    m.write_text("image,attribute,annotation\ni/t.png,AP,i/t.xml\ni/n.jpg,NP,\n")
    result = invoke("data", "summary", m)
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["positive_images"], s["negative_images"], s["boxes"], s["problems"]) == (1, 1, 2, [])


def test_summary_survives_an_impossible_date_in_a_name(make_root):
    root = make_root({"2018_1_2019-02-31 21_57_36-lv0-1-2-3-4": (64, 64, [(1, 1, 9, 9)])})
    result = invoke("data", "summary", root)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["boxes"] == 1


def _folds_root(make_root):
    pos, neg = {}, {}
    for s in range(8):
        for j in range(1 + s % 2):
            pos[stem(f"P{s}", j)] = (64, 64, [(1, 1, 9, 9)])
    for s in range(12):
        for j in range(1 + s % 3):
            neg[stem(f"N{s}", j)] = (64, 64, None)
    return make_root(pos, neg), len(pos), len(neg)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_folds_writes_grouped_balanced_split(tmp_path, make_root):
    root, n_pos, n_neg = _folds_root(make_root)
    out = tmp_path / "splits" / "folds 5.csv"
    result = invoke("data", "folds", root, "--k", "5", "--seed", "3", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["manifest"], report["k"], report["seed"]) == (str(out), 5, 3)
    rows = _read_csv(out)
    assert list(rows[0]) == ["image", "attribute", "annotation", "slide_id", "fold", "case_id"]
    assert len(rows) == n_pos + n_neg
    fold_of = defaultdict(set)
    for row in rows:
        fold_of[row["slide_id"]].add(int(row["fold"]))
        assert (out.parent / row["image"]).resolve() == (root / ("sig-train-pos" if row["attribute"] == "AP" else "sig-train-neg") / os.path.basename(row["image"])).resolve()  # fmt: skip
    assert len(fold_of) == 20 and all(len(f) == 1 for f in fold_of.values())
    per_fold = [
        {
            "fold": f,
            "AP": sum(r["fold"] == str(f) and r["attribute"] == "AP" for r in rows),
            "NP": sum(r["fold"] == str(f) and r["attribute"] == "NP" for r in rows),
            "slides": len({r["slide_id"] for r in rows if r["fold"] == str(f)}),
            "cases": len({r["case_id"] for r in rows if r["fold"] == str(f)}),
        }
        for f in range(5)
    ]
    assert report["folds"] == per_fold
    # 12 AP images in slides of 1-2, 24 NP in slides of 1-3: each fold near 12/5 and 24/5
    assert all(abs(f["AP"] - 12 / 5) <= 2 and abs(f["NP"] - 24 / 5) <= 3 for f in per_fold)

    again = tmp_path / "again.csv"
    assert invoke("data", "folds", root, "--k", "5", "--seed", "3", "--out", again).exit_code == 0
    assert [r["fold"] for r in _read_csv(again)] == [r["fold"] for r in rows]


def test_folds_too_many_folds_exits_2(tmp_path, make_root):
    root = make_root({stem("P", 0): (64, 64, [])}, {stem("N", 0): (64, 64, None)})
    result = invoke("data", "folds", root, "--k", "3", "--out", tmp_path / "f.csv")
    assert result.exit_code == 2
    assert "cannot make 3 folds from 2 case(s)" in result.stderr
    assert not (tmp_path / "f.csv").exists()


def test_drop_command(tmp_path, make_root):
    pos = {stem("P1", 0): (200, 200, [(i * 10, 5, i * 10 + 8, 15) for i in range(10)]), stem("P2", 0): (200, 200, [(1, 1, 9, 9)] * 3)}  # fmt: skip
    root = make_root(pos, {stem("N", 0): (64, 64, None)})
    out = tmp_path / "dropped out"
    result = invoke("data", "drop", root, out, "--rate", "0.5", "--seed", "7")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "images" not in report
    assert (report["rate"], report["seed"], report["positive_images"], report["negative_images"]) == (0.5, 7, 2, 1)  # fmt: skip
    assert report["removed_boxes"] == 5 + 2 and report["kept_boxes"] == 5 + 1
    for s, (_, _, boxes) in pos.items():
        kept = parse_boxes(out / "sig-train-pos" / f"{s}.xml")
        removed = parse_boxes(out / "removed-annotations" / f"{s}.xml")
        assert len(removed) == math.floor(len(boxes) * 0.5 + 0.5)
        assert len(kept) + len(removed) == len(boxes)
        assert os.stat(out / "sig-train-pos" / f"{s}.jpeg").st_ino == os.stat(root / "sig-train-pos" / f"{s}.jpeg").st_ino  # fmt: skip
    assert json.loads((out / "drop.json").read_text())["images"][f"{stem('P2', 0)}.jpeg"] == {"kept": 1, "removed": 2}  # fmt: skip


@pytest.mark.parametrize("args, words", [(["--rate", "1.5"], "drop rate"), ([], "--rate")])
def test_drop_bad_arguments_exit_2(tmp_path, make_root, args, words):
    root = make_root({"a": (64, 64, [(1, 1, 5, 5)])})
    result = invoke("data", "drop", root, tmp_path / "o", *args)
    assert result.exit_code == 2
    assert words in result.stderr


def _starts(length, tile, stride):
    """Window count along an axis, by brute force: slide, then add one aligned to the border."""
    if length <= tile:
        return 1
    starts = list(range(0, length - tile + 1, stride))
    return len(starts) + (starts[-1] + tile != length)


def test_tiles_counts_with_overrides(tmp_path, make_root):
    root = make_root({"a": (300, 250, [(1, 1, 9, 9)])}, {"n": (100, 64, None), "m": (64, 64, None)})
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  tiling:\n    tile_size: 128\n    stride: 100\n")
    result = invoke("data", "tiles", root, "--config", cfg, "--set", "data.tiling.stride=64")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    ap = _starts(300, 128, 64) * _starts(250, 128, 64)
    np_ = _starts(100, 128, 64) * _starts(64, 128, 64) * 2
    assert (report["AP_tiles"], report["NP_tiles"], report["tiles"]) == (ap, np_, ap + np_)
    assert report["tiling"] == {"tile_size": 128, "stride": 64, "min_visible": 0.5}
    assert report["images"] == 3 and report["saved"] == 0


def test_tiles_bad_override_exits_2_naming_key(make_root):
    root = make_root({"a": (64, 64, [])})
    result = invoke("data", "tiles", root, "--set", "data.tiling.tilesize=3")
    assert result.exit_code == 2
    assert "unknown key 'data.tiling.tilesize'" in result.stderr
