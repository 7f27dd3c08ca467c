"""Sliding windows: arithmetic at the borders, box clipping, lazy tiles."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathodet.data import tiling
from pathodet.data.digestpath import ImageRecord
from pathodet.data.samples import Sample, load_sample
from pathodet.data.tiling import TileDataset, boxes_in_window, tile_grid, window_starts

# ---------------------------------------------------------------- window arithmetic


def check_starts(starts: list[int], length: int, tile: int, stride: int) -> None:
    """Every property the windows along one axis must have, checked by brute force."""
    assert starts[0] == 0
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False)), "strictly increasing"
    covered = np.zeros(length, bool)
    for s in starts:
        end = min(s + tile, length)
        assert 0 <= s < end <= length, "window inside the image"
        covered[s:end] = True
    assert covered.all(), "every pixel covered"
    if length <= tile:
        assert starts == [0]
        return
    assert all(s + tile <= length for s in starts), "full windows only, no padding"
    assert starts[-1] + tile == length, "last window ends at the border"
    gaps = np.diff(starts)
    assert (gaps[:-1] == stride).all(), "regular spacing by the stride"
    assert 0 < gaps[-1] <= stride if len(gaps) else True
    # minimal: the regular starts that fit, plus one aligned window only if needed
    regular = len(range(0, length - tile + 1, stride))
    assert len(starts) == regular + (0 if (length - tile) % stride == 0 else 1)


@pytest.mark.parametrize(
    "length, expected",
    [
        (1, [0]),
        (799, [0]),
        (800, [0]),
        (801, [0, 1]),
        (1099, [0, 299]),
        (1100, [0, 300]),
        (1101, [0, 300, 301]),
        (2000, [0, 300, 600, 900, 1200]),
        (2003, [0, 300, 600, 900, 1200, 1203]),
        (2010, [0, 300, 600, 900, 1200, 1210]),
    ],
)
def test_window_starts_paper_setting(length, expected):
    starts = window_starts(length, 800, 300)
    assert starts == expected
    check_starts(starts, length, 800, 300)


def test_window_starts_properties_many_sizes():
    rng = np.random.default_rng(0)
    settings = [(800, 300), (800, 800), (512, 256), (100, 7), (64, 63), (5, 1), (1, 1), (300, 299)]
    for tile, stride in settings:
        lengths = {1, tile - 1, tile, tile + 1, tile + stride, tile + stride + 1, 2000, 2010}
        lengths |= set(rng.integers(1, 3000, 40).tolist())
        for length in sorted(v for v in lengths if v >= 1):
            check_starts(window_starts(length, tile, stride), length, tile, stride)


@pytest.mark.parametrize("tile, stride", [(0, 1), (1, 0), (-5, 3), (800, -300)])
def test_window_starts_rejects_non_positive(tile, stride):
    with pytest.raises(ValueError):
        window_starts(100, tile, stride)


@pytest.mark.parametrize("width, height", [(2000, 2000), (2010, 2003), (799, 2000), (801, 800), (50, 30)])  # fmt: skip
def test_tile_grid_covers_the_image_row_major(width, height):
    grid = tile_grid(width, height, 800, 300)
    assert grid.dtype == np.int64 and grid.shape[1] == 4
    xs, ys = window_starts(width, 800, 300), window_starts(height, 800, 300)
    assert len(grid) == len(xs) * len(ys)
    expected = [(x, y, min(x + 800, width), min(y + 800, height)) for y in ys for x in xs]
    assert [tuple(w) for w in grid.tolist()] == expected
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in grid:
        assert x2 - x1 == min(800, width) and y2 - y1 == min(800, height)
        covered[y1:y2, x1:x2] = True
    assert covered.all()


# ---------------------------------------------------------------- boxes through a window


def reference_window(boxes, window, min_visible):
    """Exact (rational) per-box reference of :func:`boxes_in_window`."""
    wx1, wy1, wx2, wy2 = (Fraction(float(v)) for v in window)
    out, index = [], []
    for i, row in enumerate(np.asarray(boxes, np.float32).tolist()):
        x1, y1, x2, y2 = (Fraction(v) for v in row)
        cx1, cy1, cx2, cy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
        inter = max(Fraction(0), cx2 - cx1) * max(Fraction(0), cy2 - cy1)
        area = (x2 - x1) * (y2 - y1)
        if inter > 0 and inter >= Fraction(min_visible) * area:
            out.append([float(cx1 - wx1), float(cy1 - wy1), float(cx2 - wx1), float(cy2 - wy1)])
            index.append(i)
    return np.asarray(out, np.float32).reshape(-1, 4), np.asarray(index, np.int64)


def test_boxes_in_window_matches_reference_on_random_boxes():
    rng = np.random.default_rng(5)
    for _ in range(150):
        width, height = int(rng.integers(300, 2100)), int(rng.integers(300, 2100))
        n = int(rng.integers(0, 60))
        x1 = rng.uniform(-20, width, n)
        y1 = rng.uniform(-20, height, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(0.5, 90, n), y1 + rng.uniform(0.5, 90, n)], 1)
        if rng.random() < 0.5:
            boxes = np.round(boxes)  # integer coordinates: many boxes exactly on tile edges
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        boxes = boxes.astype(np.float32)
        tile, stride = int(rng.choice([64, 200, 800])), int(rng.choice([32, 100, 300]))
        grid = tile_grid(width, height, tile, min(stride, tile))
        # the corner windows (border-aligned) and a few others
        picks = {0, len(grid) - 1, *rng.integers(0, len(grid), 6).tolist()}
        for window in grid[sorted(picks)]:
            for mv in (0.0, 0.25, 0.5, 1.0):
                got, idx = boxes_in_window(boxes, window, mv)
                ref, ref_idx = reference_window(boxes, window, mv)
                np.testing.assert_array_equal(idx, ref_idx)
                np.testing.assert_array_equal(got, ref)
                assert got.dtype == np.float32 and idx.dtype == np.int64


@pytest.mark.parametrize(
    "box, mv, expected",
    [
        ((90, 10, 110, 30), 0.5, (90, 10, 100, 30)),  # exactly half inside: kept
        ((90, 10, 110, 30), 0.51, None),
        ((90, 10, 110, 30), 0.0, (90, 10, 100, 30)),
        ((99, 10, 119, 30), 0.0, (99, 10, 100, 30)),  # 5% inside: kept with 0
        ((99, 10, 119, 30), 0.5, None),
        ((100, 10, 120, 30), 0.0, None),  # touches the edge from outside: no area inside
        ((-20, -20, 0, 0), 0.0, None),
        ((10, 10, 20, 20), 1.0, (10, 10, 20, 20)),  # fully inside
        ((95, 10, 101, 20), 1.0, None),
        ((-10, 90, 10, 110), 0.25, (0, 90, 10, 100)),  # corner: a quarter inside
        ((-10, 90, 10, 110), 0.26, None),
        ((-50, -50, 150, 150), 0.25, (0, 0, 100, 100)),  # covers the window: 1/4 of its area
    ],
)
def test_boxes_in_window_cases(box, mv, expected):
    got, idx = boxes_in_window(np.array([box], np.float32), (0, 0, 100, 100), mv)
    if expected is None:
        assert got.shape == (0, 4) and idx.shape == (0,)
    else:
        np.testing.assert_array_equal(got, [expected])
        np.testing.assert_array_equal(idx, [0])


def test_boxes_in_window_shifts_to_window_origin():
    boxes = np.array([[1090, 1095, 1110, 1105], [400, 500, 420.5, 530.25], [0, 0, 10, 10]], np.float32)  # fmt: skip
    got, idx = boxes_in_window(boxes, (300, 300, 1100, 1100), 0.25)
    np.testing.assert_array_equal(idx, [0, 1])
    np.testing.assert_array_equal(got, [[790, 795, 800, 800], [100, 200, 120.5, 230.25]])


def test_boxes_in_window_empty():
    got, idx = boxes_in_window(np.zeros((0, 4)), (0, 0, 10, 10))
    assert got.shape == (0, 4) and idx.shape == (0,)


# ---------------------------------------------------------------- lazy tile dataset


def coded_image(width: int, height: int) -> np.ndarray:
    """Every pixel tells where it is: R = x mod 256, G = y mod 256, B = high bits."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x // 256) * 16 + y // 256], -1).astype(np.uint8)


