"""Annotation files as labelling tools write them (issue 25, kind 2): XML in any encoding
Python knows, objects of other classes skipped and counted, QuPath GeoJSON read beside VOC.

Every file is written here by hand (``str.encode`` for the encodings, ``json.dumps`` for
GeoJSON) with known boxes, or is a real third-party file from ``../shared`` (skipped with
the reason when absent); expected boxes come from the coordinates written, by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import voc_text, write_image
from typer.testing import CliRunner

from pathodet.cli import app
from pathodet.data.config import DataConfig
from pathodet.data.digestpath import ImageRecord, scan_digestpath
from pathodet.data.qupath import read_qupath
from pathodet.data.samples import load_sample, load_samples, summarize
from pathodet.data.voc import AnnotationError, AnnotationRules, read_voc

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PATHODET_SHARED", REPO.parent / "shared"))
DIGESTPATH = SHARED / "digestpath"
REALDATA = SHARED / "realdata"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def voc_objects(
    objects: list[tuple[str | None, tuple]], *, width=200, height=200, folder="标注"
) -> str:
    """A VOC document (no declaration) with one ``<object>`` per ``(name, box)``."""
    parts = ["<annotation>", f"  <folder>{folder}</folder>",
             f"  <size><width>{width}</width><height>{height}</height></size>"]  # fmt: skip
    for name, (x1, y1, x2, y2) in objects:
        parts.append("  <object>")
        if name is not None:
            parts.append(f"    <name>{name}</name>")
        parts.append(f"    <bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                     f"<ymax>{y2}</ymax></bndbox>")  # fmt: skip
        parts.append("  </object>")
    return "\n".join([*parts, "</annotation>"]) + "\n"


def declared(text: str, encoding: str) -> str:
    return f'<?xml version="1.0" encoding="{encoding}"?>\n' + text


# ---------------------------------------------------------------- 2a: encodings

# a Chinese labelling tool's file: a folder and a class written in Chinese (淋巴细胞:
# lymphocyte), two SRC boxes
CHINESE = voc_objects([("ring_cell_cancer", (10, 20, 30, 40)), ("淋巴细胞", (50, 50, 60, 60)),
                       ("ring_cell_cancer", (100.5, 110.25, 140, 150))])  # fmt: skip
CHINESE_BOXES = [[10, 20, 30, 40], [100.5, 110.25, 140, 150]]


@pytest.mark.parametrize(
    "declared_as, codec",
    [
        ("GBK", "gbk"),
        ("gb2312", "gb2312"),
        ("GB18030", "gb18030"),
        ("UTF-16", "utf-16"),  # with its byte-order mark
        ("UTF-16LE", "utf-16-le"),  # none: told by "<?" as 3C 00 3F 00 (XML appendix F)
        ("UTF-16BE", "utf-16-be"),
        ("UTF-32", "utf-32"),
        ("UTF-8", "utf-8-sig"),
    ],
)
def test_xml_in_a_multibyte_encoding_reads_its_boxes(tmp_path, declared_as, codec):
    raw = declared(CHINESE, declared_as).encode(codec)
    if codec not in ("utf-8-sig",):
        with pytest.raises(UnicodeDecodeError):  # the test means something: not UTF-8
            raw.decode("utf-8")
    path = tmp_path / "a.xml"
    path.write_bytes(raw)
    voc = read_voc(path)
    np.testing.assert_array_equal(voc.boxes, np.float32(CHINESE_BOXES))
    assert (voc.width, voc.height) == (200, 200)
    assert voc.other_classes == {"淋巴细胞": 1}


def test_single_byte_declared_encoding_is_honoured(tmp_path):
    """Latin-1 'é' is byte E9, invalid alone in UTF-8: read as the declaration says."""
    objects = [("ring_cell_cancer", (1, 2, 3, 4)), ("lymphocyté", (5, 5, 9, 9))]
    text = declared(voc_objects(objects, folder="annoté"), "ISO-8859-1")
    path = tmp_path / "a.xml"
    path.write_bytes(text.encode("latin-1"))
    voc = read_voc(path)
    assert voc.boxes.tolist() == [[1, 2, 3, 4]] and voc.other_classes == {"lymphocyté": 1}


def test_unknown_or_wrong_encoding_is_an_error_naming_the_file(tmp_path):
    unknown = tmp_path / "unknown.xml"
    unknown.write_bytes(declared(CHINESE, "x-no-such-codec").encode("gbk"))
    with pytest.raises(AnnotationError) as info:
        read_voc(unknown)
    assert info.value.path == str(unknown)
    assert "unknown text encoding 'x-no-such-codec'" in str(info.value)
    wrong = tmp_path / "wrong.xml"  # says UTF-8, holds GBK bytes
    wrong.write_bytes(declared(CHINESE, "UTF-8").encode("gbk"))
    with pytest.raises(AnnotationError, match=r"wrong\.xml: not valid UTF-8 text"):
        read_voc(wrong)
    binary = tmp_path / "binary.xml"  # a bytes-to-bytes codec is no text encoding
    binary.write_bytes(declared(CHINESE, "base64").encode("utf-8"))
    with pytest.raises(AnnotationError, match=r"binary\.xml: unknown text encoding 'base64'"):
        read_voc(binary)


def test_dtd_is_still_refused_once_decoded(tmp_path):
    path = tmp_path / "x.xml"
    text = ('<?xml version="1.0" encoding="GBK"?>\n<!DOCTYPE a [<!ENTITY e "标注">]>\n'
            "<annotation><folder>&e;</folder></annotation>")  # fmt: skip
    path.write_bytes(text.encode("gbk"))
    with pytest.raises(AnnotationError, match=r"x\.xml: refused: the XML declares a DTD"):
        read_voc(path)


@pytest.fixture
def encoded_root(tmp_path) -> Path:
    """AP ``gbk`` (GBK, 2 SRC boxes + 1 lymphocyte), ``unknown`` (an unknown encoding),
    ``plain`` (UTF-8, 1 box, 2 not_sure); NP ``n``."""
    root = tmp_path / "root"
    pos, neg = root / "sig-train-pos", root / "sig-train-neg"
    for name in ("gbk", "unknown", "plain"):
        write_image(pos / f"{name}.jpeg", 200, 200)
    write_image(neg / "n.jpeg", 200, 200)
    (pos / "gbk.xml").write_bytes(declared(CHINESE, "GBK").encode("gbk"))
    (pos / "unknown.xml").write_bytes(declared(CHINESE, "x-no-such-codec").encode("gbk"))
    (pos / "plain.xml").write_text(voc_objects([("ring_cell_cancer", (5, 5, 25, 25)),
                                                ("not_sure", (40, 40, 60, 60)),
                                                ("not_sure", (70, 70, 90, 90))]))  # fmt: skip
    return root


def test_data_summary_and_tiles_read_a_gbk_file_and_name_the_unknown_one(encoded_root):
    """Before: 'multi-byte encodings are not supported', exit 2, no file named."""
    pos = encoded_root / "sig-train-pos"
    result = invoke("data", "summary", encoded_root)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["boxes"] == 2 + 1  # gbk's two SRC boxes, plain's one
    assert summary["other_class_objects"] == {"not_sure": 2, "淋巴细胞": 1}
    assert [p["file"] for p in summary["problems"]] == [str(pos / "unknown.xml")]
    assert "unknown text encoding 'x-no-such-codec'" in summary["problems"][0]["error"]
    tiles = invoke("data", "tiles", encoded_root, "--set", "data.tiling.tile_size=100",
                   "--set", "data.tiling.stride=100")  # fmt: skip
    assert tiles.exit_code == 0, tiles.output
    report = json.loads(tiles.stdout)
    assert report["images"] == 4 and report["tiles"] == 4 * 4  # 2x2 windows of 100 px each
    assert [p["file"] for p in report["problems"]] == [str(pos / "unknown.xml")]


def test_evaluate_reads_a_gbk_file(encoded_root, tmp_path):
    """Predictions on the two GBK SRC boxes and plain's one: recall 1 over 3 boxes (the
    lymphocyte and not_sure objects are not SRC); the unknown encoding is a problem."""
    csv = tmp_path / "p.csv"
    csv.write_text("image,x1,y1,x2,y2,score\ngbk.jpeg,10,20,30,40,0.9\n"
                   "gbk.jpeg,100.5,110.25,140,150,0.8\nplain.jpeg,5,5,25,25,0.7\n")  # fmt: skip
    result = invoke("evaluate", "--data", encoded_root, "--predictions", csv,
                    "--out", tmp_path / "ev")  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert (metrics["num_gt"], metrics["recall"], metrics["precision"]) == (3, 1.0, 1.0)
    assert metrics["other_class_objects"] == {"not_sure": 2, "淋巴细胞": 1}
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [p["file"] for p in saved["problems"]] == [
        str(encoded_root / "sig-train-pos" / "unknown.xml")
    ]


# ---------------------------------------------------------------- 2b: SRC class names

MIXED = [("ring_cell_cancer", (10, 10, 30, 30)), ("lymphocyte", (40, 40, 50, 50)),
         ("lymphocyte", (60, 60, 70, 70)), (" Ring_Cell_Cancer ", (80, 80, 100, 100)),
         ("not_sure", (110, 110, 130, 130)), ("lymphocyte", (140, 140, 150, 150)),
         (None, (160, 160, 180, 180))]  # fmt: skip


def test_other_classes_are_skipped_and_counted(tmp_path):
    path = tmp_path / "m.xml"
    path.write_text(voc_objects(MIXED))
    voc = read_voc(path)
    # ring_cell_cancer, the same name in other case and spaces, the unnamed object
    assert voc.boxes.tolist() == [[10, 10, 30, 30], [80, 80, 100, 100], [160, 160, 180, 180]]
    assert voc.other_classes == {"lymphocyte": 3, "not_sure": 1}
    assert voc.labels == ["object 0", "object 3", "object 6"]  # as the file counts them
    two = read_voc(path, AnnotationRules(src_names=("ring_cell_cancer", "not_sure")))
    assert len(two.boxes) == 4 and two.other_classes == {"lymphocyte": 3}
    named = read_voc(path, AnnotationRules(unnamed_src=False))
    assert len(named.boxes) == 2 and named.other_classes["(unnamed)"] == 1


def test_src_names_are_a_data_setting():
    assert DataConfig().src_names == ("ring_cell_cancer",)
    rules = DataConfig(src_names=["lymphocyte"], mpp=0.5).annotation_rules()
    # 14 µm point boxes: 56 px at the 0.25 µm/px default, 28 px at 0.5 µm/px
    assert rules == AnnotationRules(("lymphocyte",), True, 28.0)
    assert DataConfig().annotation_rules().point_box_px == 56.0
    with pytest.raises(ValueError, match="src_names"):
        DataConfig(src_names=[])


def test_summary_counts_other_classes_and_src_name_option(make_root):
    root = make_root({"a": (200, 200, [])}, {"n": (64, 64, None)})
    (root / "sig-train-pos" / "a.xml").write_text(voc_objects(MIXED))
    summary = json.loads(invoke("data", "summary", root).stdout)
    assert summary["boxes"] == 3
    assert summary["other_class_objects"] == {"lymphocyte": 3, "not_sure": 1}
    result = invoke("data", "summary", root, "--src-name", "lymphocyte")
    summary = json.loads(result.stdout)
    assert summary["boxes"] == 3 + 1  # three lymphocytes and the unnamed object
    assert summary["other_class_objects"] == {"Ring_Cell_Cancer": 1, "not_sure": 1,
                                              "ring_cell_cancer": 1}  # fmt: skip
    result = invoke("data", "summary", root, "--set", "data.src_names=[not_sure]")
    assert json.loads(result.stdout)["boxes"] == 2


@pytest.mark.skipif(not DIGESTPATH.is_dir(), reason=f"real DigestPath data absent: {DIGESTPATH}")
def test_every_real_digestpath_box_is_still_read():
    """The release names every object ``ring_cell_cancer`` (../shared/digestpath/SOURCES.md:
    7,194 boxes in 64 AP images, one label): all are read, none counted as another class."""
    records = [r for r in scan_digestpath(DIGESTPATH) if r.attribute == "AP"]
    assert len(records) == 64
    vocs = [read_voc(r.annotation) for r in records]
    assert sum(len(v.boxes) for v in vocs) == 7194
    assert all(v.other_classes == {} and v.issues == [] for v in vocs)


@pytest.mark.skipif(not (REALDATA / "yolo-output-xml").is_dir(),
                    reason=f"real third-party files absent: {REALDATA}")  # fmt: skip
def test_another_detectors_voc_output_reads():
    """QNZhang's YOLOv3 writes <confidence> in each object and one file with no object."""
    counts = {}
    for path in sorted((REALDATA / "yolo-output-xml").glob("*.xml")):
        voc = read_voc(path)
        assert voc.issues == [] and voc.other_classes == {}
        counts[path.name] = len(voc.boxes)
    # <object> elements per file, counted with grep -c '<object>'
    assert sorted(counts.values()) == [0, 49, 56, 67]


