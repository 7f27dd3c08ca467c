"""Reliability against bad or hostile input: annotation XML (XXE, billion laughs), images
(empty, truncated, odd modes, decompression bombs, 1x1), predictions CSV rows, and a
prediction batch mixing a good image with every bad one."""

from __future__ import annotations

import io
import json
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_bytes, voc_text
from PIL import Image, ImageFile

from pathodet.data.digestpath import ImageRecord
from pathodet.data.images import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    image_size,
    max_pixels_limit,
    read_image,
)
from pathodet.data.predictions import PredictionsError, read_predictions
from pathodet.data.samples import ImageProblem, load_sample
from pathodet.data.tiling import TileDataset
from pathodet.data.voc import AnnotationError, read_voc
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import predict

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- helpers


def png_bytes(width: int, height: int, color_type: int, bit_depth: int, raw: bytes) -> bytes:
    """A PNG written by hand (so its header may claim anything): ``raw`` is the filtered
    scanline data (each row prefixed by its filter byte) before compression."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking RGB PNG header claiming ``width x height``; a few hundred bytes."""
    return png_bytes(width, height, 2, 8, b"\x00" * 64)


def encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    """``array`` encoded as ``fmt``; ``mode`` forces a PIL mode (``"CMYK"`` for 4 channels)."""
    array = np.ascontiguousarray(array)
    if mode is None:
        image = Image.fromarray(array)
    else:
        image = Image.frombytes(mode, (array.shape[1], array.shape[0]), array.tobytes())
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def solid_rgb(h: int = 16, w: int = 16) -> np.ndarray:
    """Four flat quadrants (lossless formats only need exact equality, JPEG gets near)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (200, 40, 90)
    rgb[: h // 2, w // 2 :] = (250, 250, 250)
    rgb[h // 2 :, : w // 2] = (10, 120, 30)
    rgb[h // 2 :, w // 2 :] = (90, 60, 200)
    return rgb


def tiny_checkpoint(path: Path) -> Path:
    """An untrained detector in a checkpoint: what ``predict`` needs, boxes irrelevant."""
    from pathodet.model.config import ModelConfig
    from pathodet.model.retinanet import SRCRetinaNet
    from pathodet.training.checkpoint import save_checkpoint
    from pathodet.training.config import Config

    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(norm="bn", fpn_channels=16))
    model = SRCRetinaNet(cfg.model)
    return save_checkpoint(path, {"config": cfg.model_dump_json(), "model": model.state_dict()})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


# ---------------------------------------------------------------- untrusted XML


def test_xxe_external_entity_is_refused_and_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    p = tmp_path / "xxe.xml"
    p.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE annotation [<!ENTITY x SYSTEM "file://{secret}">]>\n'
        "<annotation><filename>&x;</filename>"
        "<object><name>ring_cell_cancer</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(AnnotationError) as info:
        read_voc(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: refused")
    assert "DTD" in msg and "entities are refused" in msg
    assert "TOP-SECRET-42" not in msg and info.value.path == str(p)


def test_xxe_passwd_example_is_refused(tmp_path):
    p = tmp_path / "passwd.xml"
    p.write_text(
        '<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;</annotation>'
    )
    with pytest.raises(AnnotationError, match=r"refused.*DTDs and entities are refused"):
        read_voc(p)


def test_billion_laughs_is_refused_fast(tmp_path):
    levels = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    p = tmp_path / "lol.xml"
    p.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n' + "\n".join(levels) + "\n]>\n"
        "<annotation><filename>&lol9;</filename></annotation>"
    )
    start = time.perf_counter()
    with pytest.raises(AnnotationError) as info:
        read_voc(p)
    assert time.perf_counter() - start < 1.0  # nothing was expanded (10^9 "lol"s)
    assert str(p) in str(info.value) and "entities are refused" in str(info.value)


def test_external_dtd_reference_is_refused(tmp_path):
    p = tmp_path / "dtd.xml"
    p.write_text('<!DOCTYPE annotation SYSTEM "http://example.invalid/voc.dtd"><annotation/>')
    with pytest.raises(AnnotationError, match=r"declares a DTD \(<!DOCTYPE annotation>\)"):
        read_voc(p)


def test_a_normal_digestpath_voc_still_parses(tmp_path):
    p = tmp_path / "ok.xml"
    text = voc_text([("12.0", "40.5", "61", "88"), ("100", "7", "130.75", "9.5")], width=2000, height=2000)  # fmt: skip
    p.write_bytes(b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n' + text.encode())
    ann = read_voc(p)
    assert (ann.width, ann.height) == (2000, 2000) and ann.issues == []
    np.testing.assert_array_equal(ann.boxes, [[12, 40.5, 61, 88], [100, 7, 130.75, 9.5]])


def test_a_hostile_annotation_is_a_problem_of_its_file_not_a_crash(tmp_path):
    image = tmp_path / "a.jpeg"
    image.write_bytes(image_bytes(64, 48))
    xml = tmp_path / "a.xml"
    xml.write_text('<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>&x;</annotation>')  # fmt: skip
    sample = load_sample(ImageRecord(image, "AP", xml, "s"))
    assert len(sample.boxes) == 0
    [problem] = sample.problems
    assert problem.file == str(xml)
    assert "refused" in problem.error and problem.error.endswith("(taken as 0 boxes)")


def test_no_other_xml_parser_in_the_package():
    """Every XML parse in pathodet goes through defusedxml (voc.parse_xml)."""
    unsafe = re.compile(
        r"\bET\.(parse|fromstring|XML|iterparse)\b|ElementTree\.(parse|fromstring|XML|iterparse)"
        r"|\bminidom\b|\blxml\b|\bpulldom\b|xml\.sax\.(parse|make_parser)|expat\.ParserCreate"
        r"|import xml\.etree\.ElementTree as"
    )
    found = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in sorted((REPO / "pathodet").rglob("*.py")) + sorted((REPO / "apps").rglob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if unsafe.search(line)
    ]
    assert found == []


# ---------------------------------------------------------------- images: clear errors


def test_zero_byte_file(tmp_path):
    p = tmp_path / "zero.jpeg"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty file \(0 bytes\)") as info:
        read_image(p)
    assert str(info.value).startswith(f"{p}: cannot decode image:")
    with pytest.raises(ImageProblem) as problem:
        load_sample(ImageRecord(p, "NP", None, "s"))
    assert problem.value.problem.file == str(p)
    assert problem.value.problem.error == "not a readable image: empty file (0 bytes)"


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpeg"), ("PNG", ".png")])
def test_truncated_image_names_file_and_problem(tmp_path, fmt, suffix):
    data = image_bytes(200, 150, fmt=fmt)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    assert image_size(p, verify=False) == (200, 150)
    with pytest.raises(ValueError) as info:
        read_image(p)
    assert str(info.value).startswith(f"{p}: cannot decode image: corrupt or truncated image")
    with pytest.raises(ImageProblem) as problem:
        load_sample(ImageRecord(p, "NP", None, "s"))
    assert str(p) in str(problem.value) and "truncated" in problem.value.problem.error


def test_garbage_directory_and_missing_files(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is text, not a PNG" * 10)
    with pytest.raises(ValueError, match=r"junk\.png: cannot decode image: not a readable image"):
        read_image(junk)
    folder = tmp_path / "folder.jpeg"
    folder.mkdir()
    with pytest.raises(ValueError, match=r"folder\.jpeg: cannot decode image: not a regular file"):
        read_image(folder)
    with pytest.raises(ValueError, match=r"gone\.jpeg: cannot decode image: image file is missing"):
        read_image(tmp_path / "gone.jpeg")


# ---------------------------------------------------------------- images: converted correctly


def test_png_content_with_jpeg_suffix_reads_exactly(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    p = tmp_path / "really-a-png.jpeg"
    p.write_bytes(encoded(rgb, "PNG"))
    assert image_size(p) == (34, 21)
    np.testing.assert_array_equal(read_image(p), rgb)  # lossless: content decided, not suffix


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.array(
        [[[255, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 100, 50, 128]]], np.uint8
    )
    p = tmp_path / "rgba.png"
    p.write_bytes(encoded(rgba, "PNG"))
    got = read_image(p)
    assert got.dtype == np.uint8 and got.shape == (1, 4, 3)
    # transparent -> white; opaque unchanged; half alpha -> halfway to white (rounded)
    np.testing.assert_array_equal(
        got[0], [[255, 255, 255], [10, 20, 30], [127, 127, 127], [227, 177, 152]]
    )


def test_palette_with_transparent_index_is_composited_over_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 30, 60, 90] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    np.testing.assert_array_equal(read_image(p)[0], [[255, 255, 255], [30, 60, 90]])


def test_grayscale_gives_three_equal_channels(tmp_path):
    gray = np.array([[0, 1, 127, 128, 254, 255]], np.uint8)
    p = tmp_path / "gray.png"
    p.write_bytes(encoded(gray, "PNG"))
    got = read_image(p)
    assert got.shape == (1, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], gray)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (255, 0, 0, 0)  # cyan
    cmyk[:, 8:] = (0, 0, 0, 0)  # white
    p = tmp_path / "cmyk.jpeg"
    p.write_bytes(encoded(cmyk, "JPEG", "CMYK"))
    assert Image.open(p).mode == "CMYK"
    got = read_image(p).astype(int)
    assert got.shape == (16, 16, 3)
    assert np.abs(got[4:12, 1:6] - [0, 255, 255]).max() <= 4
    assert np.abs(got[4:12, 10:15] - [255, 255, 255]).max() <= 4


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    """PIL's convert("RGB") turns every 16-bit value above 255 white; read_image scales."""
    values = [0, 255, 256, 25700, 32768, 65535]
    raw = b"\x00" + b"".join(struct.pack(">H", v) for v in values)
    p = tmp_path / "gray16.png"
    p.write_bytes(png_bytes(len(values), 1, 0, 16, raw))
    assert Image.open(p).mode in ("I;16", "I")
    got = read_image(p)
    assert got.dtype == np.uint8
    expected = [0, 1, 1, 100, 128, 255]  # round(v * 255 / 65535)
    for c in range(3):
        np.testing.assert_array_equal(got[0, :, c], expected)


