"""Every file pathodet writes is read back by pathodet (issue 25, kind 4).

A detection clipped at a window border to a 0.003 px sliver was written to predictions.csv
as ``512.00,10.00,512.00,50.00``, which ``pathodet evaluate`` then refused. The writers now
leave out boxes of zero width or height as written (``pathodet.data.boxes.writable``).

- a property test over many seeded random box sets (slivers, boxes on the image borders,
  half-way rounding cases, float32 and float64): what ``write_predictions`` / ``write_voc``
  write, the readers and ``evaluate`` accept, and exactly the boxes expected are there;
  the expected count uses ``decimal`` rounding, not the writer's own formatting;
- an end-to-end round trip: ``predict`` on a DigestPath root and on a synthetic slide with a
  pixel-rule detector, then its ``predictions.csv``, VOC XMLs and ``detections.csv`` read
  back and evaluated.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal

import numpy as np
from PIL import Image
from test_slides import blob_detector  # the pixel-rule detector of the slide tests

from pathodet.data.boxes import validate_boxes
from pathodet.data.digestpath import ImageRecord
from pathodet.data.predictions import (
    ImagePredictions,
    fit_predictions,
    read_predictions,
    write_predictions,
)
from pathodet.data.samples import load_sample
from pathodet.data.voc import read_voc, write_voc
from pathodet.eval.evaluate import run_evaluate
from pathodet.eval.metrics import ImageBoxes, evaluate
from pathodet.predict.config import PredictConfig, SlideConfig
from pathodet.predict.pipeline import predict


def test_the_sliver_of_the_issue_is_not_written(tmp_path):
    preds = {"a.png": ImagePredictions(
        np.array([[511.996, 10, 512.004, 50],  # written 512.00,10.00,512.00,50.00: dropped
                  [10, 10.001, 20, 10.004],  # 10.00 high and low: dropped
                  [511.994, 10, 512.004, 50],  # 511.99 to 512.00: 0.01 px, kept
                  [np.nan, 1, 2, 3]]),  # NaN: dropped
        np.array([0.9, 0.8, 0.7, 0.6]))}  # fmt: skip
    path = write_predictions(tmp_path / "p.csv", preds)
    assert path.read_text().splitlines()[1:] == ["a.png,511.99,10.00,512.00,50.00,0.700000"]
    assert len(read_predictions(path)["a.png"].scores) == 1
    voc = write_voc(tmp_path / "a.xml", "a.png", 600, 60,
                    np.array([[5, 5, 5, 9], [1, 2, 3, 4], [9, 9, 8, 10]]), np.ones(3))  # fmt: skip
    assert read_voc(voc).boxes.tolist() == [[1, 2, 3, 4]]


def rounded(v: float, decimals: int = 2) -> Decimal:
    """``v`` rounded to ``decimals`` digits as a correctly rounded decimal (half to even on
    the exact binary value, which is what Python's ``%.2f`` does)."""
    return Decimal(float(v)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)


def random_boxes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Boxes inside a ``width x height`` image, of every awkward kind."""
    n = int(rng.integers(0, 40))
    rows = []
    for _ in range(n):
        kind = rng.integers(0, 6)
        w, h = rng.uniform(1, 80, 2)
        if kind == 1:  # a sliver in x, as a window border leaves it
            w = rng.choice([0.0, 1e-7, 0.003, 0.0049, 0.005, 0.0051, 0.0099, 0.01, 0.015])
        elif kind == 2:  # a sliver in y
            h = rng.choice([0.0, 0.001, 0.005, 0.006, 0.0125])
        x1, y1 = rng.uniform(0, max(width - w, 0)), rng.uniform(0, max(height - h, 0))
        if kind == 3:  # flush with a border
            x1 = rng.choice([0.0, max(width - w, 0.0)])
            y1 = rng.choice([0.0, max(height - h, 0.0)])
        if kind == 4:  # half-way values: x.xx5 rounds to even (0.125 -> 0.12)
            x1 = np.floor(x1) + rng.choice([0.125, 0.375, 0.625, 0.875, 0.005])
            w = rng.choice([0.005, 0.01, 0.0025, 1.0])
        rows.append([x1, y1, min(x1 + w, width), min(y1 + h, height)])
    boxes = np.asarray(rows, np.float64).reshape(-1, 4)
    return boxes.astype(np.float32) if rng.random() < 0.5 else boxes


def test_whatever_is_written_is_read_back_on_random_boxes(tmp_path):
    rng = np.random.default_rng(25)
    for trial in range(400):
        width, height = (int(v) for v in rng.integers(1, 3000, 2))
        boxes = random_boxes(rng, width, height)
        scores = rng.uniform(0, 1, len(boxes))
        # predictions.csv: positive width and height once rounded to 0.01 px
        preds = {"a b,c.png": ImagePredictions(boxes, scores)}
        path = write_predictions(tmp_path / "p.csv", preds)
        back = read_predictions(path)  # raises on any bad row
        expected = sum(rounded(b[2]) > rounded(b[0]) and rounded(b[3]) > rounded(b[1])
                       for b in boxes.tolist())  # fmt: skip
        got = back.get("a b,c.png", ImagePredictions())
        assert len(got.scores) == expected, trial
        fitted, n_clipped, problems = fit_predictions(back, {"a b,c.png": (width, height)}, path)
        assert (n_clipped, problems) == (0, []), trial
        # VOC XML: written exactly, read as float32: positive width and height in float32
        # (a float64 1e-7 px sliver at x = 1000 is no box once read)
        voc = write_voc(tmp_path / "a.xml", "a.png", width, height, boxes, scores)
        read = read_voc(voc)
        b32 = boxes.astype(np.float32).tolist()
        exact = [b for b in b32 if b[2] > b[0] and b[3] > b[1]]
        np.testing.assert_array_equal(read.boxes, np.asarray(exact, np.float32).reshape(-1, 4))
        kept, clipped, box_problems = validate_boxes(read.boxes, width, height, str(voc))
        assert (len(kept), clipped, box_problems) == (len(exact), 0, []), trial


def test_evaluate_accepts_what_was_written(tmp_path):
    """Random boxes on real (small) images: evaluate reads every row written, unclipped."""
    rng = np.random.default_rng(7)
    for trial in range(6):
        root = tmp_path / f"r{trial}"
        preds, written = {}, 0
        for folder, name in (("sig-train-pos", "a.png"), ("sig-train-neg", "n.png")):
            w, h = (int(v) for v in rng.integers(20, 300, 2))
            (root / folder).mkdir(parents=True)
            Image.new("RGB", (w, h), "white").save(root / folder / name)
            boxes = random_boxes(rng, w, h)
            preds[name] = ImagePredictions(boxes, rng.uniform(0, 1, len(boxes)))
            if folder == "sig-train-pos":
                write_voc(root / folder / "a.xml", name, w, h, boxes)
        csv = write_predictions(tmp_path / f"p{trial}.csv", preds)
        written = len(csv.read_text().splitlines()) - 1
        m = run_evaluate(root, csv, tmp_path / f"ev{trial}", plot=False)
        assert m["num_predictions"] == written and m["clipped_predictions"] == 0
        assert m["problems"] == [] and m["clipped_boxes"] == 0


# ---------------------------------------------------------------- predict end to end


SQUARES = np.array(
    [
        [20, 30, 60, 70],
        [150, 10, 190, 52],
        [262, 200, 300, 236],  # right edge
        [100, 224, 130, 260],
        [0, 0, 12, 16],
    ]
)  # bottom edge, top-left corner


def test_predict_outputs_read_back_and_evaluate(tmp_path):
    """``predict`` on a DigestPath root (an AP image of black squares, some on its borders,
    annotated by hand; an NP image with one square): its predictions.csv and VOC XMLs are
    read without a problem, and evaluation finds every square (recall 1, precision 1) and
    the NP square as 1 false positive per NP image."""
    root = tmp_path / "root"
    pos, neg = root / "sig-train-pos", root / "sig-train-neg"
    pos.mkdir(parents=True)
    neg.mkdir()
    rgb = np.full((260, 300, 3), 255, np.uint8)
    for x1, y1, x2, y2 in SQUARES:
        rgb[y1:y2, x1:x2] = 0
    Image.fromarray(rgb).save(pos / "a.png")
    (pos / "a.xml").write_text(
        "<annotation><size><width>300</width><height>260</height></size>"
        + "".join(f"<object><name>ring_cell_cancer</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                  f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for a, b, c, d in SQUARES)
        + "</annotation>")  # fmt: skip
    np_rgb = np.full((128, 128, 3), 255, np.uint8)
    np_rgb[40:70, 50:80] = 0
    Image.fromarray(np_rgb).save(neg / "n.png")
    out = tmp_path / "pred"
    cfg = PredictConfig(tile=128, overlap=64, num_workers=0)
    predict(cfg, None, [root], out, detector=blob_detector, model_id={"rule": "blobs"})

    preds = read_predictions(out / "predictions.csv", images={"a.png", "n.png"})
    order = lambda b: b[np.lexsort((b[:, 1], b[:, 0]))]  # noqa: E731
    np.testing.assert_allclose(order(preds["a.png"].boxes), order(SQUARES.astype(float)))
    for image, xml in (("a.png", "a.xml"), ("n.png", "n.xml")):
        record = ImageRecord(pos / image if image == "a.png" else neg / image, "AP", None, "s")
        s = load_sample(record, annotation=out / "xml" / xml)
        assert s.problems == [] and s.clipped == 0
        assert len(s.boxes) == len(preds[image].scores)
    m = run_evaluate(root, out / "predictions.csv", tmp_path / "ev", plot=False)
    assert (m["recall"], m["precision"], m["nfp"]) == (1.0, 1.0, 1.0)
    assert m["problems"] == [] and m["clipped_predictions"] == 0


def test_predict_on_a_slide_writes_detections_that_read_back(tmp_path):
    """``predict --slides`` on a small synthetic slide: detections.csv reads back, every box
    lies in the 1024 x 768 slide, and it evaluates against the slide's truth CSV (which
    pathodet also wrote)."""
    from pathodet.data.synth.slide import truth_path, write_synthetic_slide

    slide = tmp_path / "s.tiff"
    made = write_synthetic_slide(slide, 1024, 768, seed=3, tissue_fraction=0.6, src_fraction=0.6,
                                 min_level_side=128)  # fmt: skip
    assert len(made.src_boxes) > 0  # 11 SRCs with this seed
    cfg = PredictConfig(tile=256, overlap=64, batch_size=4, num_workers=0,
                        slides=SlideConfig(target_mpp=0.25))  # fmt: skip
    out = tmp_path / "pred"
    summary = predict(cfg, None, [slide], out, detector=blob_detector, model_id={},
                      all_slides=True)  # fmt: skip
    csvs = list(out.rglob("detections.csv"))
    assert len(csvs) == 1, summary
    found = read_predictions(csvs[0])
    boxes = found.get(slide.name, ImagePredictions())
    assert len(boxes.scores) > 0
    fitted, clipped, problems = fit_predictions(found, {slide.name: (1024, 768)}, csvs[0])
    assert (clipped, problems) == (0, [])
    truth = read_predictions(truth_path(slide))[slide.name]
    np.testing.assert_allclose(truth.boxes, made.src_boxes, atol=0.005)  # written to 0.01 px
    m = evaluate(found, {slide.name: ImageBoxes("AP", truth.boxes, (1024, 768))})
    assert m["num_predictions"] == len(boxes.scores) and m["num_gt"] == len(made.src_boxes)
    assert m["recall"] is not None
    summary_json = json.loads(next(out.rglob("summary.json")).read_text())
    assert summary_json  # the slide completed


def test_review_export_reads_back_and_evaluates(tmp_path):
    """``review export`` of an image with a box added on its right border and a 1e-8 px
    sliver (a float64 width that float32, the readers' type, cannot hold): the exported
    XML holds the annotation and the border box, the sliver is not written, and the
    exported root loads and evaluates without a problem."""
    from pathodet.review.cases import Case
    from pathodet.review.export import export_reviews
    from pathodet.review.store import ReviewStore

    data = tmp_path / "data" / "sig-train-pos"
    data.mkdir(parents=True)
    Image.new("RGB", (64, 48), "white").save(data / "img.png")
    ann = np.array([[20.0, 10.0, 30.0, 20.0]])
    case = Case("img.png", "image", data / "img.png", "AP", ann, np.zeros((0, 4)), np.zeros(0))
    store = ReviewStore(tmp_path / "review.db")
    store.decide("run", "img.png", "add", (50.0, 10.0, 64.0, 30.0), "alice")
    store.decide("run", "img.png", "add", (63.99999999, 30.0, 64.0, 40.0), "alice")
    out = tmp_path / "exported"
    export_reviews(store, "run", [case], out)
    xml = out / "sig-train-pos" / "img.xml"
    assert read_voc(xml).boxes.tolist() == [[20, 10, 30, 20], [50, 10, 64, 30]]
    s = load_sample(ImageRecord(out / "sig-train-pos" / "img.png", "AP", xml, "s"))
    assert s.problems == [] and len(s.boxes) == 2
    csv = write_predictions(tmp_path / "p.csv", {"img.png": ImagePredictions(
        np.array([[20.0, 10.0, 30.0, 20.0]]), np.array([0.9]))})  # fmt: skip
    m = run_evaluate(out, csv, tmp_path / "ev", plot=False)
    assert (m["num_gt"], m["recall"], m["problems"]) == (2, 0.5, [])
