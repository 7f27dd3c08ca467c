"""ONNX export and the ONNX Runtime engine against torch fp32, on a tiny untrained model.

The reference is torch itself, run here in fp32 on the same weights: the graph must give
the same head outputs, and ``pathodet predict`` the same detections, within a stated
tolerance (float32 reassociation in ONNX Runtime's kernels: 1e-4 on logits).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pathodet.cli import app
from pathodet.data.predictions import read_predictions
from pathodet.data.synth.compose import synthesize_image
from pathodet.eval.matching import iou_matrix
from pathodet.model.onnx import HeadGraph, feature_sizes
from pathodet.model.retinanet import SRCRetinaNet
from pathodet.predict.config import PredictConfig
from pathodet.predict.onnx_engine import OnnxDetector, OnnxError, quantize_int8, read_metadata
from pathodet.predict.pipeline import predict
from pathodet.training.checkpoint import save_checkpoint
from pathodet.training.config import load_config

LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny detector (32-channel FPN) with weights spread so that scores vary."""
    cfg = load_config(None, ["model.fpn_channels=32", "model.norm=bn", "data.scale=0.5",
                             "data.mpp=0.25", "data.tiling.tile_size=256",
                             "data.tiling.stride=128"])  # fmt: skip
    torch.manual_seed(0)
    model = SRCRetinaNet(cfg.model).eval()
    with torch.no_grad():  # the head's init (std 0.01, prior 0.01) gives near-constant scores
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight)
                torch.nn.init.zeros_(m.bias)
        model.head.regression_head.bbox_reg.weight.mul_(0.05)  # boxes near their anchors
    path = tmp_path_factory.mktemp("onnx") / "tiny.pt"
    save_checkpoint(path, {"config": cfg.model_dump_json(), "model": model.state_dict()})
    return path, model, cfg


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-out") / "tiny.onnx"
    res = CliRunner().invoke(app, ["export", str(checkpoint[0]), "--out", str(path)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["onnx"] == str(path)
    return path


@pytest.fixture
def export_calls(exported, checkpoint, monkeypatch) -> list[int]:
    """``export_onnx`` of the module's checkpoint served from the file ``exported`` wrote.

    The export itself (about 20 s of ``torch.export`` on this CPU) is what ``exported``
    tests, through the CLI, on the same checkpoint; the tests using this fixture test what
    is built around it. Returns the traced tile size of each call."""
    import pathodet.model.onnx as onnx_module

    calls: list[int] = []

    def from_the_fixture(model, path, train_config, tile=512) -> Path:  # noqa: ANN001
        assert train_config == json.loads(checkpoint[2].model_dump_json())  # what it exports
        want = checkpoint[1].state_dict()
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
        calls.append(tile)
        shutil.copyfile(exported, path)
        return Path(path)

    monkeypatch.setattr(onnx_module, "export_onnx", from_the_fixture)
    return calls


def test_feature_sizes_are_those_of_the_network(checkpoint):
    _, model, _ = checkpoint
    for h, w in [(256, 256), (320, 192), (100, 70)]:
        with torch.no_grad():
            feats = model.backbone(torch.zeros(1, 3, h, w))
        assert [tuple(f.shape[-2:]) for f in feats.values()] == feature_sizes(h, w)


def test_metadata_says_pixel_size_normalisation_and_config(exported, checkpoint):
    meta = read_metadata(exported)
    assert float(meta["mpp"]) == pytest.approx(0.25 / 0.5)  # data.mpp / data.scale
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["pathodet_config"])["model"]["fpn_channels"] == 32


@pytest.mark.parametrize("size", [(256, 256), (384, 320)])
def test_onnxruntime_gives_torchs_head_outputs(exported, checkpoint, size):
    _, model, _ = checkpoint
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, deltas = HeadGraph(model)(images)
        ref = model(images)
    got = OnnxDetector(exported, threads=1)(images)
    assert torch.equal(got.anchors, ref.anchors) and got.level_sizes == ref.level_sizes
    assert (got.cls_logits - logits).abs().max() < LOGIT_TOL
    assert (got.bbox_deltas - deltas).abs().max() < LOGIT_TOL
    assert logits.std() > 1.0  # the scores spread: a real comparison, not of constants


def test_predict_with_onnxruntime_matches_torch(exported, checkpoint, tmp_path):
    """Same detections through `pathodet predict`: every box of one engine has a box of the
    other at IoU >= 0.99 with a score within 1e-3, for 99% of the boxes at least."""
    rgb = synthesize_image(np.random.default_rng(5), 600, 520, "AP").rgb
    Image.fromarray(rgb).save(tmp_path / "img.png")
    config = PredictConfig(overlap=64, precision="fp32", score_threshold=0.3, num_workers=0)
    runs = {}
    for engine, model in (("torch", checkpoint[0]), ("onnxruntime", exported)):
        out = tmp_path / engine
        predict(config, model, [tmp_path / "img.png"], out)
        runs[engine] = read_predictions(out / "predictions.csv")["img.png"]
    a, b = runs["torch"], runs["onnxruntime"]
    assert len(a.boxes) > 20
    iou = iou_matrix(a.boxes, b.boxes)
    close = (iou >= 0.99) & (np.abs(a.scores[:, None] - b.scores[None, :]) <= 1e-3)
    assert close.any(axis=1).mean() >= 0.99 and close.any(axis=0).mean() >= 0.99
    assert abs(len(a.boxes) - len(b.boxes)) <= max(1, len(a.boxes) // 100)


def test_a_checkpoint_runs_through_onnxruntime_exported_on_the_fly(
    checkpoint, exported, export_calls, tmp_path
):
    """A .pt with ``--engine onnxruntime`` is exported once, at the training tile size, kept
    in ``out/.onnx/`` for a rerun, and gives the detections of the .onnx file itself."""
    rgb = synthesize_image(np.random.default_rng(6), 300, 300, "NP").rgb
    Image.fromarray(rgb).save(tmp_path / "a.png")
    config = PredictConfig(engine="onnxruntime", precision="fp32", score_threshold=0.3)
    out = tmp_path / "out"
    summary = predict(config, checkpoint[0], [tmp_path / "a.png"], out)
    assert summary["images"]["images"] == 1
    assert export_calls == [256]  # data.tiling.tile_size of the checkpoint
    assert len(list((out / ".onnx").glob("*.onnx"))) == 1  # kept for a rerun
    state = json.loads((out / "predict.json").read_text())
    assert state["settings"]["predict"]["engine"] == "onnxruntime"
    (out / "predict.json").unlink()  # the image runs again; the export is reused
    predict(config, checkpoint[0], [tmp_path / "a.png"], out)
    assert export_calls == [256]
    predict(config, exported, [tmp_path / "a.png"], tmp_path / "direct")
    rows = (out / "predictions.csv").read_text()
    assert rows == (tmp_path / "direct" / "predictions.csv").read_text()
    assert len(rows.splitlines()) > 1  # a header and detections (the weights are spread)


def test_int8_copy_keeps_the_metadata_and_follows_fp32(exported, tmp_path):
    """Static int8 quantization calibrated on windows of real-looking images: a smaller file
    with the same metadata, whose logits follow fp32's (correlation > 0.9 on new images)."""
    paths = []
    for k in range(2):
        Image.fromarray(synthesize_image(np.random.default_rng(10 + k), 520, 520, "AP").rgb).save(
            tmp_path / f"c{k}.png"
        )
        paths.append(tmp_path / f"c{k}.png")
    q = quantize_int8(exported, tmp_path / "tiny.int8.onnx", paths, windows=4)
    assert q.stat().st_size < 0.5 * exported.stat().st_size
    meta = read_metadata(q)
    assert meta["pathodet_config"] == read_metadata(exported)["pathodet_config"]
    assert meta["quantization"] == "int8 static, 4 windows"
    rgb = synthesize_image(np.random.default_rng(30), 256, 256, "AP").rgb
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    a = OnnxDetector(exported, threads=1)(images).cls_logits.flatten()
    b = OnnxDetector(q, threads=1)(images).cls_logits.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    assert not torch.equal(a, b)  # it is another graph, not the fp32 one renamed


def test_a_file_that_is_no_pathodet_onnx_is_refused_by_name(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(OnnxError, match="x.onnx"):
        OnnxDetector(bad)
    Image.new("RGB", (64, 64), "white").save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="x.onnx.*--engine onnxruntime"):
        predict(PredictConfig(engine="torch"), bad, [tmp_path / "a.png"], tmp_path / "out")


# the deliberately broken slide below is tried by every reader, PIL's TIFF reader too
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
def test_bench_slide_engines_agree_and_report_area_per_minute(checkpoint, export_calls, tmp_path):
    """`pathodet bench slide` with torch fp32 and ONNX Runtime fp32 on a small synthetic slide:
    one row per engine, the same detections (the parity tested above, through the slide
    pipeline), and minutes per cm² equal to wall time over the tissue area it reports."""
    from pathodet.data.synth.slide import write_synthetic_slide

    slide = tmp_path / "small.tiff"
    write_synthetic_slide(slide, 1536, 1024, seed=3, tissue_fraction=0.5)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00 not a slide")
    res = CliRunner().invoke(app, ["bench", "slide", "--out", str(tmp_path / "out"), "--sizes", "",
                                   "--slides", str(broken), "--slides", str(slide),
                                   "--checkpoint", str(checkpoint[0]),
                                   "--engines", "torch-fp32,onnxruntime-fp32"])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "out" / "slide-speed.json").read_text())
    # the broken slide fails for each engine, named, and the good one is still measured
    assert [(f["slide"], f["engine"]) for f in result["failed"]] == [
        ("broken.svs", "torch-fp32"),
        ("broken.svs", "onnxruntime-fp32"),
    ]
    assert all("broken.svs: cannot open" in f["error"] for f in result["failed"])
    assert export_calls == [256]  # one export serves every slide
    rows = {r["engine"]: r for r in result["rows"]}
    assert sorted(rows) == ["onnxruntime-fp32", "torch-fp32"]
    for r in rows.values():
        assert r["slide"] == "small.tiff" and r["level0"] == [1536, 1024]
        assert r["detection_mpp"] == pytest.approx(0.5)  # data.mpp 0.25 / data.scale 0.5
        assert 0 < r["tissue_cm2"] <= 1536 * 1024 * (0.25e-4) ** 2
        assert r["min_per_cm2"] == pytest.approx(r["wall_s"] / 60 / r["tissue_cm2"])
        assert 0 < r["forward_s"] < r["wall_s"] and r["peak_rss_gb"] > 0
    assert rows["torch-fp32"]["detections"] > 0
    assert rows["torch-fp32"]["detections"] == rows["onnxruntime-fp32"]["detections"]
    md = (tmp_path / "out" / "slide-speed.md").read_text()
    assert md.count("| small.tiff (1536 x 1024, 0.25) |") == 2


def test_bench_slide_refuses_an_unknown_engine(tmp_path):
    res = CliRunner().invoke(app, ["bench", "slide", "--out", str(tmp_path), "--sizes", "",
                                   "--engines", "torch-fp16"])  # fmt: skip
    assert res.exit_code != 0
    assert "torch-fp16" in res.output and "onnxruntime-int8" in res.output