def png_sample(path: Path, width: int, height: int, boxes, attribute="AP") -> Sample:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(coded_image(width, height)).save(path)
    rec = ImageRecord(path, attribute, None, path.stem)
    return Sample(rec, width, height, np.asarray(boxes, np.float32).reshape(-1, 4))


def test_tile_dataset_items(tmp_path):
    a = png_sample(tmp_path / "a b.png", 150, 130, [(10, 10, 30, 30), (55, 60, 75, 90), (140, 120, 150, 130)])  # fmt: skip
    n = png_sample(tmp_path / "n.png", 64, 40, [], "NP")
    ds = TileDataset([a, n], tile=64, stride=24, min_visible=0.5)
    na = len(window_starts(150, 64, 24)) * len(window_starts(130, 64, 24))
    assert len(ds) == na + 1  # the 64x40 image is one (short) window
    assert ds.attributes() == ["AP"] * na + ["NP"]
    seen_empty_ap = False
    for k in range(len(ds)):
        item = ds[k]
        sample = a if k < na else n
        x1, y1, x2, y2 = item["window"].tolist()
        assert item["window"].dtype == np.int64
        np.testing.assert_array_equal(item["image"], coded_image(sample.width, sample.height)[y1:y2, x1:x2])  # fmt: skip
        ref, ref_idx = reference_window(sample.boxes, (x1, y1, x2, y2), 0.5)
        np.testing.assert_array_equal(item["boxes"], ref)
        np.testing.assert_array_equal(item["box_index"], ref_idx)
        assert item["attribute"] == sample.attribute
        assert item["name"] == sample.record.image.name
        if sample is a and len(item["boxes"]) == 0:
            seen_empty_ap = True  # an AP tile with no box is still AP
    assert seen_empty_ap
    assert ds[-1]["image"].shape == (40, 64, 3)


