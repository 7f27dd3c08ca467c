"""PU purification and the PUDet student: class prior, pool, pseudo-labeled tiles, the
``pathodet purify`` pipeline and self-distillation in training (tiny, seconds each)."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import REPO, tiny  # tests/ is on sys.path (pytest rootdir conftest)

from pathodet.core.io import atomic_write_image
from pathodet.data.digestpath import FULL_DIR, NEG_DIR, POS_DIR, DatasetError
from pathodet.data.images import image_size
from pathodet.data.pseudo import PSEUDO_COLUMNS, SELECTED_COLUMNS, load_pseudo_samples, write_csv
from pathodet.data.synth import write_synthetic_dataset
from pathodet.data.tiling import boxes_in_window, tile_grid
from pathodet.data.voc import read_voc
from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import Criterion, Targets
from pathodet.model.config import AssignConfig
from pathodet.purify.classifier import PUConfig, estimate_prior
from pathodet.purify.pipeline import run_purify
from pathodet.purify.pool import pool_tiles, read_tile
from pathodet.training.batch import collate_pseudo
from pathodet.training.checkpoint import CheckpointError, load_checkpoint
from pathodet.training.config import DistillConfig, load_config
from pathodet.training.data import training_data
from pathodet.training.distill import Distiller, distill_losses
from pathodet.training.logs import read_metrics
from pathodet.training.train import train


# -- class prior -------------------------------------------------------------------------
def _oracle_h(p_p: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A P-vs-U classifier trained on balanced batches: h = p_p / (p_p + p)."""
    return p_p / (p_p + p)


def test_prior_estimate_is_exact_when_positives_and_negatives_do_not_overlap():
    # four kinds of tile; positives only on kinds 0-1, negatives only on 2-3
    p_p = np.array([0.6, 0.4, 0.0, 0.0])
    p_n = np.array([0.0, 0.0, 0.5, 0.5])
    pi = 0.3
    p = pi * p_p + (1 - pi) * p_n
    h = _oracle_h(p_p, p)
    # held-out positives drawn in exact proportion: 6 of kind 0, 4 of kind 1
    sample = np.repeat(h[:2], [6, 4])
    assert estimate_prior(sample) == pytest.approx(pi)


def test_prior_estimate_overshoots_by_the_negatives_mass_on_the_positive_support():
    p_p = np.array([0.5, 0.5, 0.0])
    p_n = np.array([0.0, 0.2, 0.8])  # 20% of negatives look like kind-1 positives
    pi = 0.25
    h = _oracle_h(p_p, pi * p_p + (1 - pi) * p_n)
    sample = np.repeat(h[:2], [5, 5])
    assert estimate_prior(sample) == pytest.approx(pi + (1 - pi) * 0.2)
    with pytest.raises(ValueError, match="held-out"):
        estimate_prior(np.zeros(0))


# -- pseudo-labeled tiles on disk ------------------------------------------------------
def _pseudo_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "purified"
    rgb = np.full((64, 64, 3), 200, np.uint8)
    for name in ("a", "b", "c"):
        atomic_write_image(folder / "tiles" / f"{name}.png", rgb)
    (folder / "tiles" / "bad.png").write_bytes(b"not a png")
    rows = [
        {"rank": 1, "tile": "tiles/a.png", "attribute": "unknown", "score": 3, "source": "s1.svs",
         "x": 0, "y": 0, "width": 64, "height": 64},
        {"rank": 2, "tile": "tiles/b.png", "attribute": "AP", "score": 2, "source": "i.png",
         "x": 64, "y": 0, "width": 64, "height": 64},
        {"rank": 3, "tile": "tiles/c.png", "attribute": "NP", "score": 1, "source": "n.png",
         "x": 0, "y": 0, "width": 64, "height": 64},
        {"rank": 4, "tile": "tiles/bad.png", "attribute": "unknown", "score": 0,
         "source": "s1.svs", "x": 64, "y": 64, "width": 64, "height": 64},
    ]  # fmt: skip
    write_csv(folder / "selected.csv", SELECTED_COLUMNS, rows)
    boxes = [("tiles/a.png", 1, 2, 20, 22), ("tiles/a.png", 30, 30, 50, 70),
             ("tiles/b.png", 5, 5, 15, 15), ("tiles/c.png", 1, 1, 9, 9)]  # fmt: skip
    write_csv(folder / "pseudo-labels.csv", PSEUDO_COLUMNS,
              [dict(zip(PSEUDO_COLUMNS, (*b, 0.9), strict=True)) for b in boxes])  # fmt: skip
    return folder