# ---------------------------------------------------------------- 2c: QuPath GeoJSON


def feature(geometry, object_type="annotation", cls=None, **props) -> dict:
    properties = {"objectType": object_type, **props}
    if cls is not None:
        properties["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": properties}


def rect(x1, y1, x2, y2) -> dict:
    """A rectangle as QuPath writes it: a closed 5-point polygon."""
    return {"type": "Polygon",
            "coordinates": [[[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]]}  # fmt: skip


QUPATH = [
    feature(rect(10, 20, 40, 60)),  # unclassified rectangle: SRC by default
    feature(
        {
            "type": "Polygon",
            "coordinates": [  # an outline with a hole
                [[100, 100], [130, 95.5], [140, 120], [110, 131.25], [100, 100]],
                [[110, 105], [120, 105], [120, 115], [110, 105]],
            ],
        },
        cls="ring_cell_cancer",
    ),
    feature(
        {
            "type": "MultiPolygon",
            "coordinates": [  # one cell in two parts
                [[[200, 200], [210, 200], [210, 210], [200, 200]]],
                [[[220, 205], [230, 205], [230, 230], [220, 205]]],
            ],
        },
        "detection",
        "ring_cell_cancer",
    ),
    feature({"type": "Point", "coordinates": [300, 310]}),  # 56 px box around it
    feature({"type": "MultiPoint", "coordinates": [[400, 400], [450.5, 420]]}),  # two cells
    feature(rect(0, 0, 50, 50), cls="Tumor"),  # another class: counted, skipped
    feature(rect(0, 0, 9, 9), "cell", cls="lymphocyte"),
    feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),  # a line: no cell
    feature(rect(0, 0, 500, 500), "tile"),  # not an annotation
    feature({"type": "Point", "coordinates": [float("nan"), 3]}),  # NaN coordinate
    feature(rect(60, 60, 70, 80), measurements={"Area": float("nan"), "Max": float("inf")}),
]
QUPATH_BOXES = [[10, 20, 40, 60], [100, 95.5, 140, 131.25], [200, 200, 230, 230],
                [272, 282, 328, 338], [372, 372, 428, 428], [422.5, 392, 478.5, 448],
                [60, 60, 70, 80]]  # fmt: skip