def test_16bit_rgb_png_is_reduced_to_8bit(tmp_path):
    values = [0, 256, 25700, 32768, 65535]
    raw = b"\x00" + b"".join(struct.pack(">HHH", v, 65535 - v, v) for v in values)
    p = tmp_path / "rgb16.png"
    p.write_bytes(png_bytes(len(values), 1, 2, 16, raw))
    got = read_image(p).astype(int)[0]
    want = np.array([[v, 65535 - v, v] for v in values]) * 255 / 65535
    assert np.abs(got - want).max() <= 1


def test_32bit_integer_and_float_images(tmp_path):
    ok = tmp_path / "i32.tiff"
    Image.fromarray(np.array([[0, 32768, 65535]], np.int32)).save(ok)
    np.testing.assert_array_equal(read_image(ok)[0, :, 1], [0, 128, 255])
    big = tmp_path / "i32-big.tiff"
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(big)
    with pytest.raises(ValueError, match=r"i32-big\.tiff: .*mode I.*outside 0-65535"):
        read_image(big)
    f = tmp_path / "float.tiff"
    Image.fromarray(np.array([[0.5, 1.0]], np.float32)).save(f)
    with pytest.raises(ValueError, match=r"float\.tiff: .*floating-point image \(mode F\)"):
        read_image(f)