def test_pseudo_samples_keep_attributes_drop_np_boxes_and_report_bad_tiles(tmp_path):
    samples, problems = load_pseudo_samples(_pseudo_folder(tmp_path))
    by_name = {s.record.image.name: s for s in samples}
    assert sorted(by_name) == ["a.png", "b.png", "c.png"]  # bad.png left out, reported
    assert any("bad.png" in p.file for p in problems)
    a = by_name["a.png"]
    assert a.attribute == "unknown" and a.pseudo
    # the second box ends at y=70 on a 64-px tile: clipped to the tile
    np.testing.assert_allclose(a.boxes, [[1, 2, 20, 22], [30, 30, 50, 64]])
    assert by_name["b.png"].attribute == "AP" and len(by_name["b.png"].boxes) == 1
    assert by_name["c.png"].attribute == "NP" and len(by_name["c.png"].boxes) == 0


def test_pseudo_folder_errors_name_file_and_line(tmp_path):
    folder = _pseudo_folder(tmp_path)
    text = (folder / "pseudo-labels.csv").read_text().replace("30,30,50,70", "30,nan,50,70")
    (folder / "pseudo-labels.csv").write_text(text)
    with pytest.raises(DatasetError, match=r"pseudo-labels.csv, line 3: y1 is nan"):
        load_pseudo_samples(folder)
    (folder / "pseudo-labels.csv").unlink()
    with pytest.raises(DatasetError, match="--teacher"):
        load_pseudo_samples(folder)
    with pytest.raises(DatasetError, match="purify output"):
        load_pseudo_samples(tmp_path / "nowhere")


def test_collate_marks_pseudo_boxes_and_unknown_tiles_as_ap_like():
    img = np.zeros((32, 32, 3), np.uint8)
    items = [
        {"image": img, "boxes": np.ones((2, 4), np.float32), "attribute": "unknown", "pseudo": True},
        {"image": img, "boxes": np.ones((1, 4), np.float32), "attribute": "AP"},
        {"image": img, "boxes": np.zeros((0, 4), np.float32), "attribute": "NP"},
    ]  # fmt: skip
    _, boxes, ap, pseudo = collate_pseudo(items)
    assert ap.tolist() == [True, True, False]
    assert [p.tolist() for p in pseudo] == [[True, True], [False], []]


