"""Whole-image prediction: seam-free merging, tile-size invariance on a trained checkpoint,
the output files, resuming, bad images; and ``pathodet evaluate`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from pathodet.core.io import atomic_write_image
from pathodet.data.predictions import read_predictions, write_predictions
from pathodet.data.synth import synthesize_image, write_synthetic_dataset
from pathodet.data.tiling import window_starts
from pathodet.eval.matching import iou_matrix
from pathodet.model.retinanet import FrozenDetector
from pathodet.predict.config import PredictConfig
from pathodet.predict.pipeline import detect_image, predict
from pathodet.predict.windows import core_bounds
from pathodet.training.checkpoint import load_detector
from pathodet.training.config import load_config
from pathodet.training.train import train

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.mark.parametrize("length, tile, overlap", [(2000, 512, 128), (2000, 1024, 128),
                                                   (700, 256, 64), (1000, 1000, 0)])  # fmt: skip
def test_cores_partition_the_axis_and_keep_a_margin(length, tile, overlap):
    starts = window_starts(length, tile, tile - overlap)
    cores = core_bounds(starts, tile)
    centres = np.arange(length) + 0.5
    owners = np.zeros(length, int)
    for lo, hi in cores:
        owners += (centres >= lo) & (centres < hi)
    assert (owners == 1).all(), "every pixel belongs to exactly one core"
    for s, (lo, hi) in zip(starts, cores, strict=True):
        # an interior core border is at least overlap/2 inside the window
        if np.isfinite(lo):
            assert lo - s >= overlap / 2 - 1e-9
        if np.isfinite(hi):
            assert s + tile - hi >= overlap / 2 - 1e-9


def blob_detector(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """A pixel-rule detector: one box per connected dark region *as seen in the window*, so
    a cell cut by the window border gives a partial box, as a real detector's would."""
    from scipy import ndimage

    out = []
    for img in images:
        dark = (img.mean(0) < 0.5).numpy()
        lab, _ = ndimage.label(dark)
        boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(lab)]
        b = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
        out.append({"boxes": b, "scores": torch.full((len(b),), 0.9)})
    return out