def test_one_pixel_image_reads_and_tiles(tmp_path):
    p = tmp_path / "dot.png"
    p.write_bytes(encoded(np.array([[[1, 2, 3]]], np.uint8), "PNG"))
    assert image_size(p) == (1, 1)
    np.testing.assert_array_equal(read_image(p), [[[1, 2, 3]]])
    sample = load_sample(ImageRecord(p, "NP", None, "s"))
    ds = TileDataset([sample], tile=800, stride=300)
    assert len(ds) == 1 and ds.refs[0].window == (0, 0, 1, 1)
    np.testing.assert_array_equal(ds[0]["image"], [[[1, 2, 3]]])


# ---------------------------------------------------------------- decompression bombs


def test_bomb_header_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append("x") or real_load(im))
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png())
    assert p.stat().st_size < 1000
    for call in (read_image, image_size, lambda q: image_size(q, verify=False)):
        with pytest.raises(ValueError) as info:
            call(p)
        msg = str(info.value)
        assert "100000x100000 = 10,000,000,000 pixels" in msg
        assert f"{DEFAULT_MAX_PIXELS:,}-pixel decompression-bomb guard" in msg
        assert f"{MAX_PIXELS_ENV}=<pixels>" in msg and "max_pixels=<pixels>" in msg
    assert loads == []  # no pixel was decoded (30 GB had it been)
    with pytest.raises(ImageProblem) as problem:
        load_sample(ImageRecord(p, "NP", None, "s"), verify_image=False)
    assert problem.value.problem.file == str(p) and "guard" in problem.value.problem.error


