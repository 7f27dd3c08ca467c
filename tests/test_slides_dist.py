"""Slide inference shared by 2 CPU processes under torchrun equals the single-process result.

The worker half of this file runs under ``torchrun`` (``python -m torch.distributed.run``)
with a pixel-rule detector, so that the comparison is exact: both ways of sharing (slides
among ranks, and one slide's windows among ranks with a final merge) must write the same
detections as one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pathodet.data.predictions import read_predictions
from pathodet.data.synth.slide import write_synthetic_slide
from pathodet.predict.config import PredictConfig, SlideConfig
from pathodet.predict.pipeline import predict

REPO = Path(__file__).resolve().parents[1]
SLIDE_SETTINGS = SlideConfig(target_mpp=0.25, count_threshold=0.3)
SETTINGS = PredictConfig(tile=512, overlap=64, batch_size=2, num_workers=0, slides=SLIDE_SETTINGS)


def nuclei_detector(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """One box per connected dark region in the window (nuclei), scored by its darkness."""
    from scipy import ndimage

    out = []
    for img in images:
        gray = img.mean(0).numpy()
        lab, _ = ndimage.label(gray < 0.45)
        boxes, scores = [], []
        for k, s in enumerate(ndimage.find_objects(lab), start=1):
            boxes.append([s[1].start, s[0].start, s[1].stop, s[0].stop])
            scores.append(1.0 - float(gray[lab == k].mean()))
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                    "scores": torch.tensor(scores, dtype=torch.float32)})  # fmt: skip
    return out


def worker(out: str, split: str, *slides: str) -> None:  # runs under torchrun
    from pathodet.core.dist import init_distributed, shutdown

    torch.set_num_threads(1)
    dist = init_distributed(torch.device("cpu"))
    config = SETTINGS.model_copy(
        update={"slides": SLIDE_SETTINGS.model_copy(update={"split": split})}
    )
    predict(config, None, [Path(s) for s in slides], Path(out), detector=nuclei_detector,
            model_id={"test": 1}, all_slides=True, dist=dist)  # fmt: skip
    shutdown()


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("dist-slides")
    paths = []
    for seed, (w, h) in enumerate([(3000, 2200), (2048, 2048)]):  # rank 1 gets slide 1
        p = base / f"slide{seed}.tiff"
        write_synthetic_slide(p, w, h, seed=seed, tissue_fraction=0.5)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def single(slides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    summary = predict(SETTINGS, None, slides, out, detector=nuclei_detector, model_id={"test": 1},
                      all_slides=True)["slides"]  # fmt: skip
    assert summary["done"] == len(slides), summary
    return out


def _torchrun(out: Path, split: str, slides: list[Path]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(out), split, *map(str, slides)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _detections(out: Path, slide: Path) -> np.ndarray:
    preds = read_predictions(out / "slides" / slide.stem / "detections.csv")
    p = preds[slide.name]
    rows = np.column_stack([p.boxes, p.scores])
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("split", ["slides", "tiles"])
def test_two_processes_equal_one(slides, single, tmp_path, split):
    res = _torchrun(tmp_path, split, slides)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "slides.json").read_text())
    assert [r["slide"] for r in summary["slides"]] == sorted(s.name for s in slides)
    assert summary["done"] == len(slides) and summary["failed"] == 0
    for slide in slides:
        one, two = _detections(single, slide), _detections(tmp_path, slide)
        assert len(one) > 20  # the detector finds nuclei, some of them on window overlaps
        np.testing.assert_array_equal(two, one)
        s1 = json.loads((single / "slides" / slide.stem / "summary.json").read_text())
        s2 = json.loads((tmp_path / "slides" / slide.stem / "summary.json").read_text())
        assert s2["src_count"] == s1["src_count"]
        assert s2["windows"] == s1["windows"]
    # nothing of the sharing is left behind
    assert not list(tmp_path.glob("slides.rank*.json"))
    assert not list(tmp_path.glob("slides/*/parts"))


def test_merge_removes_the_seam_duplicates(slides, single):
    """Guard: without the slide-wide merge, windows' overlaps would report cells twice, so the
    equality above is not trivially met by per-rank output."""
    from pathodet.predict.loader import SlideInput, raise_errors, window_batches
    from pathodet.predict.slides import survey
    from pathodet.predict.windows import detect_windows, merge

    _, _, plan = survey(slides[0], SLIDE_SETTINGS, SETTINGS.tile, SETTINGS.overlap)
    slide = SlideInput(slides[0], plan)
    batches = window_batches([slide], [range(len(plan.windows))], SETTINGS.batch_size, 0)
    boxes, scores = detect_windows(nuclei_detector, raise_errors(batches), plan)
    keep = merge(boxes, scores, SETTINGS.nms_iou)
    assert len(keep) < len(boxes)
    assert len(keep) == len(_detections(single, slides[0]))


if __name__ == "__main__":
    worker(*sys.argv[1:])
