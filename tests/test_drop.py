"""Controlled label dropping: exact counts, reproducible, nothing lost, images hard-linked."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from conftest import parse_boxes, random_boxes, sorted_rows, stem

from pathodet.core.io import atomic_write_text, link_or_copy
from pathodet.data.digestpath import DatasetError
from pathodet.data.drop import choose_dropped, drop_annotations, read_removed


def half_up(rate: float, n: int) -> int:
    """round(rate * n), halves up, computed exactly on the decimal rate as typed."""
    return math.floor(Fraction(str(rate)) * n + Fraction(1, 2))


N_BOXES = [0, 1, 2, 3, 5, 7, 10, 20, 50]


@pytest.fixture
def source(make_root):
    rng = np.random.default_rng(11)
    pos, originals = {}, {}
    for i, n in enumerate(N_BOXES):
        s = stem(f"2018_{i:05d}_1-{i % 3}", i, w=400, h=380)
        boxes = random_boxes(rng, n, 400, 380)
        if n >= 2:
            boxes[0] = [308.641953, 3.0864195, 324.999985, 10.0625]  # more than 6 digits
        pos[s] = (400, 380, boxes)
        originals[s] = boxes
    neg = {
        stem("N_1", 0): (200, 150, None),
        stem("N_1", 1): (200, 150, []),
        stem("N_2", 0): (220, 160, [(1, 1, 5, 5)]),  # an NP file that (wrongly) has a box
    }
    root = make_root(pos, neg)
    return root, originals, list(neg)


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.29, 0.5, 0.7, 1.0])
def test_drop_counts_and_multisets(tmp_path, source, rate):
    root, originals, _ = source
    out = tmp_path / f"out {rate}"
    report = drop_annotations(root, out, rate=rate, seed=4)
    assert report["positive_images"] == len(N_BOXES)
    for s, boxes in originals.items():
        n = len(boxes)
        kept = parse_boxes(out / "sig-train-pos" / f"{s}.xml")
        removed = parse_boxes(out / "removed-annotations" / f"{s}.xml")
        assert len(removed) == half_up(rate, n), (s, n)
        assert len(kept) == n - half_up(rate, n)
        # removed + kept == original, as multisets, to the last bit of the float32 values
        assert sorted_rows(np.concatenate([kept, removed])) == sorted_rows(boxes)
        assert report["images"][f"{s}.jpeg"] == {"kept": len(kept), "removed": len(removed)}
    total = sum(N_BOXES)
    removed_total = sum(half_up(rate, n) for n in N_BOXES)
    assert report["removed_boxes"] == removed_total
    assert report["kept_boxes"] == total - removed_total
    assert report["realised_rate"] == pytest.approx(removed_total / total)
    assert json.loads((out / "drop.json").read_text()) == report


def test_images_are_hard_links_and_np_untouched(tmp_path, source):
    root, originals, neg = source
    out = tmp_path / "out"
    drop_annotations(root, out, rate=0.5, seed=0)
    for s in originals:
        a, b = root / "sig-train-pos" / f"{s}.jpeg", out / "sig-train-pos" / f"{s}.jpeg"
        assert os.stat(a).st_ino == os.stat(b).st_ino
        assert os.stat(b).st_nlink >= 2
    for s in neg:
        a, b = root / "sig-train-neg" / f"{s}.jpeg", out / "sig-train-neg" / f"{s}.jpeg"
        assert os.stat(a).st_ino == os.stat(b).st_ino
        src_xml = root / "sig-train-neg" / f"{s}.xml"
        out_xml = out / "sig-train-neg" / f"{s}.xml"
        assert out_xml.exists() == src_xml.exists()
        if src_xml.exists():
            assert out_xml.read_bytes() == src_xml.read_bytes()
        assert read_removed(out, s) is None
    removed_dir = sorted(p.stem for p in (out / "removed-annotations").iterdir())
    assert removed_dir == sorted(originals)
    assert sorted(p.name for p in (out / "sig-train-neg").iterdir()) == sorted(
        p.name for p in (root / "sig-train-neg").iterdir()
    )
    # the source is left as it was
    for s, boxes in originals.items():
        assert sorted_rows(parse_boxes(root / "sig-train-pos" / f"{s}.xml")) == sorted_rows(boxes)


def _removed_sets(out, originals):
    return {
        s: sorted_rows(parse_boxes(out / "removed-annotations" / f"{s}.xml")) for s in originals
    }


def test_same_seed_same_boxes_other_seed_other_boxes(tmp_path, source):
    root, originals, _ = source
    drop_annotations(root, tmp_path / "a", rate=0.5, seed=1)
    drop_annotations(root, tmp_path / "b", rate=0.5, seed=1)
    drop_annotations(root, tmp_path / "c", rate=0.5, seed=2)
    a = _removed_sets(tmp_path / "a", originals)
    assert a == _removed_sets(tmp_path / "b", originals)
    for s in originals:
        name = f"{s}.xml"
        assert (tmp_path / "a" / "sig-train-pos" / name).read_bytes() == (
            tmp_path / "b" / "sig-train-pos" / name
        ).read_bytes()
    c = _removed_sets(tmp_path / "c", originals)
    # with 20 and 50 boxes the chance of the same choice is 1/C(20,10) * 1/C(50,25)
    assert a != c
    big = [s for s, b in originals.items() if len(b) >= 20]
    assert all(a[s] != c[s] for s in big)


def test_choice_of_an_image_does_not_depend_on_the_others(tmp_path, source, make_root):
    root, originals, _ = source
    drop_annotations(root, tmp_path / "all", rate=0.5, seed=9)
    one = max(originals, key=lambda s: len(originals[s]))
    alone = make_root({one: (400, 380, originals[one])}, name="alone")
    drop_annotations(alone, tmp_path / "one", rate=0.5, seed=9)
    assert _removed_sets(tmp_path / "one", [one]) == _removed_sets(tmp_path / "all", [one])


def test_choose_dropped_exact_counts():
    rng = np.random.default_rng(0)
    for n in range(0, 60):
        for rate in (0.0, 0.1, 0.145, 0.29, 1 / 3, 0.5, 0.57, 0.9, 1.0):
            mask = choose_dropped(n, rate, rng)
            assert mask.dtype == bool and mask.shape == (n,)
            assert int(mask.sum()) == half_up(rate, n), (n, rate)


@pytest.mark.parametrize("rate", [-0.01, 1.01, float("nan")])
def test_bad_rate(tmp_path, source, rate):
    root, _, _ = source
    with pytest.raises(ValueError, match="drop rate"):
        drop_annotations(root, tmp_path / "o", rate=rate)
    assert not (tmp_path / "o").exists()


def test_output_must_differ_from_source(source):
    root, _, _ = source
    with pytest.raises(DatasetError, match="must differ"):
        drop_annotations(root, root / ".." / root.name, rate=0.5)


def test_unreadable_image_reported_and_left_out(tmp_path, make_root):
    root = make_root({"good": (64, 64, [(1, 1, 9, 9), (20, 20, 30, 30)]), "bad": (64, 64, [(1, 1, 2, 2)])})  # fmt: skip
    (root / "sig-train-pos" / "bad.jpeg").write_bytes(b"not an image")
    report = drop_annotations(root, tmp_path / "o", rate=0.5, seed=0)
    assert list(report["images"]) == ["good.jpeg"]
    assert [p["file"] for p in report["problems"]] == [str(root / "sig-train-pos" / "bad.jpeg")]
    assert not (tmp_path / "o" / "sig-train-pos" / "bad.jpeg").exists()
    assert report["kept_boxes"] == 1 and report["removed_boxes"] == 1


def test_written_files_get_the_usual_mode(tmp_path, source):
    root, _, _ = source
    umask = os.umask(0o022)
    os.umask(umask)
    report_path = tmp_path / "o" / "drop.json"
    drop_annotations(root, tmp_path / "o", rate=0.5)
    assert report_path.stat().st_mode & 0o777 == 0o666 & ~umask
    p = atomic_write_text(tmp_path / "x" / "t.txt", "hé")
    assert p.read_text(encoding="utf-8") == "hé"
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [q.name for q in p.parent.iterdir()] == ["t.txt"]  # no temporary left behind


def test_link_or_copy_replaces_target(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"new")
    dst = tmp_path / "d" / "b.bin"
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    assert link_or_copy(src, dst) == "link"
    assert dst.read_bytes() == b"new" and os.stat(dst).st_ino == os.stat(src).st_ino
    assert sorted(q.name for q in dst.parent.iterdir()) == ["b.bin"]


def test_write_voc_then_read_keeps_every_bit(tmp_path):
    from pathodet.data.voc import read_voc, write_voc

    rng = np.random.default_rng(2)
    boxes32 = (rng.random((200, 4)) * 4000).astype(np.float32)
    # well-formed boxes (x1 < x2, y1 < y2): degenerate ones are not written (issue 25)
    boxes32 = np.concatenate([np.minimum(boxes32[:, :2], boxes32[:, 2:]),
                              np.maximum(boxes32[:, :2], boxes32[:, 2:])], axis=1)  # fmt: skip
    p = write_voc(tmp_path / "a.xml", "a b.jpeg", 4000, 4000, boxes32)
    np.testing.assert_array_equal(read_voc(p).boxes, boxes32)
    np.testing.assert_array_equal(parse_boxes(p), boxes32)
    boxes64 = rng.random((50, 4)) * 1e5
    boxes64 = np.concatenate([np.minimum(boxes64[:, :2], boxes64[:, 2:]),
                              np.maximum(boxes64[:, :2], boxes64[:, 2:])], axis=1)  # fmt: skip
    p = write_voc(tmp_path / "b.xml", "b", 1, 1, boxes64)
    import xml.etree.ElementTree as ET

    values = [float(e.text) for e in ET.parse(p).getroot().iter() if e.tag in ("xmin", "ymin", "xmax", "ymax")]  # fmt: skip
    np.testing.assert_array_equal(np.reshape(values, (-1, 4)), boxes64)
    ints = write_voc(tmp_path / "c.xml", "c", 10, 10, np.array([[1, 2, 3, 4]]))
    assert "<xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax>" in ints.read_text()
    assert "e+" not in p.read_text() and "e-" not in p.read_text()