# -- the pipeline on tiny synthetic data ------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A labeled root, a pool (DigestPath layout, every SRC in full-annotations) and a
    tiny teacher trained on the labeled root."""
    base = tmp_path_factory.mktemp("pu")
    labeled, pool = base / "labeled", base / "pool"
    write_synthetic_dataset(labeled, positive=4, negative=4, size=512, seed=3, images_per_slide=1)
    write_synthetic_dataset(pool, positive=2, negative=2, size=512, seed=9, annotate_rate=1.0,
                            images_per_slide=1)  # fmt: skip
    teacher = base / "teacher"
    train(load_config(REPO / "configs/dghm.yaml", tiny(labeled)), teacher, progress=False,
          log=lambda m: None)  # fmt: skip
    return {"labeled": labeled, "pool": pool, "teacher": teacher / "last.pt", "base": base}


def _tiny_pu(**kw) -> PUConfig:
    return PUConfig(tile=256, stride=256, scale=0.25, steps=4, prior_steps=3, batch_size=4,
                    precision="auto", **kw)  # fmt: skip


def test_purify_writes_a_ranked_selection_pseudo_labels_and_its_precision(world, tmp_path):
    out = tmp_path / "purified"
    summary = run_purify(world["labeled"], world["pool"], out, _tiny_pu(select=5),
                         world["teacher"], world["pool"] / FULL_DIR, log=lambda m: None)  # fmt: skip
    pool, _ = pool_tiles(world["pool"], 256)
    images = [*(world["pool"] / POS_DIR).glob("*.jpeg"), *(world["pool"] / NEG_DIR).glob("*.jpeg")]
    expected = sum(len(tile_grid(*image_size(p), 256, 256)) for p in images)
    assert summary["pool_tiles"] == len(pool) == expected >= 16  # 4 images of ~512 px
    assert summary["selected"] == 5 and summary["prior_estimated"]
    ranking = list(csv.DictReader((out / "ranking.csv").open()))
    assert [int(r["rank"]) for r in ranking] == list(range(1, expected + 1))
    scores = [float(r["score"]) for r in ranking]
    assert scores == sorted(scores, reverse=True)
    assert sum(int(r["selected"]) for r in ranking) == 5
    # the learned-or-not check: the pool's share of positive logits, from ranking.csv
    shares = summary["classifier"]
    assert shares["pool_scored_positive"] == pytest.approx(np.mean(np.array(scores) > 0))
    assert 0.0 <= shares["positives_scored_positive"] <= 1.0
    selected = list(csv.DictReader((out / "selected.csv").open()))
    assert [r["rank"] for r in selected] == ["1", "2", "3", "4", "5"]
    for r in selected:  # the written tile is the pool tile, pixel for pixel
        assert (out / r["tile"]).is_file()
        assert r["attribute"] in ("AP", "NP")  # a DigestPath-root pool keeps attributes
    # precision by hand from the truth files
    has = []
    for r in ranking[:5]:
        xml = world["pool"] / FULL_DIR / f"{Path(r['source']).stem}.xml"
        boxes = read_voc(xml).boxes if xml.is_file() else np.zeros((0, 4))
        x, y, s = int(r["x"]), int(r["y"]), int(r["size"])
        has.append(len(boxes_in_window(boxes, (x, y, x + s, y + s), 0.5)[0]) > 0)
    assert summary["truth"]["precision"] == pytest.approx(np.mean(has))
    # NP-origin tiles never carry pseudo boxes, and the student can read the folder
    samples, _ = load_pseudo_samples(out)
    assert len(samples) == 5
    assert all(len(s.boxes) == 0 for s in samples if s.attribute == "NP")
    assert (out / "purify.json").is_file()


def test_random_selection_needs_a_count_and_reads_no_classifier(world, tmp_path):
    with pytest.raises(ValueError, match="--select"):
        run_purify(world["labeled"], world["pool"], tmp_path / "r", _tiny_pu(selection="random"),
                   log=lambda m: None)  # fmt: skip
    s = run_purify(world["labeled"], world["pool"], tmp_path / "r2",
                   _tiny_pu(selection="random", select=3), log=lambda m: None)  # fmt: skip
    assert s["selected"] == 3 and not (tmp_path / "r2" / "classifier.pt").exists()


def test_pool_of_plain_images_is_unknown_and_skips_unreadable_files(world, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    image = next((world["pool"] / POS_DIR).glob("*.jpeg"))
    (flat / "one.jpeg").write_bytes(image.read_bytes())
    (flat / "broken.png").write_bytes(b"\x89PNG truncated")
    tiles, problems = pool_tiles(flat, 256)
    assert len(tiles) == len(tile_grid(*image_size(image), 256, 256))
    assert {t.attribute for t in tiles} == {"unknown"}
    assert [Path(p.file).name for p in problems] == ["broken.png"]
    assert read_tile(tiles[-1], 256).shape == (256, 256, 3)


def test_pool_of_a_slide_keeps_tissue_windows(tmp_path):
    from pathodet.data.synth.slide import write_synthetic_slide

    slide = tmp_path / "s.tiff"
    write_synthetic_slide(slide, 1024, 768, seed=1)
    tiles, problems = pool_tiles(slide, 256)
    assert not problems and 0 < len(tiles) <= 12  # 4 x 3 windows at most
    assert all(t.attribute == "unknown" and t.level is not None for t in tiles)
    assert read_tile(tiles[0], 256).shape == (256, 256, 3)


# -- self-distillation -------------------------------------------------------------------
def test_distillation_terms_vanish_when_the_student_is_the_teacher(world):
    from pathodet.training.checkpoint import load_detector

    teacher, tcfg = load_detector(world["teacher"])
    d = Distiller(DistillConfig(enabled=True, teacher=world["teacher"]), tcfg.model,
                  torch.device("cpu"))  # fmt: skip
    with torch.no_grad():  # identity adaptation convs: phi(S) = S
        for conv in d.adapters:
            conv.weight.zero_()
            conv.bias.zero_()
            c = conv.weight.shape[0]
            conv.weight[torch.arange(c), torch.arange(c), 1, 1] = 1.0
    student = copy.deepcopy(teacher).eval()  # eval BN: same function as the teacher
    student.train = lambda mode=True: student  # keep it in eval mode inside distill_losses
    images = torch.rand(2, 3, 128, 128)
    boxes = [torch.tensor([[20.0, 20.0, 60.0, 60.0]]), torch.zeros((0, 4))]
    ap = torch.tensor([True, False])
    out = distill_losses(student, d, Criterion(LossConfig(name="dghm"), AssignConfig()), images,
                         Targets(boxes, ap))  # fmt: skip
    v = {k: float(t.detach()) for k, t in out.items()}  # the terms still carry their graph
    assert v["hint"] == pytest.approx(0.0, abs=1e-6)
    assert v["kdc"] == pytest.approx(0.0, abs=1e-6)
    assert v["kdr"] == pytest.approx(0.0, abs=1e-6)
    assert v["loss"] == pytest.approx(v["cls"] + v["reg"], rel=1e-5)
    # a different student: every term positive
    with torch.no_grad():
        for p in student.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = distill_losses(student, d, Criterion(LossConfig(name="dghm"), AssignConfig()), images,
                         Targets(boxes, ap))  # fmt: skip
    assert float(out["kdc"].detach()) > 0 and float(out["kdr"].detach()) > 0


def test_teacher_of_another_architecture_is_refused(world):
    cfg = load_config(REPO / "configs/dghm.yaml", ["model.fpn_channels=64"])
    with pytest.raises(CheckpointError, match="fpn_channels"):
        Distiller(DistillConfig(enabled=True, teacher=world["teacher"]), cfg.model,
                  torch.device("cpu"))  # fmt: skip
    with pytest.raises(CheckpointError, match="teacher"):
        Distiller(DistillConfig(enabled=True), cfg.model, torch.device("cpu"))


def test_student_trains_on_pseudo_tiles_with_distillation_and_resumes(world, tmp_path):
    purified = tmp_path / "purified"
    run_purify(world["labeled"], world["pool"], purified, _tiny_pu(selection="random", select=6),
               world["teacher"], log=lambda m: None)  # fmt: skip
    # one pseudo box on a selected AP-like tile, whatever the tiny teacher found
    rows = list(csv.DictReader((purified / "selected.csv").open()))
    target = next(r["tile"] for r in rows if r["attribute"] != "NP")
    with (purified / "pseudo-labels.csv").open("a") as f:
        f.write(f"{target},10,10,60,60,0.9\n")
    sets = tiny(world["labeled"], **{"data.pseudo": str(purified),
                                     "train.distill.teacher": str(world["teacher"])})  # fmt: skip
    cfg = load_config(REPO / "configs/pudet.yaml", sets)
    data = training_data(cfg.data, cfg.train)
    pseudo_tiles = [i for i, r in enumerate(data.train.refs) if data.train.samples[r.sample].pseudo]
    assert len(pseudo_tiles) == 6
    with_boxes = {i for i in pseudo_tiles if len(data.train[i]["boxes"])}
    assert with_boxes and with_boxes <= set(data.ap_tiles)  # drawn with the AP tiles
    empty = set(pseudo_tiles) - with_boxes
    assert not empty & set(data.ap_tiles)  # a pseudo tile without a box is never drawn as AP
    run = tmp_path / "student"
    train(cfg, run, progress=False, log=lambda m: None)
    names = {r["name"] for r in read_metrics(run) if r["split"] == "train"}
    assert {"hint", "kdc", "kdr"} <= names
    state = load_checkpoint(run / "last.pt")
    assert state["adapters"] is not None and len(state["adapters"]) == 10  # 5 convs x (w, b)
    # resume from the epoch-1 checkpoint: the same final weights
    cfg1 = load_config(REPO / "configs/pudet.yaml", [*sets, "train.epochs=1"])
    part = tmp_path / "part"
    train(cfg1, part, progress=False, log=lambda m: None)
    train(cfg, part, resume=True, progress=False, log=lambda m: None)
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(part / "last.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k])
    for k in a["adapters"]:
        torch.testing.assert_close(a["adapters"][k], b["adapters"][k])


def test_separation_shares_by_hand():
    """Positive logits: 2 of 4 positives, 1 of 3 pool tiles; g = 0 is not positive."""
    from pathodet.purify.pipeline import separation

    got = separation(np.array([0.5, -1.0, 2.0, 0.0]), np.array([-3.0, 0.1, -0.2]))
    assert got == {"positives_scored_positive": 0.5, "pool_scored_positive": pytest.approx(1 / 3)}
    assert separation(np.zeros(0), np.zeros(0)) == {"positives_scored_positive": 0.0,
                                                    "pool_scored_positive": 0.0}  # fmt: skip
