"""Real-world slide inputs: pixel size as a measurement, DICOM, strip TIFFs, broken files.

Expected values come from the files' own headers read with other tools (OpenSlide's
properties, pydicom's frames, tifffile's writer), or from arithmetic written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pathodet.predict.config import PredictConfig, SlideConfig, for_checkpoint
from pathodet.predict.loader import image_input_from_file
from pathodet.predict.pipeline import predict
from pathodet.predict.plan import plan_slide
from pathodet.predict.reader import Slide, SlideError, resolve_mpp

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "slides"
needs_slides = pytest.mark.skipif(
    not (SLIDES / "cmu-1-small-region.svs").is_file(),
    reason=f"the real slides of ../shared/realdata/slides are absent ({SLIDES})",
)


# ---- 1. pixel size: a measurement, not a guess ----------------------------------------------


@pytest.mark.parametrize(
    ("props", "override", "mpp", "source", "words"),
    [
        ({"openslide.mpp-x": "0.499", "openslide.mpp-y": "0.499"}, None, 0.499, "metadata", None),
        # 72 dpi, a converter's default: 25400 µm / 72 = 352.8 µm/px; the 20x objective wins
        ({"openslide.mpp-x": "352.77", "openslide.mpp-y": "352.77",
          "openslide.objective-power": "20"}, None, 0.5, "objective-power", ["352.77", "20x"]),
        ({"openslide.mpp-x": "1000", "openslide.mpp-y": "1000"}, None, 0.25, "assumed",
         ["1000", "assuming 0.25"]),
        # Aperio with AppMag only (no MPP): 20x is 0.5 µm/px, not the assumed 40x
        ({"aperio.AppMag": "20"}, None, 0.5, "objective-power", ["no pixel size", "20x"]),
        ({"aperio.AppMag": "40"}, None, 0.25, "objective-power", ["40x"]),
        ({}, None, 0.25, "assumed", ["no pixel size", "no objective power"]),
        # --mpp overrides even a plausible file value
        ({"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}, 0.5, 0.5, "override", ["--mpp"]),
    ],
)  # fmt: skip
def test_pixel_size_source_order(props, override, mpp, source, words):
    got, src, note = resolve_mpp(Path("s.svs"), props, assumed_mpp=0.25, mpp=override)
    assert got == pytest.approx((mpp, mpp)) and src == source
    if words is None:
        assert note is None
    else:
        assert note.startswith("s.svs") and all(w in note for w in words), note


@pytest.mark.parametrize("bad", [25.0, 0.01])
def test_an_implausible_override_is_refused(bad):
    with pytest.raises(SlideError, match="--mpp"):
        resolve_mpp(Path("s.svs"), {}, 0.25, mpp=bad)
    with pytest.raises(ValueError, match="plausible"):
        PredictConfig(mpp=bad)


def test_a_tiled_tiff_with_a_converter_default_resolution_is_not_trusted(tmp_path):
    """1 pixel per 0.1 cm (1000 µm/px), as a converter writes: the windows would be planned
    as 32-px reads each magnified 30-fold; the pixel size is replaced and the note says so."""
    path = tmp_path / "converted.tif"
    rgb = np.full((1024, 1024, 3), 200, np.uint8)
    tifffile.imwrite(path, rgb, tile=(256, 256), resolution=(10, 10),
                     resolutionunit="CENTIMETER", photometric="rgb")  # fmt: skip
    with Slide(path) as s:
        raw = float(s.info.properties.get("openslide.mpp-x", "nan"))
        assert raw == pytest.approx(1000.0)  # what OpenSlide reports from the tags
        assert s.info.mpp == (0.25, 0.25) and s.info.mpp_source == "assumed"
        assert "1000" in s.info.mpp_note
    with Slide(path, mpp=0.5) as s:
        assert s.info.mpp == (0.5, 0.5) and s.info.mpp_source == "override"


@needs_slides
@pytest.mark.parametrize("target", [0.5, 0.25])
def test_the_20x_cmu_slide_is_detected_at_the_models_pixel_size(target):
    """cmu-1-small-region.svs is 0.499 µm/px (OpenSlide's openslide.mpp-x, AppMag 20): the
    windows must reach the detector at the model's µm/px whichever it was trained at."""
    with Slide(SLIDES / "cmu-1-small-region.svs") as s:
        info = s.info
    assert info.mpp == (0.499, 0.499) and info.mpp_source == "metadata"
    assert info.objective_power == 20
    mask = np.ones((10, 10), bool)
    plan = plan_slide(info, mask, 300.0, 512, 64, SlideConfig(target_mpp=target))
    detected_mpp = info.level_mpp(plan.level) * plan.read / plan.tile
    assert abs(detected_mpp / target - 1) < 0.01
    # a model trained at 0.25 µm/px (40x) sees each 20x pixel twice: 512 / (0.499/0.25)
    assert plan.read == (512 if target == 0.5 else round(512 / (0.499 / 0.25)))


def test_images_take_mpp_and_default_to_the_training_pixel_size():
    from pathodet.training.config import load_config

    trained = load_config(None, ["data.scale=0.5", "data.mpp=0.25", "data.tiling.tile_size=512",
                           "data.tiling.stride=256"])  # fmt: skip  # a 20x model of 40x images
    default = for_checkpoint(PredictConfig(), trained)
    assert default.slides.target_mpp == 0.5 and default.detection_scale == 0.5
    at_20x = for_checkpoint(PredictConfig(mpp=0.5), trained)  # 20x images for a 20x model
    assert at_20x.detection_scale == 1.0
    at_40x = for_checkpoint(PredictConfig(mpp=0.2), trained)
    assert at_40x.detection_scale == pytest.approx(0.4)
    with pytest.raises(ValueError, match="not both"):
        PredictConfig(mpp=0.5, scale=0.5)


# ---- 8. real slide formats ---------------------------------------------------------------------


@needs_slides
def test_the_dicom_instance_reads_as_its_frames_say():
    """A lone DICOM WSI instance that OpenSlide refuses ("Couldn't get image flavor") reads
    through pydicom; a region across four frames equals the frames pasted by hand."""
    from pydicom.pixels import pixel_array

    path = SLIDES / "small_dicom.dcm"
    with Slide(path) as s:
        info = s.info
        assert info.vendor == "dicom" and info.level_dimensions == ((3236, 2638),)
        # 15 mm x 15 mm over 3236 x 2638 pixels: 4.6 x 5.7 µm/px, no scanner's
        assert info.mpp_source == "assumed" and "4.63535" in info.mpp_note
        got = s.read(450, 470, 0, 100, 60)
        edge = s.read(3200, 2600, 0, 100, 100)
    frames = {k: pixel_array(str(path), index=k) for k in (0, 1, 7, 8)}  # 7 frames per row
    top = np.concatenate([frames[0], frames[1]], axis=1)
    bottom = np.concatenate([frames[7], frames[8]], axis=1)
    want = np.concatenate([top, bottom], axis=0)[470:530, 450:550]
    np.testing.assert_array_equal(got, want)
    last = pixel_array(str(path), index=41)  # the bottom-right frame: columns 3000.., rows 2500..
    np.testing.assert_array_equal(edge[:38, :36], last[100:138, 200:236])
    assert (edge[38:] == 255).all() and (edge[:, 36:] == 255).all()  # beyond the matrix: glass


@needs_slides
def test_broken_svs_is_a_named_problem():
    with pytest.raises(SlideError, match="broken.svs"):
        Slide(SLIDES / "broken.svs")


def dark_spots(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """A pixel rule: one 24-px box around the darkest pixel of each window (score 0.9)."""
    out = []
    for img in images:
        gray = img.mean(0)
        k = int(gray.argmin())
        y, x = divmod(k, gray.shape[1])
        box = torch.tensor([[x - 12, y - 12, x + 12, y + 12]], dtype=torch.float32)
        out.append({"boxes": box, "scores": torch.tensor([0.9])})
    return out


@needs_slides
def test_every_real_slide_runs_through_predict(tmp_path):
    config = PredictConfig(tile=512, overlap=64, slides=SlideConfig(target_mpp=0.5))
    inputs = sorted(SLIDES.glob("*.svs")) + [SLIDES / "small_dicom.dcm"]
    summary = predict(config, None, inputs, tmp_path, detector=dark_spots, model_id={"rule": 1})
    records = {r["slide"]: r for r in summary["slides"]["slides"]}
    assert records["broken.svs"]["status"] == "failed"
    assert "broken.svs" in records["broken.svs"]["error"]
    for name, vendor, source in [("cmu-1-small-region.svs", "aperio", "metadata"),
                                 ("tcga-cr-7395-01a-01-ts1.svs", "aperio", "assumed"),
                                 ("small_dicom.dcm", "dicom", "assumed")]:  # fmt: skip
        assert records[name]["status"] == "done", records[name]
        assert records[name]["vendor"] == vendor and records[name]["mpp_source"] == source
        s = json.loads((tmp_path / "slides" / Path(name).stem / "summary.json").read_text())
        assert s["slide"]["vendor"] == vendor and s["slide"]["mpp_source"] == source
        assert s["windows"]["read"] >= 1
    cmu = json.loads((tmp_path / "slides" / "cmu-1-small-region" / "summary.json").read_text())
    assert cmu["slide"]["mpp"] == [0.499, 0.499]
    assert cmu["detection_level"] == 0 and abs(cmu["detection_mpp"] - 0.499) < 1e-9


# ---- 6. size guards on every path ---------------------------------------------------------------


@pytest.fixture
def strip_tiff(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2000, 1500, 3), dtype=np.uint8)
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, rgb, rowsperstrip=64, compression="zlib", photometric="rgb")
    return path, rgb