def squares_image(seed: int = 0, size: int = 2000, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """White image with ``n`` black squares (8-60 px, apart from each other) and their boxes."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 255, np.uint8)
    boxes: list[list[int]] = []
    while len(boxes) < n:
        s = int(rng.integers(8, 61))
        x, y = (int(v) for v in rng.integers(0, size - s, 2))
        if any(x < b[2] + 4 and b[0] < x + s + 4 and y < b[3] + 4 and b[1] < y + s + 4
               for b in boxes):  # fmt: skip
            continue
        boxes.append([x, y, x + s, y + s])
        rgb[y : y + s, x : x + s] = 0
    return rgb, np.asarray(boxes, float)


@pytest.mark.parametrize("tile, overlap", [(2016, 0), (1024, 128), (512, 64), (256, 64),
                                           (128, 64)])  # fmt: skip
def test_seams_leave_neither_duplicates_nor_partial_boxes(tile, overlap):
    """With overlap >= the largest cell, every cell comes out once, whole, at any tile size."""
    rgb, truth = squares_image()
    got = detect_image(blob_detector, rgb, PredictConfig(tile=tile, overlap=overlap))
    assert len(got.boxes) == len(truth)
    order = lambda b: b[np.lexsort((b[:, 1], b[:, 0]))]  # noqa: E731
    np.testing.assert_allclose(order(got.boxes), order(truth))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A detector trained briefly on synthetic data (focal, 40 steps)."""
    base = tmp_path_factory.mktemp("pred")
    data = base / "data"
    write_synthetic_dataset(data, positive=4, negative=4, size=512, seed=3, images_per_slide=1)
    sets = {
        "data.root": data, "data.num_folds": 4, "data.tiling.tile_size": 256,
        "data.tiling.stride": 128, "model.fpn_channels": 32, "loss.name": "focal",
        "train.epochs": 1, "train.batch_size": 4, "train.augment.crop": 192,
        "train.precision": "auto", "train.num_workers": 0, "train.max_steps_per_epoch": 40,
        "train.lr": 3e-4, "train.checkpoint_every": 0, "train.val_tiles": 2,
    }  # fmt: skip
    cfg = load_config(REPO / "configs/focal.yaml", [f"{k}={v}" for k, v in sets.items()])
    train(cfg, base / "run", progress=False, log=lambda m: None)
    return base / "run" / "last.pt"


@pytest.fixture(scope="module")
def big_image() -> np.ndarray:
    return synthesize_image(np.random.default_rng(21), 2000, 2000, "AP").rgb


def _contained_pairs(boxes: np.ndarray) -> int:
    """Pairs where most of the smaller box lies inside the other: what a seam leaves."""
    if len(boxes) < 2:
        return 0
    iw = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(
        boxes[:, None, 0], boxes[None, :, 0]
    )
    ih = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(
        boxes[:, None, 1], boxes[None, :, 1]
    )
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    frac = inter / np.minimum(area[:, None], area[None, :])
    np.fill_diagonal(frac, 0)
    return int((np.triu(frac) > 0.6).sum())


def frozen(model, config: PredictConfig):
    """The production window detector of ``model`` at ``config``'s thresholds."""
    inference = config.window_inference(model.cfg.inference)
    return FrozenDetector(model, CPU, config.precision, inference).detect


def test_same_boxes_whatever_the_tile_size(trained, big_image):
    model, _ = load_detector(trained)
    low = dict(score_threshold=0.001, precision="auto", max_per_image=5000)
    whole_cfg = PredictConfig(tile=2016, overlap=0, **low)
    whole = detect_image(frozen(model, whole_cfg), big_image, whole_cfg)
    assert len(whole.scores) >= 200, "the detector should fire somewhere"
    t_hi = float(np.sort(whole.scores)[::-1][199])  # the 200 most confident detections
    t_lo = 0.7 * t_hi
    for tile, overlap in ((1024, 128), (512, 128)):
        cfg = PredictConfig(tile=tile, overlap=overlap, **low)
        tiled = detect_image(frozen(model, cfg), big_image, cfg)
        for a, b in ((whole, tiled), (tiled, whole)):
            strong = a.boxes[a.scores >= t_hi]
            other = b.boxes[b.scores >= t_lo]
            found = (iou_matrix(strong, other).max(axis=1) >= 0.5).mean()
            assert found >= 0.9, f"tile {tile}: only {found:.0%} of confident boxes found again"
        # no seam duplicates: about as many nested pairs as the untiled run has. A window's
        # border context moves a few boxes (412 -> 422 pairs at 512 px in fp32); without
        # the core rule every cell in an overlap (25-40% of the image) would be doubled
        n_whole = _contained_pairs(whole.boxes[whole.scores >= t_lo])
        n_tiled = _contained_pairs(tiled.boxes[tiled.scores >= t_lo])
        assert n_tiled <= 1.05 * n_whole + 2, f"tile {tile}: {n_tiled} nested pairs vs {n_whole}"
        assert (tiled.boxes[:, 2] <= 2000).all() and (tiled.boxes[:, 3] <= 2000).all()


def test_predict_writes_csv_xml_geojson_and_resumes(trained, tmp_path):
    rng = np.random.default_rng(4)
    imgs = tmp_path / "imgs"
    for i in range(2):
        atomic_write_image(imgs / f"case {i}.jpeg", synthesize_image(rng, 300, 400, "AP").rgb)
    (imgs / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "out"
    settings = PredictConfig(tile=256, overlap=64, score_threshold=0.01)
    s = predict(
        settings.model_copy(update={"overlays": True, "num_workers": 1}), trained, [imgs], out
    )["images"]
    assert s["images"] == 2 and s["problems"] == 1 and s["skipped"] == 0
    problems = json.loads((out / "problems.json").read_text())
    assert problems[0]["file"] == "broken.jpeg" and "broken.jpeg" in problems[0]["error"]
    preds = read_predictions(out / "predictions.csv")
    for i in range(2):
        name = f"case {i}.jpeg"
        p = preds.get(name)
        n = 0 if p is None else len(p.scores)
        root = ET.parse(out / "xml" / f"case {i}.xml").getroot()
        objs = root.findall("object")
        assert len(objs) == n
        assert all(o.findtext("name") == "ring_cell_cancer" for o in objs)
        assert root.findtext("size/width") == "400" and root.findtext("size/height") == "300"
        geo = json.loads((out / "geojson" / f"case {i}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and len(geo["features"]) == n
        if n:
            f = geo["features"][0]
            assert f["properties"]["objectType"] == "detection"
            assert 0 <= f["properties"]["measurements"]["score"] <= 1
            assert (p.boxes[:, 2] <= 400).all() and (p.boxes[:, 3] <= 300).all()
        assert (out / "overlays" / f"case {i}.png").is_file()
    # same settings again: every readable image is skipped, the CSV is the same
    before = (out / "predictions.csv").read_text()
    again = predict(settings.model_copy(update={"num_workers": 0}), trained, [imgs], out)["images"]
    assert again["skipped"] == 2 and (out / "predictions.csv").read_text() == before


def test_evaluate_cli_with_checkpoint(trained, tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, positive=2, negative=2, size=300, seed=8, images_per_slide=1)
    out = tmp_path / "ev"
    res = subprocess.run([sys.executable, "-m", "pathodet", "evaluate", "--data", str(data),
                          "--checkpoint", str(trained), "--out", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_positive_images"] == 2 and m["num_negative_images"] == 2
    assert set(m["froc_points"]) == {"1", "2", "4", "8", "16", "32"}
    assert "true_recall" in m  # synthetic data carries full-annotations/
    assert (out / "froc.png").stat().st_size > 1000 and "FROC" in (out / "report.md").read_text()
    # a predictions file naming an image that is not in the data is refused
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x1,y1,x2,y2,score\nnot-there.jpeg,1,1,5,5,0.5\n")
    res = subprocess.run([sys.executable, "-m", "pathodet", "evaluate", "--data", str(data),
                          "--predictions", str(bad), "--out", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "not-there.jpeg" in res.stderr


def test_boxes_clipped_to_a_sliver_at_the_image_edge_are_dropped(tmp_path):
    """Regression: a detection running past the bottom edge, clipped to 0.004 px high, was
    written to predictions.csv as y1 = y2 = 1009.00, which evaluation then refused."""
    h, w = 97, 100  # padded to 128 x 128: detections may land in the padding

    def edge_detector(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        boxes = torch.tensor(
            [
                [10.0, h - 0.004, 40.0, 120.0],  # a sliver once clipped
                [50.0, h - 7.0, 80.0, 120.0],  # 7 px high once clipped
                [90.0, 10.0, 125.0, 40.0],
            ]
        )  # 10 px wide once clipped
        return [{"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7])} for _ in images]

    rgb = np.zeros((h, w, 3), np.uint8)
    got = detect_image(edge_detector, rgb, PredictConfig(tile=128, overlap=0))
    np.testing.assert_allclose(
        got.boxes, [[50.0, h - 7.0, 80.0, h], [90.0, 10.0, w, 40.0]], atol=1e-5
    )
    # and what is written can be read back
    write_predictions(tmp_path / "p.csv", {"a.png": got})
    back = read_predictions(tmp_path / "p.csv")["a.png"]
    assert len(back.scores) == 2


def test_detection_at_half_scale_returns_boxes_in_the_images_pixels():
    """At scale 0.5 the detector sees a 1000 px image; boxes come back in 2000 px pixels.
    Squares of even side at even positions halve exactly, so the boxes are the truth's."""
    rgb = np.full((2000, 2000, 3), 255, np.uint8)
    truth = np.array([[100, 200, 160, 260], [1500, 40, 1540, 120], [998, 1400, 1060, 1450]])
    for x1, y1, x2, y2 in truth:
        rgb[y1:y2, x1:x2] = 0
    seen = []

    def recording(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        seen.append(images.shape[-1])
        return blob_detector(images)

    got = detect_image(recording, rgb, PredictConfig(tile=1024, overlap=0, scale=0.5))
    assert seen == [1024]  # one padded window of the 1000 px image, not four of 2000
    order = lambda b: b[np.lexsort((b[:, 1], b[:, 0]))]  # noqa: E731
    np.testing.assert_allclose(order(got.boxes), order(truth.astype(float)))