def write_json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, allow_nan=True))  # NaN / Infinity as QuPath writes them
    return path


def test_qupath_objects_become_boxes(tmp_path):
    path = write_json(tmp_path / "a.geojson", {"type": "FeatureCollection", "features": QUPATH})
    ann = read_qupath(path)
    np.testing.assert_array_equal(ann.boxes, np.float32(QUPATH_BOXES))
    assert (ann.width, ann.height, ann.scores) == (None, None, None)
    assert ann.other_classes == {"Tumor": 1, "lymphocyte": 1}
    assert ann.labels == ["feature 0", "feature 1", "feature 2", "feature 3",
                          "feature 4 point 0", "feature 4 point 1", "feature 10"]  # fmt: skip
    assert [i.split(":")[0] for i in ann.issues] == ["feature 7", "feature 8", "feature 9"]
    assert "LineString is not a cell outline or a point" in ann.issues[0]
    assert "objectType 'tile'" in ann.issues[1] and "not finite" in ann.issues[2]
    # a 10 µm point box at 0.5 µm/px is 20 px; unclassified objects refused on demand
    rules = DataConfig(point_box_um=10, mpp=0.5, unnamed_src=False).annotation_rules()
    strict = read_qupath(path, rules)
    np.testing.assert_array_equal(strict.boxes, np.float32(QUPATH_BOXES[1:3]))
    assert strict.other_classes["(unclassified)"] == 6  # features 0, 3, 4, 7, 9 and 10


