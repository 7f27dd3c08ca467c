"""Reading DigestPath images and VOC files: every quirk is a problem entry, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    REAL_STEM,
    image_bytes,
    stem,
    voc_text,
    write_image,
    write_voc_text,
)

from pathodet.data.digestpath import DatasetError, ImageRecord, Problem, scan_digestpath
from pathodet.data.images import image_size, read_image
from pathodet.data.samples import ImageProblem, load_sample, load_samples, summarize, validate_boxes
from pathodet.data.voc import AnnotationError, read_voc

# ---------------------------------------------------------------- VOC files


def test_read_voc_float_and_int_coordinates(tmp_path):
    p = write_voc_text(
        tmp_path / "a.xml",
        [
            ("12.0", "40.5", "61", "88"),
            (" 100.25 ", "7", "130.75", "9.5"),
            ("1e2", "2", "3e2", "4"),
        ],
        width=2003,
        height=2010,
    )
    ann = read_voc(p)
    assert (ann.width, ann.height) == (2003, 2010)
    assert ann.boxes.dtype == np.float32
    np.testing.assert_array_equal(
        ann.boxes, np.array([[12, 40.5, 61, 88], [100.25, 7, 130.75, 9.5], [100, 2, 300, 4]])
    )
    assert ann.issues == [] and ann.scores is None


def test_read_voc_float_size(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(
        "<annotation><size><width>2000.0</width><height>1999.6</height></size></annotation>"
    )
    ann = read_voc(p)
    assert (ann.width, ann.height) == (2000, 2000)
    assert ann.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t ", "<annotation/>", "<annotation><size><width>5</width></size></annotation>"],
)
def test_read_voc_empty_gives_no_box(tmp_path, text):
    p = tmp_path / "e.xml"
    p.write_text(text)
    ann = read_voc(p)
    assert ann.boxes.shape == (0, 4) and ann.boxes.dtype == np.float32
    assert ann.issues == []
    assert ann.width is None and ann.height is None  # no usable <size>


@pytest.mark.parametrize(
    "text",
    [
        "<annotation><object>",  # truncated
        "not xml at all",
        "<annotation></annotatio>",
        "<a/><b/>",  # two roots
        "\x00\x01garbage",
    ],
)
def test_read_voc_malformed_raises_naming_file(tmp_path, text):
    p = tmp_path / "bad name with spaces.xml"
    p.write_text(text)
    with pytest.raises(AnnotationError) as info:
        read_voc(p)
    assert info.value.path == str(p)
    assert str(p) in str(info.value)
    assert "malformed XML" in info.value.message


def test_read_voc_missing_file_raises(tmp_path):
    with pytest.raises(AnnotationError, match="cannot read annotation"):
        read_voc(tmp_path / "nope.xml")


def test_read_voc_unparsable_objects_are_issues_and_the_rest_kept(tmp_path):
    good = ("1", "2", "3", "4")
    p = tmp_path / "a.xml"
    body = voc_text(
        [good, ("1", "2", "abc", "4"), ("nan", "2", "3", "4"), ("1", "2", "3", "inf"), good]
    )
    # an object with no bndbox at all and one lacking ymax
    body = body.replace(
        "</annotation>",
        "<object><name>ring_cell_cancer</name></object>"
        "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax></bndbox></object></annotation>",
    )
    p.write_text(body)
    ann = read_voc(p)
    np.testing.assert_array_equal(ann.boxes, [[1, 2, 3, 4], [1, 2, 3, 4]])
    assert len(ann.issues) == 5
    for k in (1, 2, 3, 5, 6):
        assert any(issue.startswith(f"object {k}:") for issue in ann.issues), (k, ann.issues)
    assert any("missing <bndbox>" in i for i in ann.issues)
    assert any("missing <ymax>" in i for i in ann.issues)
    assert sum("not finite" in i for i in ann.issues) == 2


def test_read_voc_scores(tmp_path):
    p = tmp_path / "pred.xml"
    text = voc_text([(1, 2, 3, 4), (5, 6, 7, 8)])
    text = text.replace("<pose>", "<score>0.25</score><pose>", 1)
    p.write_text(text)
    assert read_voc(p).scores is None  # a score for only one box of two: not usable
    p.write_text(
        text.replace(
            "<pose>Unspecified</pose>\n    <bndbox>\n      <xmin>5",
            "<score>0.75</score><bndbox><xmin>5",
        )
    )
    np.testing.assert_allclose(read_voc(p).scores, [0.25, 0.75])


def test_read_voc_accepts_bom_and_declaration(tmp_path):
    p = tmp_path / "a.xml"
    text = '<?xml version="1.0" encoding="utf-8"?>\n' + voc_text([(1.5, 2, 3, 4)])
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())
    np.testing.assert_array_equal(read_voc(p).boxes, [[1.5, 2, 3, 4]])


# ---------------------------------------------------------------- images


def test_image_size_reads_the_image(tmp_path):
    p = write_image(tmp_path / f"{REAL_STEM}.jpeg", 123, 77)
    assert image_size(p) == (123, 77)
    assert read_image(p).shape == (77, 123, 3)
    assert read_image(p).dtype == np.uint8


def _cuts(n: int) -> list[int]:
    return [0, 2, 10, 200, n // 2, n - 100, n - 2]


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpeg"), ("PNG", ".png")])
def test_truncated_images_are_value_errors(tmp_path, fmt, suffix):
    data = image_bytes(200, 150, fmt=fmt)
    for cut in _cuts(len(data)) if fmt == "JPEG" else _cuts(len(data))[:-1]:
        p = tmp_path / f"t{cut}{suffix}"
        p.write_bytes(data[:cut])
        with pytest.raises(ValueError) as info:
            image_size(p)
        assert ("truncated" in str(info.value)) or ("not a readable image" in str(info.value))


def test_garbage_bytes_are_value_errors(tmp_path):
    rng = np.random.default_rng(1)
    data = image_bytes(200, 150)
    cases = {
        "random": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text": b"this is not a jpeg",
        "header_then_garbage": data[:600] + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.jpeg"
        p.write_bytes(blob)
        with pytest.raises(ValueError):
            image_size(p)


def test_missing_image_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        image_size(tmp_path / "gone.jpeg")


def test_header_only_check_does_not_decode(tmp_path):
    data = image_bytes(200, 150)
    p = tmp_path / "half.jpeg"
    p.write_bytes(data[: len(data) // 2])
    assert image_size(p, verify=False) == (200, 150)  # header intact
    with pytest.raises(ValueError):
        image_size(p, verify=True)


# ---------------------------------------------------------------- box validation


def reference_validate(boxes, width, height):
    """Slow per-box reference: (kept boxes, n clipped, degenerate, outside, overhanging).

    The rule (issue 25): on each axis the part outside the image, both sides together, may
    be up to half the box side, or 2 px for boxes smaller than 4 px; a box overhanging more
    is left out, as is one with nothing inside."""
    kept, clipped, degenerate, outside, overhanging = [], 0, [], [], []
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float32).tolist()):
        if x1 >= x2 or y1 >= y2:
            degenerate.append(i)
            continue
        c = [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]  # fmt: skip
        if c[0] >= c[2] or c[1] >= c[3]:
            outside.append(i)
            continue
        out_x = max(0, -x1) + max(0, x2 - width)
        out_y = max(0, -y1) + max(0, y2 - height)
        if out_x > max(2, (x2 - x1) / 2) or out_y > max(2, (y2 - y1) / 2):
            overhanging.append(i)
            continue
        if c != [x1, y1, x2, y2]:
            clipped += 1
        kept.append(c)
    return np.asarray(kept, np.float32).reshape(-1, 4), clipped, degenerate, outside, overhanging


def test_validate_boxes_matches_reference_on_random_boxes():
    rng = np.random.default_rng(3)
    for trial in range(300):
        w, h = int(rng.integers(50, 400)), int(rng.integers(50, 400))
        n = int(rng.integers(0, 30))
        boxes = np.stack(
            [
                rng.uniform(-80, w + 80, n),
                rng.uniform(-80, h + 80, n),
                rng.uniform(-80, w + 80, n),
                rng.uniform(-80, h + 80, n),
            ],  # fmt: skip
            axis=1,
        ).round(1)
        if trial % 3 == 0 and n:  # make many boxes well-formed
            boxes[:, 2:] = boxes[:, :2] + np.abs(boxes[:, 2:] - boxes[:, :2]) + 1
        if trial % 7 == 0 and n:  # integer coordinates on the borders
            boxes = rng.choice([-5, 0, 3, w - 3, w, w + 5], size=(n, 4)).astype(float)
        kept, n_clipped, problems = validate_boxes(boxes, w, h, "ann.xml")
        ref_kept, ref_clipped, degenerate, outside, over = reference_validate(boxes, w, h)
        np.testing.assert_array_equal(kept, ref_kept)
        assert kept.dtype == np.float32
        assert n_clipped == ref_clipped
        assert len(problems) == len(degenerate) + len(outside) + len(over)
        assert all(p.file == "ann.xml" for p in problems)
        for i in degenerate:
            assert sum(p.error.startswith(f"box {i} ") and "xmin >= xmax" in p.error for p in problems) == 1  # fmt: skip
        for i in outside:
            assert sum(p.error.startswith(f"box {i} ") and f"outside the {w}x{h}" in p.error for p in problems) == 1  # fmt: skip
        for i in over:
            assert sum(p.error.startswith(f"box {i} ") and f"overhangs the {w}x{h}" in p.error for p in problems) == 1  # fmt: skip


@pytest.mark.parametrize(
    "box, kept, clipped, problem",
    [
        ((10, 10, 20, 20), (10, 10, 20, 20), 0, None),
        ((0, 0, 100, 80), (0, 0, 100, 80), 0, None),  # exactly the image: inside
        ((-10, 5, 20, 20), (0, 5, 20, 20), 1, None),  # a third outside: clipped
        ((90, 70, 110, 90), (90, 70, 100, 80), 1, None),  # half outside: clipped
        ((90, 70, 130, 95), None, 0, "overhangs the 100x80 image by 30 px"),  # 3/4 outside
        ((-0.4, 5, 1, 20), (0, 5, 1, 20), 1, None),  # 0.4 of 1.4 px outside: within 2 px
        ((-10, -10, 110, 90), (0, 0, 100, 80), 1, None),  # larger than the image
        ((100, 10, 120, 20), None, 0, "outside"),  # touches the right border from outside
        ((-20, 10, 0, 20), None, 0, "outside"),
        ((10, 80, 20, 99), None, 0, "outside"),
        ((200, 200, 300, 300), None, 0, "outside"),
        ((20, 10, 20, 30), None, 0, "xmin >= xmax"),  # zero width
        ((30, 10, 20, 30), None, 0, "xmin >= xmax"),  # reversed
        ((10, 30, 20, 30), None, 0, "xmin >= xmax"),  # zero height (same message)
        ((150, 10, 120, 20), None, 0, "xmin >= xmax"),  # reversed and outside: degenerate first
    ],
)
def test_validate_single_box(box, kept, clipped, problem):
    got, n_clipped, problems = validate_boxes(np.array([box], float), 100, 80, "f.xml")
    assert n_clipped == clipped
    if kept is None:
        assert got.shape == (0, 4)
        assert len(problems) == 1 and problem in problems[0].error
        assert problems[0].file == "f.xml"
    else:
        np.testing.assert_array_equal(got, [kept])
        assert problems == []


# ---------------------------------------------------------------- load_sample


def _record(image, attribute="AP", annotation=None):
    return ImageRecord(image, attribute, annotation, "s")


def test_load_sample_with_quirky_name_and_float_boxes(tmp_path):
    img = write_image(tmp_path / f"{REAL_STEM}.jpeg", 300, 200)
    xml = write_voc_text(
        tmp_path / f"{REAL_STEM}.xml",
        [
            (10.5, 20.25, 40.75, 60.0),
            (-5.0, 190.5, 30.0, 210.0),
            (290, 5, 330, 50),
            (50, 50, 40, 60),
            (400, 10, 450, 20),
        ],  # fmt: skip
        width=300,
        height=200,
    )
    s = load_sample(_record(img, annotation=xml))
    assert (s.width, s.height) == (300, 200)
    # box 1: 10 of its 19.5 px height below the image (more than half): left out;
    # box 2: 30 of its 40 px width right of the image: left out (issue 25's overhang rule)
    np.testing.assert_array_equal(s.boxes, [[10.5, 20.25, 40.75, 60.0]])
    assert s.clipped == 0
    assert [p.file for p in s.problems] == [str(xml)] * 4
    errors = [p.error for p in s.problems]
    assert errors[0].startswith("object 1 ") and "overhangs the 300x200 image by 10 px" in errors[0]
    assert errors[1].startswith("object 2 ") and "overhangs the 300x200 image by 30 px" in errors[1]
    assert errors[2].startswith("object 3 ") and "xmin >= xmax" in errors[2]
    assert errors[3].startswith("object 4 ") and "outside" in errors[3]


def test_load_sample_ap_without_xml_is_a_problem(tmp_path):
    img = write_image(tmp_path / "a.jpeg", 64, 64)
    s = load_sample(_record(img))
    assert s.boxes.shape == (0, 4)
    assert s.problems == [Problem(str(img), "AP image has no annotation XML (taken as 0 boxes)")]


def test_load_sample_np_without_or_with_empty_xml_is_fine(tmp_path):
    img = write_image(tmp_path / "n.jpeg", 64, 80)
    assert load_sample(_record(img, "NP")).problems == []
    for text in ("", "<annotation><size><width>64</width><height>80</height></size></annotation>"):
        xml = tmp_path / "n.xml"
        xml.write_text(text)
        s = load_sample(_record(img, "NP", xml))
        assert s.problems == [] and s.boxes.shape == (0, 4) and (s.width, s.height) == (64, 80)


def test_load_sample_np_with_boxes_ignores_them(tmp_path):
    img = write_image(tmp_path / "n.jpeg", 64, 64)
    xml = write_voc_text(tmp_path / "n.xml", [(1, 1, 10, 10), (50, 50, 70, 70)])
    s = load_sample(_record(img, "NP", xml))
    assert s.boxes.shape == (0, 4)
    assert s.clipped == 0  # the ignored, clipped box is not counted either
    assert len(s.problems) == 1 and s.problems[0].file == str(xml)
    assert "NP image has 2 box(es)" in s.problems[0].error


def test_load_sample_malformed_xml_is_a_problem_naming_the_xml(tmp_path):
    img = write_image(tmp_path / "a.jpeg", 64, 64)
    xml = tmp_path / "a.xml"
    xml.write_text("<annotation><object><bndbox>")
    s = load_sample(_record(img, annotation=xml))
    assert s.boxes.shape == (0, 4)
    assert len(s.problems) == 1 and s.problems[0].file == str(xml)
    assert "malformed XML" in s.problems[0].error


def test_load_sample_size_mismatch_uses_the_image(tmp_path):
    img = write_image(tmp_path / "a.jpeg", 100, 60)
    # half of the box outside on both axes: within the overhang allowance, clipped
    xml = write_voc_text(tmp_path / "a.xml", [(90, 50, 110, 70)], width=200, height=200)
    s = load_sample(_record(img, annotation=xml))
    np.testing.assert_array_equal(s.boxes, [[90, 50, 100, 60]])
    assert s.clipped == 1
    assert len(s.problems) == 1 and "200x200" in s.problems[0].error
    assert "100x60" in s.problems[0].error


def test_load_sample_unusable_image_raises_image_problem(tmp_path):
    p = tmp_path / "bad.jpeg"
    p.write_bytes(image_bytes(100, 100)[:500])
    with pytest.raises(ImageProblem) as info:
        load_sample(_record(p))
    assert info.value.problem.file == str(p)


def test_load_sample_annotation_override(tmp_path):
    img = write_image(tmp_path / "a.jpeg", 64, 64)
    own = write_voc_text(tmp_path / "a.xml", [(1, 1, 5, 5)])
    full = write_voc_text(tmp_path / "full.xml", [(1, 1, 5, 5), (10, 10, 20, 20)])
    assert len(load_sample(_record(img, annotation=own)).boxes) == 1
    assert len(load_sample(_record(img, annotation=own), annotation=full).boxes) == 2


# ---------------------------------------------------------------- scanning a root


def test_scan_digestpath_layout(make_root):
    pos = {
        stem("S1", 0): (64, 64, [(1, 1, 9, 9)]),
        stem("S1", 1): (64, 64, None),
        "b": (64, 64, []),
    }
    neg = {stem("N1", 0): (64, 64, None), stem("N2", 0): (64, 64, [])}
    root = make_root(pos, neg)
    (root / "sig-train-pos" / "notes.txt").write_text("x")
    (root / "sig-train-pos" / "orphan.xml").write_text("<annotation/>")
    (root / "sig-train-neg" / "sub.jpeg").mkdir()  # a folder named like an image
    records = scan_digestpath(root)
    assert [r.attribute for r in records] == ["AP"] * 3 + ["NP"] * 2
    assert [r.name for r in records] == sorted(f"{s}.jpeg" for s in pos) + sorted(f"{s}.jpeg" for s in neg)  # fmt: skip
    by = {r.image.stem: r for r in records}
    assert by[stem("S1", 0)].annotation == root / "sig-train-pos" / f"{stem('S1', 0)}.xml"
    assert by[stem("S1", 1)].annotation is None
    assert by[stem("N1", 0)].annotation is None
    assert by[stem("N2", 0)].annotation is not None
    assert by[stem("S1", 0)].slide_id == by[stem("S1", 1)].slide_id == "S1"
    assert by["b"].slide_id == "b"
    assert by[stem("N2", 0)].slide_id == "N2"


def test_scan_only_one_folder(tmp_path):
    write_image(tmp_path / "r" / "sig-train-neg" / "x.jpeg", 64, 64)
    assert [r.attribute for r in scan_digestpath(tmp_path / "r")] == ["NP"]


@pytest.mark.parametrize("kind", ["missing", "file", "wrong layout"])
def test_scan_bad_root(tmp_path, kind):
    root = tmp_path / "r"
    if kind == "file":
        root.write_text("x")
    elif kind == "wrong layout":
        write_image(root / "images" / "a.jpeg", 64, 64)
    with pytest.raises(DatasetError) as info:
        scan_digestpath(root)
    assert str(root) in str(info.value)


def test_load_samples_collects_every_problem_and_keeps_the_rest(make_root):
    pos = {
        "good": (120, 100, [(10, 10, 30, 30), (110, 90, 130, 110)]),
        "trunc": (120, 100, [(1, 1, 5, 5)]),
        "garbage": (120, 100, None),
        "badxml": (120, 100, None),
        "degenerate": (120, 100, [(10, 10, 5, 30), (20, 20, 40, 40)]),
        "outside": (120, 100, [(200, 10, 220, 30)]),
    }
    neg = {"n1": (90, 90, None), "n2": (90, 90, [])}
    root = make_root(pos, neg)
    p = root / "sig-train-pos"
    (p / "trunc.jpeg").write_bytes((p / "trunc.jpeg").read_bytes()[:300])
    (p / "garbage.jpeg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (p / "badxml.xml").write_text("<annotation><object>")
    samples, problems = load_samples(scan_digestpath(root))
    names = sorted(s.record.image.stem for s in samples)
    assert names == ["badxml", "degenerate", "good", "n1", "n2", "outside"]
    files = [q.file for q in problems]
    assert files.count(str(p / "trunc.jpeg")) == 1
    assert files.count(str(p / "garbage.jpeg")) == 1
    assert files.count(str(p / "badxml.xml")) == 1
    assert files.count(str(p / "degenerate.xml")) == 1
    assert files.count(str(p / "outside.xml")) == 1
    assert len(problems) == 5

    summary = summarize(samples, problems)
    assert summary["positive_images"] == 4  # good, badxml, degenerate, outside
    assert summary["negative_images"] == 2
    assert summary["boxes"] == 3  # 2 good (one clipped) + 1 degenerate's valid box
    assert summary["clipped_boxes"] == 1
    assert summary["usable"] is True
    assert summary["slides"] == 6
    assert len(summary["problems"]) == 5
    assert all(set(q) == {"file", "error"} for q in summary["problems"])
    # median of widths (20, 10, 20) and heights (20, 10, 20) of the kept boxes
    assert summary["median_box_size_px"] == [20.0, 20.0]


def test_summarize_unusable_without_ap_boxes(make_root):
    root = make_root({"a": (64, 64, [])}, {"n": (64, 64, None)})
    samples, problems = load_samples(scan_digestpath(root))
    summary = summarize(samples, problems)
    assert summary["usable"] is False and summary["boxes"] == 0
    assert summary["median_box_size_px"] is None
