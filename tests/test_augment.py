"""Tile augmentation: boxes follow the pixels through crop, flips and rotations; HED jitter.

Images are built so that the pixels themselves say where they came from (solid rectangles of
known colours, or a coordinate code in the red and green channels), so every expected box is
read off the output image and compared with the boxes the augmentation reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from pathodet.data.augment import AugmentConfig, TileAugment, hed_jitter

WHITE = np.array([255, 255, 255], np.uint8)

# Solid rectangles on a white 160x160 image: (x1, y1, x2, y2) and a colour each.
RECTS = np.array(
    [[10, 12, 40, 30], [60, 8, 84, 44], [100, 70, 150, 90], [20, 90, 44, 150], [70, 110, 130, 130]],
    np.float32,
)
COLOURS = np.array(
    [[220, 20, 20], [20, 160, 20], [30, 30, 220], [200, 200, 0], [150, 0, 150]], np.uint8
)


def rect_image(size: int = 160) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    for (x1, y1, x2, y2), c in zip(RECTS.astype(int), COLOURS, strict=True):
        img[y1:y2, x1:x2] = c
    return img


def rect_item() -> dict:
    return {
        "image": rect_image(),
        "boxes": RECTS.copy(),
        "box_index": np.arange(len(RECTS), dtype=np.int64) + 40,  # not 0..K-1 on purpose
        "attribute": "AP",
        "name": "slide_a",
        "window": np.array([300, 600, 460, 760], np.int64),
    }


def coded_image(h: int, w: int) -> np.ndarray:
    """Red = column, green = row, blue = 0: each pixel names its own input position."""
    assert h <= 255 and w <= 255
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    img[..., 1] = np.arange(h, dtype=np.uint8)[:, None]
    return img


def bbox_of(mask: np.ndarray) -> np.ndarray:
    """``x1, y1, x2, y2`` (pixel edges) of the true pixels of a mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def full_cfg(crop: int = 96, **kw) -> AugmentConfig:
    return AugmentConfig(crop=crop, hflip=True, vflip=True, rotate90=True, **kw)


# ---------------------------------------------------------------- boxes follow the pixels


def test_boxes_follow_coloured_rectangles():
    aug = TileAugment(full_cfg(96, min_visible=0.5))
    item = rect_item()
    areas = (RECTS[:, 2] - RECTS[:, 0]) * (RECTS[:, 3] - RECTS[:, 1])
    orientations = set()
    kept_total = dropped_total = 0
    for seed in range(60):
        out = aug(item, seed)
        img = out["image"]
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert out["boxes"].dtype == np.float32 and out["boxes"].shape == (len(out["box_index"]), 4)
        assert out["box_index"].dtype == np.int64
        idx = out["box_index"].tolist()
        assert len(set(idx)) == len(idx), "no box reported twice"
        assert set(idx) <= set(range(40, 45))
        for k in range(len(RECTS)):
            mask = (img == COLOURS[k]).all(axis=-1)
            visible = mask.sum() / areas[k]
            if 40 + k not in idx:
                # dropped: less than half of it stays in the crop (allow the exact boundary)
                assert visible <= 0.5 + 1e-6, f"seed {seed}: rect {k} {visible:.2f} visible"
                dropped_total += visible > 0
                continue
            kept_total += 1
            assert visible >= 0.5 - 1e-6, f"seed {seed}: rect {k} kept at {visible:.2f}"
            box = out["boxes"][idx.index(40 + k)]
            # the reported box is exactly the rectangle's pixels in the output image
            np.testing.assert_allclose(box, bbox_of(mask), atol=1e-3)
            x1, y1, x2, y2 = np.round(box).astype(int)
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
            region = img[y1:y2, x1:x2]
            assert (region == COLOURS[k]).all(axis=-1).mean() > 0.99
            if visible == 1.0:
                orientations.add((x2 - x1, y2 - y1, k))
    assert kept_total > 60 and dropped_total > 0, "the seeds exercise both keeping and dropping"
    # rectangle 2 is 50x20: rotations show it both lying and standing
    assert {(w, h) for w, h, k in orientations if k == 2} >= {(50, 20), (20, 50)}


