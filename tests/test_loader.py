"""The one window loader: plain images as one-level slides, opened once per worker."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathodet.predict.loader import (
    Windows,
    by_input,
    image_input_from_file,
    raise_errors,
    window_batches,
)
from pathodet.predict.reader import SlideError


def _jpeg_free_png(path, rgb):
    Image.fromarray(rgb).save(path)  # PNG: lossless, so pixels can be compared exactly
    return path


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = _jpeg_free_png(tmp_path / "a.png", rng.integers(0, 256, (300, 410, 3), dtype=np.uint8))
    b = _jpeg_free_png(tmp_path / "b.png", rng.integers(0, 256, (130, 90, 3), dtype=np.uint8))
    return a, b


def test_image_windows_are_crops_of_the_whole_image_resized_as_training_resizes(images):
    """Independent reference: PIL's box filter on the whole image, numpy's symmetric pad."""
    a, _ = images
    inp = image_input_from_file(a, 0.5, 128, 32, "reflect")
    small = np.asarray(Image.open(a).resize((205, 150), Image.Resampling.BOX))
    plan = inp.plan
    padded = np.pad(small, ((0, max(0, plan.tile_h - 150)), (0, max(0, plan.tile_w - 205)),
                            (0, 0)), mode="symmetric")  # fmt: skip
    assert plan.size0 == (410, 300) and (plan.fx, plan.fy) == (2.0, 2.0)
    ds = Windows([inp], [(0, i) for i in range(len(plan.windows))])
    assert len(ds) == len(plan.windows) > 1
    for k in range(len(ds)):
        x, y = plan.windows[k]
        item = ds[k]
        want = padded[y : y + plan.tile_h, x : x + plan.tile_w]
        np.testing.assert_array_equal(item["hwc"].numpy(), want)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unreadable_image_is_an_error_batch_and_the_others_are_read(images, tmp_path,
                                                                      num_workers):  # fmt: skip
    a, b = images
    bad = tmp_path / "truncated.png"
    data = a.read_bytes()
    bad.write_bytes(data[: len(data) // 3])  # the header says 410x300; the pixels stop early
    inputs = [image_input_from_file(p, 1.0, 64, 16, "reflect") for p in (a, bad, b)]
    idx = [range(len(i.plan.windows)) for i in inputs]
    batches = window_batches(inputs, idx, batch_size=3, num_workers=num_workers)
    seen = {}
    for j, group in by_input(batches):
        group = list(group)
        assert all(g["input"] == j for g in group)  # a batch never mixes inputs
        seen[j] = group
    assert sorted(seen) == [0, 1, 2]
    assert all("error" not in g for g in seen[0] + seen[2])
    got = [i for g in seen[0] for i in g["index"].tolist()]
    assert got == list(idx[0])  # every window of the good image, in order
    errors = [g["error"] for g in seen[1] if "error" in g]
    assert errors and all(e.startswith(str(bad)) for e in errors)
    with pytest.raises(SlideError, match="truncated.png"):
        list(raise_errors(seen[1]))


def test_a_file_that_is_no_image_is_refused_at_the_header_naming_it(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        image_input_from_file(bad, 1.0, 64, 16, "reflect")