def test_a_strip_tiff_over_the_guard_is_read_strip_by_strip(strip_tiff, monkeypatch):
    path, rgb = strip_tiff
    monkeypatch.setenv("PATHODET_MAX_PIXELS", str(1_000_000))  # the image has 3,000,000
    with Slide(path) as s:
        assert s.info.vendor == "strip-tiff" and s.info.level_dimensions == ((1500, 2000),)
        np.testing.assert_array_equal(s.read(700, 100, 0, 300, 250), rgb[100:350, 700:1000])
        corner = s.read(1400, 1950, 0, 200, 100)
    np.testing.assert_array_equal(corner[:50, :100], rgb[1950:, 1400:])
    assert (corner[50:] == 255).all() and (corner[:, 100:] == 255).all()
    # without --slides the image path refuses it, naming the way that works
    with pytest.raises(ValueError, match="--slides"):
        image_input_from_file(path, 1.0, 512, 64, "reflect")


def test_a_tiff_in_one_strip_over_the_guard_is_refused_with_the_reason(tmp_path, monkeypatch):
    path = tmp_path / "one-strip.tif"
    tifffile.imwrite(path, np.zeros((1200, 1000, 3), np.uint8), rowsperstrip=1200)
    monkeypatch.setenv("PATHODET_MAX_PIXELS", str(1_000_000))
    with pytest.raises(SlideError, match=r"one-strip.tif.*cannot be read in parts"):
        Slide(path)


def test_a_png_over_the_guard_is_refused_on_the_slide_path(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (1200, 1000), "white").save(path)
    monkeypatch.setenv("PATHODET_MAX_PIXELS", str(1_000_000))
    with pytest.raises(SlideError, match=r"big.png.*1,000,000-pixel guard"):
        Slide(path)