def symmetry(out_image: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Input-pixel steps for one step right and one step down in a coded output image.

    Also checks the output is a rigid motion of the input: the steps are unit steps and
    the same everywhere (no resampling, no shear).
    """
    o = out_image.astype(int)
    col, row = o[..., 0], o[..., 1]
    dx_r, dy_r = col[:, 1:] - col[:, :-1], row[:, 1:] - row[:, :-1]
    dx_d, dy_d = col[1:, :] - col[:-1, :], row[1:, :] - row[:-1, :]
    step_r = (int(dx_r[0, 0]), int(dy_r[0, 0]))
    step_d = (int(dx_d[0, 0]), int(dy_d[0, 0]))
    assert (dx_r == step_r[0]).all() and (dy_r == step_r[1]).all()
    assert (dx_d == step_d[0]).all() and (dy_d == step_d[1]).all()
    assert abs(step_r[0]) + abs(step_r[1]) == 1 and abs(step_d[0]) + abs(step_d[1]) == 1
    return step_r, step_d


def is_mirror(sym: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    """A reflection (determinant -1) rather than a rotation."""
    (a, b), (c, d) = sym
    return a * d - b * c < 0


def test_default_config_moves_pixels_rigidly_through_all_eight_symmetries():
    # the default: horizontal flip and rotations by 90 degrees, no vertical flip
    aug = TileAugment(AugmentConfig(crop=64))
    img = coded_image(120, 120)
    boxes = np.array([[30, 30, 50, 40]], np.float32)
    seen = set()
    for seed in range(64):
        out = aug({"image": img, "boxes": boxes, "box_index": np.array([0])}, seed)
        seen.add(symmetry(out["image"]))
        o = out["image"].astype(int)
        inside = (o[..., 0] >= 30) & (o[..., 0] < 50) & (o[..., 1] >= 30) & (o[..., 1] < 40)
        n = inside.sum()  # of 200 pixels; exactly 100 is the boundary case (kept)
        if n > 100:
            assert out["box_index"].tolist() == [0]
            np.testing.assert_allclose(out["boxes"][0], bbox_of(inside), atol=1e-3)
        elif n < 100:
            assert out["box_index"].tolist() == []
    # one flip and four rotations generate the 8 symmetries of the square
    assert len(seen) == 8


def test_hflip_and_vflip_together_give_mirror_images():
    aug = TileAugment(full_cfg(64))
    img = coded_image(120, 120)
    empty = {"boxes": np.zeros((0, 4), np.float32), "box_index": np.zeros(0, np.int64)}
    seen = {symmetry(aug({"image": img} | empty, seed)["image"]) for seed in range(64)}
    assert any(is_mirror(sym) for sym in seen), f"only rotations: {sorted(seen)}"
    assert len(seen) == 8


def test_flip_does_not_depend_on_crop_position():
    aug = TileAugment(AugmentConfig(crop=64, hflip=True, vflip=False, rotate90=False))
    img = coded_image(200, 200)  # crop rows start anywhere in 0 .. 136
    empty = {"boxes": np.zeros((0, 4), np.float32), "box_index": np.zeros(0, np.int64)}
    table = np.zeros((2, 2), int)
    for seed in range(200):
        o = aug({"image": img} | empty, seed)["image"].astype(int)
        flipped = o[0, 1, 0] < o[0, 0, 0]
        upper = o[0, 0, 1] < 68
        table[int(flipped), int(upper)] += 1
    # independent choices put about 50 seeds in each cell; coupled ones leave two empty
    assert (table >= 20).all(), f"flip x upper-half counts:\n{table}"


@pytest.mark.parametrize("min_visible", [0.25, 0.5, 0.75])
def test_crop_clips_or_drops_boxes_by_visible_fraction(min_visible):
    # 50 tall, 100 wide, crop 50: the crop spans all rows and columns x0 .. x0 + 50
    aug = TileAugment(
        AugmentConfig(crop=50, hflip=False, vflip=False, rotate90=False, min_visible=min_visible)
    )
    img = coded_image(50, 100)
    boxes = np.array(
        [[5, 2, 25, 12], [30, 5, 70, 15], [42, 20, 58, 30], [60, 30, 97, 45], [0, 40, 100, 48]],
        np.float32,
    )
    checked = set()
    for seed in range(80):
        out = aug({"image": img, "boxes": boxes, "box_index": np.arange(5)}, seed)
        x0 = int(out["image"][0, 0, 0])
        assert int(out["image"][0, 0, 1]) == 0
        checked.add(x0)
        expected = {}
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            lo, hi = max(x1, x0), min(x2, x0 + 50)
            frac = max(hi - lo, 0) / (x2 - x1)
            if frac >= min_visible - 1e-9:  # exactly min_visible is kept
                expected[k] = [lo - x0, y1, hi - x0, y2]
        got = dict(zip(out["box_index"].tolist(), out["boxes"].tolist(), strict=True))
        for k in range(5):
            assert (k in got) == (k in expected), f"crop at x={x0}: box {k}"
            if k in expected:
                np.testing.assert_allclose(got[k], expected[k], atol=1e-3)
    assert len(checked) > 20, "many crop positions tried"


def test_box_exactly_at_min_visible_is_kept():
    aug = TileAugment(AugmentConfig(crop=50, hflip=False, vflip=False, rotate90=False))
    img = coded_image(50, 100)
    # with the crop at x0 = 50, each box has exactly half its width (and area) inside
    boxes = np.array([[40, 0, 60, 10], [30, 20, 70, 30], [45, 35, 55, 45]], np.float32)
    for seed in range(2000):
        out = aug({"image": img, "boxes": boxes, "box_index": np.arange(3)}, seed)
        if int(out["image"][0, 0, 0]) == 50:
            break
    else:
        pytest.fail("no seed put the crop at x = 50")
    assert out["box_index"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(
        out["boxes"], [[0, 0, 10, 10], [0, 20, 20, 30], [0, 35, 5, 45]], atol=1e-3
    )


def test_min_visible_zero_never_yields_empty_boxes():
    aug = TileAugment(
        AugmentConfig(crop=50, hflip=False, vflip=False, rotate90=False, min_visible=0.0)
    )
    img = coded_image(50, 100)
    boxes = np.array([[0, 0, 10, 10], [60, 20, 70, 30], [20, 35, 40, 45]], np.float32)
    seen = set()
    for seed in range(400):
        out = aug({"image": img, "boxes": boxes, "box_index": np.arange(3)}, seed)
        x0 = int(out["image"][0, 0, 0])
        seen.add(x0)
        b = out["boxes"]
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        assert (w > 1e-3).all() and (h > 1e-3).all(), f"crop at x={x0}: {b.tolist()}"
    assert 10 in seen, "the crop edge touched box 0 for some seed"


# ---------------------------------------------------------------- padding


@pytest.mark.parametrize("rotate", [False, True])
def test_small_image_is_padded_with_white_and_keeps_its_boxes(rotate):
    aug = TileAugment(AugmentConfig(crop=64, hflip=True, vflip=True, rotate90=rotate))
    img = coded_image(40, 50)  # blue 0 marks image pixels; the padding is white
    boxes = np.array([[2, 3, 12, 20], [30, 25, 50, 40]], np.float32)
    offsets = set()
    for seed in range(20):
        out = aug({"image": img, "boxes": boxes, "box_index": np.array([7, 9])}, seed)
        o = out["image"]
        assert o.shape == (64, 64, 3) and o.dtype == np.uint8
        content = o[..., 2] == 0
        assert content.sum() == 40 * 50, "every image pixel is still there"
        assert (o[~content] == WHITE).all(), "padding is white"
        ys, xs = np.nonzero(content)
        offsets.add((int(xs.min()), int(ys.min())))
        assert out["box_index"].tolist() == [7, 9], "no box lost to padding"
        col, row = o[..., 0].astype(int), o[..., 1].astype(int)
        for (x1, y1, x2, y2), got in zip(boxes, out["boxes"], strict=True):
            mask = content & (col >= x1) & (col < x2) & (row >= y1) & (row < y2)
            np.testing.assert_allclose(got, bbox_of(mask), atol=1e-3)
    assert len(offsets) > 1, "the image lands at different places in the padded tile"


def test_image_narrower_than_crop_is_padded_and_cropped():
    aug = TileAugment(AugmentConfig(crop=64, hflip=False, vflip=False, rotate90=False))
    img = coded_image(100, 40)  # taller than the crop, narrower than it
    out = aug({"image": img, "boxes": np.zeros((0, 4), np.float32), "box_index": []}, 3)
    o = out["image"]
    assert o.shape == (64, 64, 3)
    content = o[..., 2] == 0
    assert content.sum() == 64 * 40, "all 40 columns, 64 of the rows"
    assert (o[~content] == WHITE).all()
    assert out["boxes"].shape == (0, 4) and out["box_index"].shape == (0,)


# ---------------------------------------------------------------- determinism and identity


def assert_same(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["box_index"], b["box_index"])


@pytest.mark.parametrize("hed", [0.0, 0.05])
def test_same_seed_same_output_in_any_order(hed):
    item = rect_item()
    aug = TileAugment(full_cfg(96, hed_jitter=hed))
    first = aug(item, 1234)
    aug(item, 7)
    aug(item, 99)
    assert_same(aug(item, 1234), first)
    # a fresh instance (another worker process) gives the same result too
    assert_same(TileAugment(full_cfg(96, hed_jitter=hed))(item, 1234), first)


def test_different_seeds_give_different_outputs():
    item = rect_item()
    aug = TileAugment(full_cfg(96))
    images = {aug(item, s)["image"].tobytes() for s in range(12)}
    assert len(images) >= 8


def test_hed_jitter_leaves_geometry_alone():
    item = rect_item()
    plain = TileAugment(full_cfg(96))
    jitter = TileAugment(full_cfg(96, hed_jitter=0.05))
    for seed in (0, 1, 2, 3):
        a, b = plain(item, seed), jitter(item, seed)
        np.testing.assert_array_equal(a["boxes"], b["boxes"])
        np.testing.assert_array_equal(a["box_index"], b["box_index"])
        assert a["image"].shape == b["image"].shape
    assert any(
        not np.array_equal(plain(item, s)["image"], jitter(item, s)["image"]) for s in range(4)
    )


def test_everything_off_is_the_identity():
    aug = TileAugment(AugmentConfig(crop=160, hflip=False, vflip=False, rotate90=False))
    item = rect_item()
    for seed in (0, 1, 2**31 - 2):
        out = aug(item, seed)
        np.testing.assert_array_equal(out["image"], item["image"])
        np.testing.assert_allclose(out["boxes"], RECTS, atol=1e-3)
        np.testing.assert_array_equal(out["box_index"], item["box_index"])


def test_input_item_is_not_modified_and_extra_keys_pass_through():
    item = rect_item()
    image, boxes, index = item["image"].copy(), item["boxes"].copy(), item["box_index"].copy()
    out = TileAugment(full_cfg(96, hed_jitter=0.05))(item, 5)
    assert out is not item
    assert set(out) == set(item)
    assert out["attribute"] == "AP" and out["name"] == "slide_a"
    np.testing.assert_array_equal(out["window"], [300, 600, 460, 760])
    np.testing.assert_array_equal(item["image"], image)
    np.testing.assert_array_equal(item["boxes"], boxes)
    np.testing.assert_array_equal(item["box_index"], index)
    assert out["image"].flags["C_CONTIGUOUS"]


def test_no_boxes():
    aug = TileAugment(full_cfg(96))
    item = rect_item() | {"boxes": np.zeros((0, 4), np.float32), "box_index": np.zeros(0)}
    out = aug(item, 0)
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32
    assert out["box_index"].shape == (0,) and out["box_index"].dtype == np.int64


def test_boxes_reaching_past_the_tile_are_clipped_first():
    # the input box pokes 10 px past the right edge; no crop, so it comes back clipped
    aug = TileAugment(AugmentConfig(crop=50, hflip=False, vflip=False, rotate90=False))
    img = coded_image(50, 50)
    out = aug({"image": img, "boxes": [[30, 10, 60, 20]], "box_index": [3]}, 0)
    assert out["box_index"].tolist() == [3]
    np.testing.assert_allclose(out["boxes"], [[30, 10, 50, 20]], atol=1e-3)


# ---------------------------------------------------------------- HED jitter


def tissue_image(seed: int = 0, size: int = 32) -> np.ndarray:
    """Pinks, purples and pale background in random patches: an H&E-like colour mix."""
    palette = np.array(
        [[230, 150, 190], [120, 70, 160], [240, 238, 242], [180, 100, 170], [200, 120, 180]],
        np.uint8,
    )
    rng = np.random.default_rng(seed)
    return palette[rng.integers(0, len(palette), (size, size))]


class FixedDraws:
    """Stands in for a Generator: ``uniform`` returns the given arrays in turn."""

    def __init__(self, *draws):
        self.draws = [np.asarray(d, np.float64) for d in draws]
        self.calls = []

    def uniform(self, low, high, size=None):
        self.calls.append((low, high, size))
        return self.draws.pop(0)


def test_hed_jitter_sigma_zero_returns_input():
    img = tissue_image()
    out = hed_jitter(img, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)


def test_hed_jitter_changes_image_but_keeps_shape_and_dtype():
    img = tissue_image()
    for seed in range(5):
        out = hed_jitter(img, 0.05, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img)
    # same generator state, same result
    a = hed_jitter(img, 0.05, np.random.default_rng(3))
    np.testing.assert_array_equal(a, hed_jitter(img, 0.05, np.random.default_rng(3)))


def test_hed_jitter_draws_scale_and_shift_within_sigma():
    rng = FixedDraws([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    hed_jitter(tissue_image(), 0.05, rng)
    (lo_a, hi_a, size_a), (lo_b, hi_b, size_b) = rng.calls
    assert (lo_a, hi_a, size_a) == pytest.approx((0.95, 1.05, 3))
    assert (lo_b, hi_b, size_b) == pytest.approx((-0.05, 0.05, 3))


def test_hed_jitter_unit_scale_zero_shift_is_near_identity():
    # alpha = 1, beta = 0 only converts to HED and back: tissue colours survive to rounding
    img = tissue_image()
    out = hed_jitter(img, 0.05, FixedDraws([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]))
    assert np.abs(out.astype(int) - img).max() <= 4


def test_hed_jitter_more_stain_never_brightens():
    """Beer-Lambert: raising any stain's optical density can only darken every channel."""
    img = tissue_image()
    draws = [
        ([1.05, 1.0, 1.0], [0.0, 0.0, 0.0]),
        ([1.0, 1.05, 1.0], [0.0, 0.02, 0.0]),
        ([1.05, 1.05, 1.05], [0.01, 0.01, 0.01]),
    ]
    identity = hed_jitter(img, 0.05, FixedDraws([1.0] * 3, [0.0] * 3)).astype(int)
    for alpha, beta in draws:
        out = hed_jitter(img, 0.05, FixedDraws(alpha, beta)).astype(int)
        assert (out <= identity + 1).all()
        assert (out < identity).any()
    # and white (no stain at all) stays white under pure scaling
    white = np.full((4, 4, 3), 255, np.uint8)
    out = hed_jitter(white, 0.05, FixedDraws([1.05, 0.95, 1.05], [0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(out, white)


def mean_abs_diff(img: np.ndarray, sigma: float, seeds: range) -> np.ndarray:
    return np.array(
        [
            np.abs(hed_jitter(img, sigma, np.random.default_rng(s)).astype(int) - img).mean()
            for s in seeds
        ]
    )


def test_hed_jitter_grows_with_sigma_and_small_sigma_stays_close():
    img = tissue_image()
    small, mid, large = (mean_abs_diff(img, sg, range(30)) for sg in (0.01, 0.05, 0.2))
    assert small.max() < 40
    assert small.mean() < mid.mean() < large.mean()


def test_hed_jitter_every_draw_stays_close():
    img = tissue_image()
    for s in range(50):
        out = hed_jitter(img, 0.05, np.random.default_rng(s))
        assert np.abs(out.astype(int) - img).mean() < 40, f"rng seed {s}"
