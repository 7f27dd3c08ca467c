"""QuPath round trip (issue 25, kinds 9 and 3): pathodet's GeoJSON looks like QuPath's own,
and pathodet reads what QuPath writes.

What QuPath keeps on import comes from its reader (qupath-core,
``qupath/lib/io/PathObjectTypeAdapters.java``, QuPath 0.4-0.6): the feature ``id`` (a
UUID), the geometry, and the properties ``objectType``, ``name``, ``color``,
``classification``, ``isLocked``, ``isMissing``, ``measurements`` and ``metadata``; every
other property is dropped. What QuPath writes comes from files QuPath 0.6 wrote
(``../shared/realdata/qupath-geojson/``, see its SOURCES.md); those tests skip when the
folder is absent. Expected boxes are read by eye from the files or written here.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from pathodet.data.geojson import (
    GeoJSONError,
    detections_geojson,
    read_geojson,
    read_geojson_boxes,
    write_geojson,
)
from pathodet.review.export import decision_feature
from pathodet.review.store import Decision, cell_key

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "qupath-geojson"
COSCIA = REAL / "CosciaLab_Qupath_to_LMD"
CORE = REAL / "qupath_core_tests"
needs_real = pytest.mark.skipif(
    not REAL.is_dir(), reason=f"{REAL} absent: the QuPath-written GeoJSON files are not here"
)
QUPATH_READS = {"objectType", "name", "color", "classification", "isLocked", "isMissing",
                "measurements", "metadata"}  # fmt: skip
QUPATH_TYPES = {"annotation", "detection", "cell", "tile", "tmaCore", "root"}


def _real_cell() -> dict:
    """The first ``cell`` object QuPath 0.6 wrote: a detection with class and measurements."""
    feats = json.loads((COSCIA / "Single_cells.geojson").read_text())["features"]
    return next(f for f in feats if f["properties"]["objectType"] == "cell")


def _is_uuid(value: object) -> bool:
    try:
        return str(uuid.UUID(str(value))) == value
    except ValueError:
        return False


def _shape(ring: list) -> tuple[bool, bool]:
    """(every vertex an [x, y] pair of numbers, ring closed)."""
    pairs = all(len(p) == 2 and all(isinstance(v, int | float) for v in p) for p in ring)
    return pairs, ring[0] == ring[-1]


# ----------------------------------------------------------- 9. what pathodet writes


@needs_real
def test_detections_have_the_structure_qupath_writes() -> None:
    """A pathodet detection has the keys and value types of a QuPath 0.6 cell object."""
    real = _real_cell()
    ours = detections_geojson(np.array([[10.0, 20.0, 40.5, 52.25]]), np.array([0.87]), "a.png")
    feat = ours["features"][0]
    assert set(feat) == set(real) == {"type", "id", "geometry", "properties"}
    assert _is_uuid(feat["id"]) and _is_uuid(real["id"])
    assert feat["geometry"]["type"] == real["geometry"]["type"] == "Polygon"
    assert _shape(feat["geometry"]["coordinates"][0]) == _shape(real["geometry"]["coordinates"][0])
    assert _shape(feat["geometry"]["coordinates"][0]) == (True, True)
    props, rprops = feat["properties"], real["properties"]
    assert set(props) == set(rprops) == {"objectType", "classification", "measurements"}
    assert props["objectType"] == "detection" and props["objectType"] in QUPATH_TYPES
    cls, rcls = props["classification"], rprops["classification"]
    assert set(cls) == set(rcls) == {"name", "color"} and cls["name"] == "SRC"
    for color in (cls["color"], rcls["color"]):
        assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
    # measurements as QuPath 0.4+ writes them: an object {name: number}
    assert isinstance(props["measurements"], dict) and isinstance(rprops["measurements"], dict)
    assert props["measurements"] == {"score": 0.87}
    assert all(isinstance(v, float) for v in rprops["measurements"].values())
    # the ring: level-0 pixels, closed, clockwise on screen from the top-left corner
    assert feat["geometry"]["coordinates"] == [
        [[10.0, 20.0], [40.5, 20.0], [40.5, 52.25], [10.0, 52.25], [10.0, 20.0]]
    ]


def test_feature_ids_are_uuids_fixed_by_the_detection() -> None:
    """Same detections, same ids (outputs are reproducible); distinct per feature."""
    boxes, scores = np.array([[0, 0, 10, 10], [5, 5, 20, 20.0]]), np.array([0.9, 0.4])
    one = detections_geojson(boxes, scores, "a.png")
    assert one == detections_geojson(boxes, scores, "a.png")
    ids = [f["id"] for f in one["features"]]
    assert all(_is_uuid(i) for i in ids) and len(set(ids)) == 2
    other = detections_geojson(boxes, scores, "b.png")
    assert not set(ids) & {f["id"] for f in other["features"]}


def test_degenerate_and_non_finite_boxes_are_not_written(tmp_path: Path) -> None:
    """A 0.003-px sliver (512 to 512.003 rounds to one x) and a NaN box are left out; the
    file reads back with the kept boxes at 0.01 px."""
    boxes = np.array([[512.0, 10.0, 512.003, 50.0], [1.234, 2.0, 30.0, 40.0],
                      [np.nan, 0, 5, 5], [0, 0, 5, 5]])  # fmt: skip
    path = write_geojson(tmp_path / "d.geojson", boxes, np.array([0.9, 0.8, 0.7, 0.6]), "x.png")
    got_boxes, got_scores = read_geojson(path)
    assert got_boxes.tolist() == [[1.23, 2.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]]
    assert got_scores.tolist() == [0.8, 0.6]


def test_review_decision_keeps_reviewer_decision_and_time_where_qupath_keeps_them() -> None:
    """Slide decisions: QuPath annotations whose every property is one QuPath reads;
    reviewer, decision and time as metadata strings; the decision also as the class."""
    box = (100.0, 200.0, 140.0, 236.5)
    made = [
        Decision(7, "s.svs", cell_key(box), "reject", box, 0.61, "bob", "2025-01-02T03:04:05Z"),
        Decision(8, "s.svs", cell_key(box), "add", box, None, "alice", "2025-01-02T03:05:00Z"),
    ]
    rejected, added = (decision_feature(d) for d in made)
    for feat, d in ((rejected, made[0]), (added, made[1])):
        assert set(feat) == {"type", "id", "geometry", "properties"} and _is_uuid(feat["id"])
        props = feat["properties"]
        assert set(props) <= QUPATH_READS and props["objectType"] == "annotation"
        assert props["metadata"] == {"reviewer": d.reviewer, "decision": d.action,
                                     "time": d.created_at}  # fmt: skip
        assert feat["geometry"]["coordinates"] == [
            [[100.0, 200.0], [140.0, 200.0], [140.0, 236.5], [100.0, 236.5], [100.0, 200.0]]
        ]
    assert rejected["properties"]["classification"]["name"] == "Not SRC"
    assert added["properties"]["classification"]["name"] == "SRC"
    assert rejected["properties"]["measurements"] == {"score": 0.61}
    assert "measurements" not in added["properties"]  # QuPath omits an empty list too
    assert rejected["id"] != added["id"]


# ----------------------------------------------------------- 9. what QuPath writes


@needs_real
def test_reads_qupath_written_annotations_cells_and_multipolygons() -> None:
    """Single_cells.geojson (QuPath 0.6): 128 polygons (1 + 6 annotations, 121 cells) are
    boxes, the 3 calibration points are skipped; the first two boxes by eye from the file."""
    got = read_geojson_boxes(COSCIA / "Single_cells.geojson")
    assert got.boxes.shape == (128, 4) and got.skipped == 3 and not got.problems
    assert got.boxes[0].tolist() == [296, 0, 982, 416]
    assert got.boxes[1].tolist() == [796.63, 0, 854.14, 22.05]
    assert (got.scores == 1.0).all()  # no score measurement: an annotation is certain
    only = read_geojson_boxes(COSCIA / "Single_cells.geojson", classes={"class_1"})
    assert only.boxes.tolist() == [[296, 0, 982, 416]] and only.skipped == 130
    multi = read_geojson_boxes(COSCIA / "history" / "MultiPolygon.geojson")
    assert len(multi.boxes) == 151 and multi.skipped == 3  # 150 polygons + 1 multipolygon
    bare = read_geojson(CORE / "polygon.geojson")[0]  # a bare MultiPolygon geometry
    assert bare.shape == (1, 4)


@needs_real
def test_reads_qupath_measurements_with_nan_and_infinity() -> None:
    """QuPath's own fixture: a lone Feature whose measurements hold NaN and +-Infinity
    unquoted (QuPath reads them; strict JSON parsers refuse)."""
    boxes, scores = read_geojson(CORE / "TestGsonTools_test_Measurements_feature.json5")
    assert boxes.tolist() == [[60333, 50744, 60727, 51078]] and scores.tolist() == [1.0]


def test_reads_the_score_in_both_measurement_forms(tmp_path: Path) -> None:
    """QuPath 0.4+ writes {name: value}; before, [{name, value}]. A NaN score is a problem
    naming the file and feature, the other features are read."""
    ring = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]

    def feat(measurements) -> dict:
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "detection", "measurements": measurements}}  # fmt: skip

    path = tmp_path / "m.geojson"
    feats = [feat({"score": 0.7}), feat([{"name": "score", "value": 0.4}]), feat({"score": "NaN"})]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    got = read_geojson_boxes(path)
    assert got.scores.tolist() == [0.7, 0.4]
    assert len(got.problems) == 1 and got.problems[0].file == str(path)
    assert got.problems[0].error.startswith("feature 2")
    with pytest.raises(GeoJSONError, match=r"m\.geojson.*feature 2"):
        read_geojson(path)


# ----------------------------------------------------------- 3. coordinates outside


def _boxes_file(path: Path, boxes: list[list[float]]) -> Path:
    feats = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]]}, "properties": {}}
        for x1, y1, x2, y2 in boxes]  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def test_overhangs_are_clipped_and_counted_a_box_outside_is_a_problem(tmp_path: Path) -> None:
    """A 100 x 80 image: 0.4 px left and 0.6 / 0.2 px right / below are clipped (2), a box
    inside is untouched, one at x 120-130 is a problem naming the file and the feature, and
    a 40-px box 30 px out on the left overhangs more than half its side (20 px, the VOC
    and CSV readers' allowance): a problem too. The rest is read. Left and right alike
    (the issue: one side refused, the other accepted silently)."""
    path = _boxes_file(tmp_path / "o.geojson", [
        [-0.4, 10, 20, 30], [90, 70, 100.6, 80.2], [10, 10, 20, 20], [120, 10, 130, 20],
        [-30, 10, 10, 20]])  # fmt: skip
    got = read_geojson_boxes(path, image_size=(100, 80))
    assert got.boxes.tolist() == [[0, 10, 20, 30], [90, 70, 100, 80], [10, 10, 20, 20]]
    assert got.clipped == 2
    assert [p.file for p in got.problems] == [str(path)] * 2
    assert got.problems[0].error == "feature 3 (120, 10, 130, 20) lies outside the 100x80 image"
    assert got.problems[1].error.startswith("feature 4 (-30, 10, 10, 20) overhangs the 100x80")
    # without the image size nothing can be clipped: the boxes are as written
    assert read_geojson_boxes(path).boxes[0].tolist() == [-0.4, 10, 20, 30]
    with pytest.raises(GeoJSONError, match=r"o\.geojson: feature 3 .*outside.*and 1 more"):
        read_geojson(path, image_size=(100, 80))


def test_a_file_that_is_not_geojson_is_a_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(GeoJSONError, match=r"bad\.geojson: not JSON"):
        read_geojson_boxes(bad)
    (tmp_path / "list.geojson").write_text('{"type": "Topology"}')
    with pytest.raises(GeoJSONError, match=r"list\.geojson: GeoJSON type 'Topology'"):
        read_geojson_boxes(tmp_path / "list.geojson")
    with pytest.raises(GeoJSONError, match=r"missing\.geojson: cannot read"):
        read_geojson_boxes(tmp_path / "missing.geojson")