@pytest.mark.parametrize("wrap", ["list", "feature", "geometry"])
def test_qupath_list_single_feature_and_bare_geometry(tmp_path, wrap):
    one = feature(rect(5, 6, 7, 8))
    doc = {"list": [one, one], "feature": one, "geometry": one["geometry"]}[wrap]
    ann = read_qupath(write_json(tmp_path / "a.geojson", doc))
    assert ann.boxes.tolist() == [[5, 6, 7, 8]] * (2 if wrap == "list" else 1)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{not json", "not QuPath GeoJSON: Expecting property name"),
        ('{"foo": 1}', "GeoJSON type None is not a FeatureCollection"),
        ('{"type": "FeatureCollection"}', "without a 'features' list"),
        ("42", "a JSON int, not GeoJSON"),
    ],
)
def test_bad_geojson_is_an_error_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(AnnotationError) as info:
        read_qupath(path)
    assert info.value.path == str(path) and problem in info.value.message


def test_geojson_beside_an_image_is_its_annotation(tmp_path):
    """``<stem>.geojson`` is found when there is no ``<stem>.xml``; the XML wins otherwise."""
    pos = tmp_path / "root" / "sig-train-pos"
    write_image(pos / "q.jpeg", 300, 300)
    write_image(pos / "both.jpeg", 300, 200)
    write_json(pos / "q.geojson", {"type": "FeatureCollection", "features": QUPATH[:4]})
    write_json(pos / "both.geojson", [feature(rect(1, 1, 2, 2))])
    (pos / "both.xml").write_text(voc_text([(3, 3, 9, 9)], width=300, height=200))
    records = {r.image.stem: r for r in scan_digestpath(tmp_path / "root")}
    assert records["q"].annotation == pos / "q.geojson"
    assert records["both"].annotation == pos / "both.xml"
    samples, problems = load_samples(records.values())
    boxes = {s.record.image.stem: s.boxes.tolist() for s in samples}
    assert boxes["both"] == [[3, 3, 9, 9]]
    # the point's 56 px box (272, 282, 328, 338) overhangs the 300x300 image: x by 28 px
    # (half of 56: allowed), y by 38 px (more than 28): left out, named by its feature
    assert boxes["q"] == QUPATH_BOXES[:3]
    assert [p.file for p in problems] == [str(pos / "q.geojson")]
    assert problems[0].error.startswith(
        "feature 3 (272, 282, 328, 338) overhangs the 300x300 image by 38 px, more than the "
        "28 px allowed"
    )