def test_default_guard_is_200_megapixels_and_pil_guard_is_off(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_pixels_limit() == DEFAULT_MAX_PIXELS == 200_000_000
    under = tmp_path / "under.png"  # 196 MP: above PIL's own 179 MP error threshold
    under.write_bytes(bomb_png(14_000, 14_000))
    assert image_size(under, verify=False) == (14_000, 14_000)
    over = tmp_path / "over.png"  # 225 MP
    over.write_bytes(bomb_png(15_000, 15_000))
    with pytest.raises(ValueError, match="200,000,000-pixel decompression-bomb guard"):
        image_size(over, verify=False)


def test_small_guard_on_a_real_image_by_argument_and_environment(tmp_path, monkeypatch):
    p = tmp_path / "real.jpeg"
    p.write_bytes(image_bytes(20, 10))  # 200 pixels
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    with pytest.raises(ValueError, match=r"real\.jpeg: .*20x10 = 200 pixels, above the 199-pixel"):
        read_image(p, max_pixels=199)
    assert read_image(p, max_pixels=200).shape == (10, 20, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "150")  # read at call time
    with pytest.raises(ValueError, match="above the 150-pixel"):
        read_image(p)
    with pytest.raises(ValueError, match="above the 150-pixel"):
        image_size(p)
    assert image_size(p, max_pixels=1000) == (20, 10)  # the argument wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "1_000")
    assert read_image(p).shape == (10, 20, 3)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5e9"])
def test_bad_guard_setting_is_a_clear_error(tmp_path, monkeypatch, value):
    p = tmp_path / "real.jpeg"
    p.write_bytes(image_bytes(8, 8))
    monkeypatch.setenv(MAX_PIXELS_ENV, value)
    msg = f"{MAX_PIXELS_ENV}={value!r}: must be a positive whole number of pixels"
    with pytest.raises(ValueError, match=re.escape(msg)):
        read_image(p)
    with pytest.raises(ValueError, match=re.escape("max_pixels='0'")):
        image_size(p, max_pixels=0)


# ---------------------------------------------------------------- a prediction batch


def _bad_files(folder: Path) -> dict[str, str]:
    """Write every unreadable image; returns file name -> what its error must say."""
    data = image_bytes(96, 80)
    png = image_bytes(96, 80, fmt="PNG")
    files = {
        "zero.jpeg": (b"", "empty file (0 bytes)"),
        "cut-jpeg.jpeg": (data[: len(data) // 2], "corrupt or truncated image"),
        "cut-png.png": (png[: len(png) // 2], "corrupt or truncated image"),
        "bomb.png": (bomb_png(), "decompression-bomb guard"),
        "text.jpg": (b"hello, not an image\n" * 20, "not a readable image"),
    }
    for name, (blob, _) in files.items():
        (folder / name).write_bytes(blob)
    return {name: msg for name, (_, msg) in files.items()}


def test_batch_with_one_good_image_and_every_bad_one(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "good.jpeg").write_bytes(image_bytes(96, 80, seed=3))
    bad = _bad_files(imgs)
    out = tmp_path / "out"
    settings = PredictConfig(tile=64, overlap=16, score_threshold=0.0, max_per_image=5)
    s = predict(
        settings.model_copy(update={"overlays": True, "num_workers": 1}), checkpoint, [imgs], out
    )["images"]
    assert s["images"] == 1 and s["problems"] == len(bad) and s["skipped"] == 0
    problems = {p["file"]: p["error"] for p in json.loads((out / "problems.json").read_text())}
    assert set(problems) == set(bad)
    for name, msg in bad.items():
        assert name in problems[name] and msg in problems[name], name
        assert problems[name].count(name) == 1, problems[name]  # the path is given once
    # the good image has every output, the bad ones none (not even a temporary file)
    for sub, ext in (("xml", "xml"), ("geojson", "geojson"), ("overlays", "png")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"good.{ext}"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    preds = read_predictions(out / "predictions.csv")
    assert list(preds) == ["good.jpeg"] and len(preds["good.jpeg"].scores) == 5
    root = read_voc(out / "xml" / "good.xml")
    assert (root.width, root.height) == (96, 80)


def test_batch_of_convertible_images_including_1x1(checkpoint, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rgb = solid_rgb(40, 48)
    (imgs / "png-as.jpeg").write_bytes(encoded(rgb, "PNG"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    (imgs / "rgba.png").write_bytes(encoded(rgba, "PNG"))
    (imgs / "gray.png").write_bytes(encoded(rgb[..., 0], "PNG"))
    cmyk = np.dstack([255 - rgb, np.zeros(rgb.shape[:2], np.uint8)])
    (imgs / "cmyk.jpeg").write_bytes(encoded(cmyk, "JPEG", "CMYK"))
    (imgs / "gray16.png").write_bytes(encoded(rgb[..., 1].astype(np.uint16) * 257, "PNG"))
    (imgs / "dot.png").write_bytes(encoded(np.array([[[1, 2, 3]]], np.uint8), "PNG"))
    out = tmp_path / "out"
    settings = PredictConfig(tile=64, overlap=16, score_threshold=0.0, max_per_image=3)
    s = predict(settings.model_copy(update={"num_workers": 0}), checkpoint, [imgs], out)["images"]
    assert s["problems"] == 0 and s["images"] == 6
    assert json.loads((out / "problems.json").read_text()) == []
    for name in ("png-as", "rgba", "gray", "cmyk", "gray16"):
        ann = read_voc(out / "xml" / f"{name}.xml")
        assert (ann.width, ann.height) == (48, 40), name
    dot = read_voc(out / "xml" / "dot.xml")
    assert (dot.width, dot.height) == (1, 1)
    # boxes on a 1x1 image are clipped to it, and slivers under 1 px dropped
    assert (dot.boxes[:, 2:] <= 1).all() and (dot.boxes[:, :2] >= 0).all()


# ---------------------------------------------------------------- predictions CSV

HEADER = "image,x1,y1,x2,y2,score\n"
GOOD = "a.jpeg,1,2,30,40,0.9\n"


@pytest.mark.parametrize(
    "row, problem",
    [
        ("a.jpeg,nan,2,30,40,0.9", "NaN or infinite value"),
        ("a.jpeg,1,NaN,30,40,0.9", "NaN or infinite value"),
        ("a.jpeg,1,2,30,40,nan", "NaN or infinite value"),
        ("a.jpeg,1,2,inf,40,0.9", "NaN or infinite value"),
        ("a.jpeg,1,2,30,-inf,0.9", "NaN or infinite value"),
        ("a.jpeg,30,2,1,40,0.9", "box with x2 <= x1 or y2 <= y1"),
        ("a.jpeg,1,40,30,2,0.9", "box with x2 <= x1 or y2 <= y1"),
        ("a.jpeg,5,5,5,9,0.9", "box with x2 <= x1 or y2 <= y1"),
        ("a.jpeg,1,2,30,40,-0.1", "score -0.1 outside [0, 1]"),
        ("a.jpeg,1,2,30,40", "5 field(s) but the header has 6"),
        ("a.jpeg,1,2,30,40,0.9,extra", "7 field(s) but the header has 6"),
        ("a.jpeg,1,2,30,forty,0.9", "x1,y1,x2,y2,score must be numbers"),
    ],
)
def test_bad_prediction_row_names_file_and_line(tmp_path, row, problem):
    p = tmp_path / "p.csv"
    p.write_text(HEADER + GOOD + "\n" + row + "\n" + GOOD)  # blank line 3: the bad row is line 4
    with pytest.raises(PredictionsError) as info:
        read_predictions(p)
    assert str(info.value) == f"{p}:4: {problem}"


@pytest.mark.parametrize(
    "header, missing",
    [
        ("image,x1,y1,x2,y2", "score"),
        ("image,x1,y1", "x2, y2, score"),
        ("name,x1,y1,x2,y2,score", "image"),
        ("Image,X1,y1,x2,y2,score", "image, x1"),  # names are case-sensitive
    ],
)
def test_missing_columns_are_named(tmp_path, header, missing):
    p = tmp_path / "p.csv"
    p.write_text(header + "\na.jpeg,1,2,30,40,0.9\n")
    with pytest.raises(PredictionsError) as info:
        read_predictions(p)
    assert str(info.value) == (
        f"{p}: missing column(s) {missing}; expected image,x1,y1,x2,y2,score, found {header}"
    )


def test_empty_and_header_only_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(PredictionsError, match=r"empty\.csv: empty file, no header line"):
        read_predictions(empty)
    only = tmp_path / "only.csv"
    only.write_text(HEADER)
    assert read_predictions(only) == {}


def test_unknown_image_is_an_error_naming_line_and_image(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text(HEADER + GOOD + "b.jpeg,1,2,30,40,0.5\n")
    assert set(read_predictions(p, images={"a.jpeg", "b.jpeg"})) == {"a.jpeg", "b.jpeg"}
    with pytest.raises(PredictionsError) as info:
        read_predictions(p, images=["a.jpeg", "c.jpeg"])
    assert str(info.value) == f"{p}:3: image 'b.jpeg' is not in the dataset evaluated (2 image(s))"


def test_evaluate_refuses_predictions_for_images_not_in_the_data(make_root, tmp_path):
    from pathodet.eval.evaluate import run_evaluate

    root = make_root(pos={"s1_a": (64, 64, [(5, 5, 20, 20)])}, neg={"s2_b": (64, 64, None)})
    p = tmp_path / "p.csv"
    p.write_text(HEADER + "s1_a.jpeg,5,5,20,20,0.9\nnot-there.jpeg,1,1,5,5,0.5\n")
    with pytest.raises(PredictionsError) as info:
        run_evaluate(root, p, tmp_path / "ev")
    assert str(info.value).startswith(f"{p}:3: image 'not-there.jpeg' is not in the dataset")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_two_images_with_one_stem_are_refused_before_anything_is_written(tmp_path):
    """``a.jpeg`` and ``a.png`` would both write ``xml/a.xml``: refused, naming both."""
    from pathodet.predict.images import list_images

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpeg").write_bytes(image_bytes(40, 40, seed=1))
    (imgs / "a.png").write_bytes(image_bytes(40, 40, seed=2, fmt="PNG"))
    (imgs / "b.png").write_bytes(image_bytes(40, 40, seed=3, fmt="PNG"))
    with pytest.raises(
        ValueError, match=r"two images named a\.\*: .*a\.(jpeg|png) and .*a\.(png|jpeg)"
    ):
        list_images([imgs])
    (imgs / "a.png").unlink()
    assert [p.name for p in list_images([imgs])] == ["a.jpeg", "b.png"]
