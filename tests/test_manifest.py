"""The generic manifest CSV: image, attribute, optional annotation (+ slide_id, fold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_STEM, stem, write_image, write_voc_text

from pathodet.data.digestpath import (
    DatasetError,
    ImageRecord,
    load_records,
    read_manifest,
    scan_digestpath,
    write_manifest,
)
from pathodet.data.samples import load_samples


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_read_manifest_paths_attributes_and_defaults(tmp_path):
    absolute = tmp_path / "elsewhere" / "abs image.png"
    m = _write(
        tmp_path / "lists" / "m.csv",
        "image,attribute,annotation\n"
        f'"imgs/{REAL_STEM}.jpeg",AP,"imgs/{REAL_STEM}.xml"\n'
        "imgs/normal one.jpeg, np ,\n"
        f"{absolute},ap,\n",
    )
    records = read_manifest(m)
    base = tmp_path / "lists"
    assert records == [
        ImageRecord(
            base / "imgs" / f"{REAL_STEM}.jpeg",
            "AP",
            base / "imgs" / f"{REAL_STEM}.xml",
            "2018_64982_1-3",
        ),  # fmt: skip
        ImageRecord(base / "imgs" / "normal one.jpeg", "NP", None, "normal one"),
        ImageRecord(absolute, "AP", None, "abs image"),
    ]


def test_read_manifest_slide_and_fold_columns(tmp_path):
    m = _write(
        tmp_path / "m.csv",
        "fold,slide_id,annotation,image,attribute\n"
        "3,patient 7,,a.jpeg,AP\n"
        f",,,{stem('S9', 1)}.jpeg,NP\n",
    )
    a, b = read_manifest(m)
    assert (a.fold, a.slide_id, a.annotation) == (3, "patient 7", None)
    assert (b.fold, b.slide_id) == (None, "S9")


def test_read_manifest_without_annotation_column_and_with_bom(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes(b"\xef\xbb\xbfimage,attribute\r\nx.jpeg,NP\r\n")
    (r,) = read_manifest(m)
    assert (r.image, r.attribute, r.annotation) == (tmp_path / "x.jpeg", "NP", None)


def test_read_manifest_empty_body(tmp_path):
    assert read_manifest(_write(tmp_path / "m.csv", "image,attribute,annotation\n")) == []


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("a.jpeg,AP,\nb.jpeg,XP,\n", 3, "attribute must be AP or NP"),
        ("a.jpeg,AP,\n,NP,\n", 3, "empty image path"),
        ("a.jpeg,,\n", 2, "attribute must be AP or NP"),
        ("a.jpeg,AP,,s,1\nb.jpeg,AP,,s,one\n", 3, "is not an integer"),
        # blank lines are skipped by the CSV reader but are lines of the file all the same
        ("a.jpeg,AP,\n\n\nb.jpeg,maybe,\n", 5, "attribute must be AP or NP"),
        # a quoted field spanning two lines: the bad row is line 4
        ('"multi\nline.jpeg",AP,\nb.jpeg,AP,,s,x\n', 4, "is not an integer"),
    ],
)
def test_read_manifest_errors_name_file_and_line(tmp_path, body, line, words):
    m = _write(tmp_path / "my manifest.csv", "image,attribute,annotation,slide_id,fold\n" + body)
    with pytest.raises(DatasetError) as info:
        read_manifest(m)
    msg = str(info.value)
    assert msg.startswith(f"{m}, line {line}:"), msg
    assert words in msg


@pytest.mark.parametrize(
    "header, missing",
    [
        ("image,annotation", "attribute"),
        ("path,label", "image, attribute"),
        ("", "image, attribute"),
    ],  # fmt: skip
)
def test_read_manifest_missing_columns(tmp_path, header, missing):
    m = _write(tmp_path / "m.csv", header + "\n")
    with pytest.raises(DatasetError, match=f"lacks column\\(s\\) {missing}$"):
        read_manifest(m)


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read manifest"):
        read_manifest(tmp_path / "none.csv")


def test_write_then_read_round_trip(tmp_path):
    data = tmp_path / "data"
    records = [
        ImageRecord(
            data / "sig-train-pos" / f"{REAL_STEM}.jpeg",
            "AP",
            data / "sig-train-pos" / f"{REAL_STEM}.xml",
            "2018_64982_1-3",
            0,
        ),  # fmt: skip
        ImageRecord(data / 'odd, name "q".jpeg', "NP", None, "slide, with comma", 4),
        ImageRecord(data / "x.png", "AP", None, "x", None),
        ImageRecord(tmp_path.parent / "outside.jpeg", "NP", None, "o", 1),  # not under the manifest
    ]
    m = write_manifest(data / "folds.csv", records)
    assert m == data / "folds.csv"
    header = m.read_text().splitlines()[0]
    assert header == "image,attribute,annotation,slide_id,fold,case_id"
    back = read_manifest(m)
    resolved = [
        ImageRecord(
            r.image.resolve(),
            r.attribute,
            r.annotation and r.annotation.resolve(),
            r.slide_id,
            r.fold,
        )
        for r in records
    ]
    assert [
        ImageRecord(
            b.image.resolve(),
            b.attribute,
            b.annotation and b.annotation.resolve(),
            b.slide_id,
            b.fold,
        )  # fmt: skip
        for b in back
    ] == resolved
    # paths under the manifest's folder are written relative, others absolute
    rows = m.read_text().splitlines()[1:]
    assert rows[0].startswith(f"sig-train-pos/{REAL_STEM}.jpeg,AP,sig-train-pos/")
    assert rows[3].startswith(str((tmp_path.parent / "outside.jpeg").resolve()))


def test_scan_then_manifest_then_load_gives_the_same_samples(tmp_path, make_root):
    root = make_root(
        {stem("S1", 0): (100, 90, [(1.5, 2.5, 30.25, 40)]), stem("S2", 0): (80, 70, [])},
        {stem("N1", 0): (60, 60, None)},
    )
    records = scan_digestpath(root)
    m = write_manifest(tmp_path / "m" / "all.csv", records)
    back = load_records(m)
    assert [(r.name, r.attribute, r.slide_id) for r in back] == [
        (r.name, r.attribute, r.slide_id) for r in records
    ]
    s1, _ = load_samples(records)
    s2, _ = load_samples(back)
    assert [(s.width, s.height) for s in s1] == [(s.width, s.height) for s in s2]
    for a, b in zip(s1, s2, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)


def test_manifest_lets_any_names_be_used(tmp_path):
    write_image(tmp_path / "img" / "tumour.png", 90, 70)
    write_voc_text(tmp_path / "ann" / "whatever.xml", [(10, 10, 20, 25)])
    write_image(tmp_path / "img" / "normal.jpg", 50, 40)
    m = _write(
        tmp_path / "m.csv",
        "image,attribute,annotation\nimg/tumour.png,AP,ann/whatever.xml\nimg/normal.jpg,NP,\n"
        "img/missing.jpeg,AP,ann/missing.xml\n",
    )
    samples, problems = load_samples(load_records(m))
    assert [(s.record.name, s.width, s.height, len(s.boxes)) for s in samples] == [
        ("tumour.png", 90, 70, 1),
        ("normal.jpg", 50, 40, 0),
    ]
    assert [p.file for p in problems] == [str(tmp_path / "img" / "missing.jpeg")]


def test_load_records_dispatch(tmp_path, make_root):
    root = make_root({"a": (64, 64, [])})
    assert [r.name for r in load_records(root)] == ["a.jpeg"]
    m = _write(tmp_path / "M.CSV", "image,attribute\nb.jpeg,NP\n")
    assert [r.name for r in load_records(m)] == ["b.jpeg"]