@pytest.mark.skipif(not (REALDATA / "qupath-geojson").is_dir(),
                    reason=f"real QuPath files absent: {REALDATA}")  # fmt: skip
def test_real_qupath_exports_read():
    """Files QuPath 0.6 wrote (../shared/realdata/SOURCES.md). Expected boxes are the
    min/max of each polygon's outer-ring coordinates, taken with plain Python here."""
    base = REALDATA / "qupath-geojson"
    cells = base / "CosciaLab_Qupath_to_LMD" / "Single_cells.geojson"
    doc = json.loads(cells.read_text())
    expected = []
    for f in doc["features"]:
        if (f["properties"].get("classification") or {}).get("name") == "single_cells_demo":
            xs = [p[0] for p in f["geometry"]["coordinates"][0]]
            ys = [p[1] for p in f["geometry"]["coordinates"][0]]
            expected.append([min(xs), min(ys), max(xs), max(ys)])
    assert len(expected) == 121
    ann = read_qupath(cells, AnnotationRules(("single_cells_demo",), unnamed_src=False))
    np.testing.assert_array_equal(ann.boxes, np.float32(expected))
    assert ann.other_classes == {"(unclassified)": 3, "circles": 4, "class_1": 1,
                                 "two_circles": 2}  # fmt: skip
    # default rules: the 3 unclassified calibration points are the only SRC-like objects
    assert len(read_qupath(cells).boxes) == 3

    multi = json.loads((base / "CosciaLab_Qupath_to_LMD/history/MultiPolygon.geojson").read_text())
    k, mp = next((k, f) for k, f in enumerate(multi["features"])
                 if f["geometry"]["type"] == "MultiPolygon")  # fmt: skip
    pts = [p for poly in mp["geometry"]["coordinates"] for p in poly[0]]
    name = mp["properties"]["classification"]["name"]
    ann = read_qupath(base / "CosciaLab_Qupath_to_LMD/history/MultiPolygon.geojson",
                      AnnotationRules((name,), unnamed_src=False))  # fmt: skip
    i = ann.labels.index(f"feature {k}")
    want = [min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts),
            max(p[1] for p in pts)]  # fmt: skip
    np.testing.assert_array_equal(ann.boxes[i], np.float32(want))

    # QuPath's own fixture: NaN and Infinity measurements on a rectangle (written in it)
    nan = read_qupath(base / "qupath_core_tests" / "TestGsonTools_test_Measurements_feature.json5")
    assert nan.boxes.tolist() == [[60333, 50744, 60727, 51078]] and nan.issues == []
    # a bare MultiPolygon geometry, no Feature around it
    bare = read_qupath(base / "qupath_core_tests" / "polygon.geojson")
    assert len(bare.boxes) == 1 and bare.issues == []


def test_load_sample_reads_geojson_given_as_annotation(tmp_path):
    img = write_image(tmp_path / "a.jpeg", 120, 100)
    geo = write_json(tmp_path / "a.geojson", [feature(rect(-0.4, 10, 30, 40)),
                                               feature(rect(200, 10, 230, 40))])  # fmt: skip
    s = load_sample(ImageRecord(img, "AP", geo, "s"))
    assert s.boxes.tolist() == [[0, 10, 30, 40]] and s.clipped == 1
    assert (
        len(s.problems) == 1 and "feature 1 (200, 10, 230, 40) lies outside" in s.problems[0].error
    )
    assert summarize([s], s.problems)["clipped_boxes"] == 1
