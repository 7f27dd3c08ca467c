"""Coordinates outside the image, in any input, handled alike (issue 25, kind 3).

One set of boxes on one 64 x 48 image, written by hand as VOC XML, as QuPath GeoJSON and as
a predictions CSV. The rule (``pathodet.data.boxes``): on each axis the part outside the
image, both sides together, may be up to half the box side (at least 2 px); such a box is
clipped and counted. A box wholly outside, or overhanging more, is a problem naming the
file and the object or line; the rest is read. Expected boxes are clipped here by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import voc_text, write_image
from typer.testing import CliRunner

from pathodet.cli import app
from pathodet.data.boxes import overhang_allowance
from pathodet.data.digestpath import ImageRecord
from pathodet.data.predictions import PredictionsError, read_predictions
from pathodet.data.samples import load_sample
from pathodet.eval.evaluate import run_evaluate

W, H = 64, 48
BOXES = [
    (-0.4, 10, 20, 30),  # 0: 0.4 px left of the image: sub-pixel, clipped
    (50, 10, 64.4, 30),  # 1: 0.4 px right: the same, on the other side
    (10, 40, 30, 52),  # 2: 4 of 12 px below (6 allowed): clipped
    (-1.5, 0, 1, 5),  # 3: 1.5 of 2.5 px left: more than half, but within 2 px: clipped
    (-30, 10, 10, 30),  # 4: 30 of 40 px left (20 allowed): a problem
    (70, 10, 90, 30),  # 5: wholly right of the image: a problem
    (20, 10, 40, 30),  # 6: inside
]
KEPT = [(0, 10, 20, 30), (50, 10, 64, 30), (10, 40, 30, 48), (0, 0, 1, 5), (20, 10, 40, 30)]
CLIPPED = 4


def test_allowance_is_half_the_side_and_at_least_2_px():
    assert overhang_allowance(np.array([0.5, 4.0, 12.0, 40.0])).tolist() == [2, 2, 6, 20]


def rect_feature(x1, y1, x2, y2) -> dict:
    ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"objectType": "annotation"}}  # fmt: skip


@pytest.mark.parametrize("kind, label", [("xml", "object"), ("geojson", "feature")])
def test_annotations_clip_small_overhangs_and_name_the_rest(tmp_path, kind, label):
    img = write_image(tmp_path / "a.jpeg", W, H)
    ann = tmp_path / f"a.{kind}"
    if kind == "xml":
        ann.write_text(voc_text(BOXES, width=W, height=H))
    else:
        ann.write_text(json.dumps({"type": "FeatureCollection",
                                   "features": [rect_feature(*b) for b in BOXES]}))  # fmt: skip
    s = load_sample(ImageRecord(img, "AP", ann, "s"))
    np.testing.assert_array_equal(s.boxes, np.float32(KEPT))
    assert s.clipped == CLIPPED
    assert [p.file for p in s.problems] == [str(ann)] * 2
    assert s.problems[0].error == (
        f"{label} 4 (-30, 10, 10, 30) overhangs the 64x48 image by 30 px, more than the 20 px "
        "allowed (at most 0.5 of its side, or 2 px); left out"
    )
    assert s.problems[1].error == f"{label} 5 (70, 10, 90, 30) lies outside the 64x48 image"


def predictions_text(boxes) -> str:
    rows = [f"a.jpeg,{x1},{y1},{x2},{y2},0.9" for x1, y1, x2, y2 in boxes]
    return "\n".join(["image,x1,y1,x2,y2,score", *rows]) + "\n"


def test_reader_no_longer_refuses_a_negative_coordinate(tmp_path):
    """Before: 'negative coordinate', the whole file refused; it is evaluation's to judge
    against the image. A reversed box is still refused: it has no image to be fitted to."""
    p = tmp_path / "p.csv"
    p.write_text(predictions_text([(-0.4, 10, 20, 30)]))
    np.testing.assert_allclose(read_predictions(p)["a.jpeg"].boxes, [[-0.4, 10, 20, 30]])
    p.write_text(predictions_text([(20, 10, -0.4, 30)]))
    with pytest.raises(PredictionsError, match=r"p\.csv:2: box with x2 <= x1"):
        read_predictions(p)


@pytest.fixture
def root(tmp_path) -> Path:
    """AP ``a.jpeg`` (64 x 48) annotated with BOXES, NP ``n.jpeg``."""
    pos, neg = tmp_path / "root" / "sig-train-pos", tmp_path / "root" / "sig-train-neg"
    write_image(pos / "a.jpeg", W, H)
    (pos / "a.xml").write_text(voc_text(BOXES, width=W, height=H))
    write_image(neg / "n.jpeg", W, H)
    return tmp_path / "root"


def test_evaluate_clips_predictions_as_it_clips_annotations(root, tmp_path):
    """The predictions are the annotation's boxes: both clip to KEPT, so every kept box is
    matched (recall 1, precision 1); rows 6 and 7 (boxes 4 and 5) are problems by line."""
    csv = tmp_path / "p.csv"
    csv.write_text(predictions_text(BOXES))
    m = run_evaluate(root, csv, tmp_path / "ev", plot=False)
    assert (m["num_gt"], m["num_predictions"], m["recall"], m["precision"]) == (5, 5, 1.0, 1.0)
    assert (m["clipped_boxes"], m["clipped_predictions"]) == (CLIPPED, CLIPPED)
    by_file = {}
    for p in m["problems"]:
        by_file.setdefault(p["file"], []).append(p["error"])
    xml = str(root / "sig-train-pos" / "a.xml")
    assert len(by_file[xml]) == 2
    assert by_file[f"{csv}:6"] == [
        "box (-30, 10, 10, 30) of 'a.jpeg' overhangs by 30 px (more than the 20 px allowed) "
        "the 64x48 image; left out"
    ]
    assert by_file[f"{csv}:7"] == ["box (70, 10, 90, 30) of 'a.jpeg' lies outside the 64x48 image; left out"]  # fmt: skip
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["clipped_predictions"] == CLIPPED and len(saved["problems"]) == 4


def test_cli_evaluate_accepts_a_box_0_4_px_left_of_the_image(root, tmp_path):
    """The case of the issue: exit 2 'negative coordinate' before; now clipped and counted."""
    csv = tmp_path / "p.csv"
    csv.write_text(predictions_text([(-0.4, 10, 20, 30), (50, 10, 64.4, 30)]))
    result = CliRunner().invoke(app, ["evaluate", "--data", str(root), "--predictions",
                                      str(csv), "--out", str(tmp_path / "ev")])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["clipped_predictions"] == 2 and metrics["num_predictions"] == 2
    assert metrics["precision"] == 1.0  # both match their clipped annotation