def test_tile_dataset_default_paper_sizes_without_reading():
    def blank(w, h):
        return Sample(ImageRecord(Path("/nonexistent/x.jpeg"), "AP", None, "x"), w, h, np.zeros((0, 4), np.float32))  # fmt: skip

    ds = TileDataset([blank(2000, 2000), blank(2010, 2003), blank(799, 801)])
    assert (ds.tile, ds.stride, ds.min_visible) == (800, 300, 0.5)
    assert len(ds) == 5 * 5 + 6 * 6 + 1 * 2  # constructing reads no image
    assert ds.refs[25].window == (0, 0, 800, 800) and ds.refs[25].sample == 1
    assert ds.refs[-1].window == (0, 1, 799, 801)
    with pytest.raises(ValueError, match="cannot decode"):
        ds[0]


def test_tile_dataset_reads_each_image_once_in_order(tmp_path, monkeypatch):
    samples = [png_sample(tmp_path / f"{i}.png", 100, 100, []) for i in range(3)]
    calls = []
    real = tiling.read_image

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(tiling, "read_image", counting)
    ds = TileDataset(samples, tile=40, stride=30, cache_images=1)
    assert calls == []  # lazy
    for k in range(len(ds)):
        ds[k]
    assert calls == [s.record.image for s in samples]
    ds[0]  # evicted by the cache of one image: read again
    assert len(calls) == 4


def test_tile_dataset_detects_changed_image(tmp_path):
    s = png_sample(tmp_path / "a.png", 100, 100, [])
    ds = TileDataset([s], tile=50, stride=50)
    Image.fromarray(coded_image(90, 100)).save(s.record.image)
    with pytest.raises(ValueError, match="decoded size 90x100"):
        ds[0]


@pytest.mark.parametrize("mv", [-0.1, 1.01])
def test_tile_dataset_rejects_bad_min_visible(mv):
    with pytest.raises(ValueError, match="min_visible"):
        TileDataset([], min_visible=mv)


def test_tile_dataset_from_a_loaded_jpeg(tmp_path):
    from conftest import write_image, write_voc_text

    img = write_image(tmp_path / "x y.jpeg", 300, 250)
    # the first box overhangs the 300 px image by 10 of its 29.5 px: clipped to 280.5..300
    xml = write_voc_text(tmp_path / "x y.xml", [(280.5, 10, 310, 40), (5, 5, 25, 25)], width=300, height=250)  # fmt: skip
    sample = load_sample(ImageRecord(img, "AP", xml, "x"))
    ds = TileDataset([sample], tile=200, stride=100)
    assert len(ds) == 2 * 2
    first = ds[0]
    assert first["image"].shape == (200, 200, 3)
    np.testing.assert_array_equal(first["boxes"], [[5, 5, 25, 25]])
    second = ds[1]  # window (100, 0, 300, 200): holds the clipped box 280.5..300
    np.testing.assert_array_equal(second["window"], [100, 0, 300, 200])
    np.testing.assert_array_equal(second["boxes"], [[180.5, 10, 200, 40]])
    np.testing.assert_array_equal(second["box_index"], [0])
    assert ds[3]["boxes"].shape == (0, 4)  # window (100, 50, 300, 250): nothing
    assert ds[3]["attribute"] == "AP"


def test_tiles_at_half_scale_hold_the_resized_image_and_boxes(tmp_path):
    """scale=0.5: the 40x image is tiled at 20x; a box keeps its place on the resized pixels."""

    from pathodet.data.images import rescale_image

    rgb = np.full((400, 600, 3), 255, np.uint8)
    rgb[100:140, 200:240] = 0  # a dark 40 x 40 cell
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    box = np.array([[200, 100, 240, 140]], np.float32)
    sample = Sample(ImageRecord(path, "AP", None, "s"), 600, 400, box)
    tiles = TileDataset([sample], tile=128, stride=128, scale=0.5)
    assert (tiles.samples[0].width, tiles.samples[0].height) == (300, 200)
    assert len(tiles) == 3 * 2  # windows of the 300 x 200 image
    items = [tiles[k] for k in range(len(tiles)) if len(tiles[k]["boxes"])]
    assert len(items) == 1
    item = items[0]
    x1, y1 = item["window"][:2]
    np.testing.assert_allclose(item["boxes"][0] + [x1, y1, x1, y1], [100, 50, 120, 70])
    bx1, by1, bx2, by2 = (item["boxes"][0]).astype(int)
    assert item["image"][by1:by2, bx1:bx2].max() == 0  # the box covers the dark cell
    assert rescale_image(rgb, 0.5).shape == (200, 300, 3)
    assert rescale_image(rgb, 1.0) is rgb
    with pytest.raises(ValueError, match="positive"):
        rescale_image(rgb, 0.0)
