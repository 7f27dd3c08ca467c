"""Synthetic DigestPath-like data: images, partial annotation, dataset layout."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from pathodet.data.names import parse_digestpath_name
from pathodet.data.synth import (
    choose_annotated,
    keep_probabilities,
    synthesize_image,
    write_synthetic_dataset,
)
from pathodet.data.synth.canvas import Canvas
from pathodet.data.synth.cells import draw_src
from pathodet.data.synth.stain import default_stain, render
from pathodet.data.voc import read_voc


def _img(seed: int, attribute: str = "AP", size: int = 512):
    return synthesize_image(np.random.default_rng(seed), size, size, attribute)


# -- images -------------------------------------------------------------------------------
def test_same_seed_same_image_other_seed_differs():
    a, b, c = _img(5, size=384), _img(5, size=384), _img(6, size=384)
    assert a.rgb.shape == (384, 384, 3) and a.rgb.dtype == np.uint8
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.src_boxes, b.src_boxes)
    np.testing.assert_array_equal(a.mimic_boxes, b.mimic_boxes)
    assert not np.array_equal(a.rgb, c.rgb)


def test_rectangular_image_has_requested_shape():
    im = synthesize_image(np.random.default_rng(0), 300, 420, "NP")
    assert im.rgb.shape == (300, 420, 3)


def test_np_images_have_no_src_but_have_hard_negatives():
    mimics = 0
    for seed in range(4):
        im = _img(seed, "NP")
        assert im.src_boxes.shape == (0, 4) and im.in_cluster.shape == (0,)
        mimics += len(im.mimic_boxes)
    assert mimics >= 4


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        synthesize_image(np.random.default_rng(0), 256, 256, "XP")
    with pytest.raises(ValueError):
        synthesize_image(np.random.default_rng(0), 32, 256, "AP")


def test_ap_boxes_inside_image_and_cell_sized():
    clustered = scattered = 0
    for seed in range(6):
        im = _img(seed)
        boxes = im.src_boxes
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4
        assert len(boxes) >= 3, "a 512 x 512 AP image should still hold a few SRCs"
        assert len(im.in_cluster) == len(boxes)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 512).all()
        assert (boxes[:, 3] <= 512).all()
        wh = boxes[:, 2:] - boxes[:, :2]
        assert (wh >= 30).all() and (wh <= 90).all(), wh
        clustered += int(im.in_cluster.sum())
        scattered += int((~im.in_cluster).sum())
        assert len(im.mimic_boxes) >= 1
    assert clustered > 0 and scattered > 0


def test_full_size_image_has_tens_of_src():
    im = synthesize_image(np.random.default_rng(1), 2000, 2000, "AP")
    assert 10 <= len(im.src_boxes) <= 60
    assert 3 <= im.in_cluster.sum() < len(im.src_boxes)


def test_src_box_holds_pale_mucin_centre_and_dark_crescent_at_the_rim():
    for seed in range(4):
        im = _img(seed)
        grey = im.rgb.astype(np.float64).mean(axis=2)
        for x1, y1, x2, y2 in im.src_boxes:
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            centre = grey[cy - 2 : cy + 3, cx - 2 : cx + 3].mean()
            sub = grey[int(y1) : int(y2), int(x1) : int(x2)]
            assert centre > 170, "the vacuole (box centre) is pale mucin"
            assert np.percentile(sub, 2) < centre - 70, "a dark nucleus lies in the box"
            # the darkest pixels of the cell (its nucleus) sit away from the centre
            h, w = sub.shape
            yy, xx = np.mgrid[0:h, 0:w] + 0.5
            u, v = (xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)
            cell = u * u + v * v < 0.9
            dark = cell & (sub <= np.percentile(sub[cell], 5))
            assert np.hypot(u[dark].mean(), v[dark].mean()) > 0.3


def test_src_box_is_tight_around_the_drawn_cell():
    rng = np.random.default_rng(3)
    for r in (19.0, 27.0, 38.0):
        canvas = Canvas(rng, 160, 160)
        box = draw_src(canvas, rng, 80.3, 79.6, r)
        # first principles: the pixels the cell covers are those with stain on blank glass
        rgb = render(canvas.H, canvas.E, canvas.N, default_stain())
        stained = rgb.mean(axis=2) < 230
        rows, cols = np.flatnonzero(stained.any(1)), np.flatnonzero(stained.any(0))
        expect = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
        assert np.abs(np.subtract(box, expect)).max() <= 1, (box, expect)
        assert 2 * r * 0.8 <= box[2] - box[0] <= 2 * r * 1.2


# -- partial annotation -------------------------------------------------------------------
@pytest.mark.parametrize("rate,frac", [(0.5, 0.4), (0.6, 0.25), (0.8, 0.6)])
def test_choose_annotated_rate_and_cluster_miss_ratio(rate, frac):
    rng = np.random.default_rng(0)
    n = 200_000
    in_cluster = rng.random(n) < frac
    kept = choose_annotated(rng, in_cluster, rate, cluster_miss_ratio=2.0)
    assert kept.dtype == bool and kept.shape == (n,)
    assert abs(kept.mean() - rate) < 0.006
    miss_c, miss_s = 1 - kept[in_cluster].mean(), 1 - kept[~in_cluster].mean()
    assert miss_c / miss_s == pytest.approx(2.0, rel=0.04)


def test_choose_annotated_clamps_when_clusters_would_be_missed_more_than_always():
    # rate 0.1, 60% clustered, ratio 2: unclamped m_c = 2 * 0.9 / 1.6 > 1
    assert keep_probabilities(0.1, 0.6, 2.0) == pytest.approx((0.25, 0.0))
    rng = np.random.default_rng(1)
    in_cluster = rng.random(100_000) < 0.6
    kept = choose_annotated(rng, in_cluster, 0.1)
    assert not kept[in_cluster].any()
    assert abs(kept.mean() - 0.1) < 0.006


def test_choose_annotated_edge_cases():
    rng = np.random.default_rng(2)
    in_cluster = rng.random(1000) < 0.5
    assert not choose_annotated(rng, in_cluster, 0.0).any()
    assert choose_annotated(rng, in_cluster, 1.0).all()
    assert choose_annotated(rng, np.zeros(0, bool), 0.5).shape == (0,)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            choose_annotated(rng, in_cluster, bad)
    # at least one box per AP image, a scattered cell when there is one
    for _ in range(50):
        kept = choose_annotated(rng, np.array([True, True, False]), 0.01)
        assert kept.tolist() == [False, False, True]
    for _ in range(20):
        assert choose_annotated(rng, np.array([True, True]), 0.01).sum() >= 1


# -- dataset layout -----------------------------------------------------------------------
def _listing(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_dataset_layout_names_and_annotations(tmp_path):
    calls = []
    summary = write_synthetic_dataset(
        tmp_path,
        positive=4,
        negative=5,
        size=256,
        seed=1,
        annotate_rate=0.5,
        images_per_slide=3,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(k, 9) for k in range(1, 10)]
    pos = sorted((tmp_path / "sig-train-pos").glob("*.jpeg"))
    neg = sorted((tmp_path / "sig-train-neg").glob("*.jpeg"))
    assert len(pos) == 4 and len(neg) == 5
    neg_xml = list((tmp_path / "sig-train-neg").glob("*.xml"))
    assert 0 < len(neg_xml) < 5, "some negatives with an empty XML, some without"
    for x in neg_xml:
        assert len(read_voc(x).boxes) == 0

    slides = {"AP": [], "NP": []}
    recs = {r["stem"]: r for r in summary["images"]}
    for attr, files in (("AP", pos), ("NP", neg)):
        for f in files:
            assert " " in f.stem
            name = parse_digestpath_name(f.stem)
            assert re.fullmatch(r"2018_\d{5}_\d-\d", name.slide_id)
            with Image.open(f) as im:
                assert im.format == "JPEG" and im.size == (name.width, name.height)
                assert 253 <= im.width <= 259 and 253 <= im.height <= 259
            rec = recs[f.stem]
            assert rec["attribute"] == attr and rec["slide_id"] == name.slide_id
            slides[attr].append((rec["index"], name.slide_id, (name.x, name.y)))
    for rows in slides.values():
        rows.sort()
        ids = [s for _, s, _ in rows]
        for i, s in enumerate(ids):
            assert (s == ids[0]) == (i < 3), "3 consecutive images per slide"
        assert len({xy for _, _, xy in rows}) == len(rows)
    assert not {s for _, s, _ in slides["AP"]} & {s for _, s, _ in slides["NP"]}

    for f in pos:
        part = read_voc(f.with_suffix(".xml")).boxes
        full = read_voc(tmp_path / "full-annotations" / f"{f.stem}.xml").boxes
        rec = recs[f.stem]
        assert len(full) == rec["n_src"] and len(part) == rec["n_annotated"] >= 1
        assert all(any(np.allclose(b, g) for g in full) for b in part)
    assert summary["totals"]["n_src"] == sum(recs[f.stem]["n_src"] for f in pos)
    on_disk = json.loads((tmp_path / "synth.json").read_text())
    assert on_disk["params"]["seed"] == 1 and on_disk["params"]["positive"] == 4
    newest = max(p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file())
    assert (tmp_path / "synth.json").stat().st_mtime_ns == newest


def test_dataset_is_reproducible_grows_and_resumes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_synthetic_dataset(a, 3, 2, size=200, seed=7)
    write_synthetic_dataset(b, 4, 2, size=200, seed=7)
    files_a = [f for f in _listing(a) if not f.endswith(".json")]
    assert set(files_a) < set(_listing(b))
    for f in files_a:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    with Image.open(next((a / "sig-train-pos").glob("*.jpeg"))) as im:
        assert im.size == (200, 200)

    stamps = {f: (a / f).stat().st_mtime_ns for f in files_a}
    calls = []
    write_synthetic_dataset(a, 4, 2, size=200, seed=7, progress=lambda d, t: calls.append(d))
    assert calls == list(range(1, 7))
    assert {f: (a / f).stat().st_mtime_ns for f in files_a} == stamps, "existing kept"
    assert _listing(a) == _listing(b)

    write_synthetic_dataset(a, 2, 1, size=200, seed=7)  # shrinking removes the extra files
    assert len(list((a / "sig-train-pos").glob("*.jpeg"))) == 2
    assert len(list((a / "full-annotations").glob("*.xml"))) == 2
    assert len(list((a / "sig-train-neg").glob("*.jpeg"))) == 1

    other = write_synthetic_dataset(a, 2, 1, size=200, seed=8)  # other seed: all new
    assert {r["stem"] for r in other["images"]} == {p.stem for p in a.rglob("*.jpeg")}


def test_dataset_rejects_bad_parameters(tmp_path):
    for kwargs in (
        {"positive": -1, "negative": 0},
        {"positive": 1, "negative": 0, "size": 10},
        {"positive": 1, "negative": 0, "annotate_rate": 2.0},
        {"positive": 1, "negative": 0, "images_per_slide": 0},
    ):
        with pytest.raises(ValueError):
            write_synthetic_dataset(tmp_path, **kwargs)


def test_tiny_ap_images_still_hold_one_src():
    for seed in range(12):
        im = synthesize_image(np.random.default_rng(seed), 64, 64, "AP")
        assert len(im.src_boxes) >= 1
        assert (im.src_boxes[:, :2] >= 0).all() and (im.src_boxes[:, 2:] <= 64).all()
