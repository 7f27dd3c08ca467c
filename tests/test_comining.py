"""Co-mining: co-generation on hand-made boxes, the mined-positive group of DGHM-C, no
gradient through pseudo-labels, the colour view, mining counts, and training steps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pathodet.data.augment import AugmentConfig, ColourView, ColourViewConfig, TileAugment
from pathodet.data.synth import write_synthetic_dataset
from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import Criterion, Targets, detection_loss
from pathodet.losses.dghm import AP_N, AP_P, CLEAN, NOISY, NP_N, dghm_c_loss, dghm_groups
from pathodet.model import build_retinanet
from pathodet.model.assign import POSITIVE, assign_retinanet
from pathodet.model.config import AssignConfig, ModelConfig
from pathodet.model.retinanet import HeadOutputs
from pathodet.training.checkpoint import load_checkpoint
from pathodet.training.comining import comining_losses, mining_counts, split_views
from pathodet.training.config import CominingConfig, Config, load_config, same_config
from pathodet.training.logs import read_metrics
from pathodet.training.mining import co_generate, complete_sets, mine_batch
from pathodet.training.train import train

REPO = Path(__file__).resolve().parents[1]


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).view(-1, 4)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --- co-generation on hand-made boxes -----------------------------------------------------


def test_score_threshold_keeps_scores_at_or_above_tau():
    boxes = _t([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]])
    scores = torch.tensor([0.59, 0.6, 0.9])
    found, s = co_generate(boxes, scores, _t([]), tau=0.6)
    assert s.tolist() == pytest.approx([0.9, 0.6])  # highest first
    assert torch.equal(found, boxes[[2, 1]])


def test_nms_at_theta1_keeps_the_best_of_overlapping_boxes():
    # IoU(A, B) = 80 / 120 = 0.667 > 0.5: B suppressed; IoU(A, C) = 50 / 150 = 0.333: kept
    a, b, c = [0, 0, 10, 10], [0, 2, 10, 12], [0, 5, 10, 15]
    found, s = co_generate(_t([b, a, c]), torch.tensor([0.7, 0.8, 0.65]), _t([]), theta1=0.5)
    assert torch.equal(found, _t([a, c]))
    # a looser NMS (0.7) keeps all three
    found, _ = co_generate(_t([b, a, c]), torch.tensor([0.7, 0.8, 0.65]), _t([]), theta1=0.7)
    assert len(found) == 3


def test_boxes_that_are_the_same_cell_as_an_annotation_are_dropped():
    """Step 3 under pathodet's one "same cell" rule: IoU >= 0.3 (inclusive) with an
    annotated box. IoUs by hand against the 10 x 10 box at the origin: a 3 x 10 box inside
    it 30 / 100 = 0.3 (dropped), 2.9 x 10 29 / 100 = 0.29 (kept), a 10 x 20 box over it
    100 / 200 = 0.5 (dropped)."""
    gt = _t([[0, 0, 10, 10]])
    free = [40, 40, 50, 50]  # no overlap: always kept
    scores = torch.tensor([0.9, 0.7])
    for box, kept in (([0, 0, 3, 10], False), ([0, 0, 2.9, 10], True), ([0, 0, 10, 20], False)):
        found, _ = co_generate(_t([box, free]), scores, gt)
        assert torch.equal(found, _t([box, free] if kept else [free])), box
    # an explicit theta2 moves the bar: at 0.5 the 0.3-IoU box is another cell
    found, _ = co_generate(_t([[0, 0, 3, 10], free]), scores, gt, theta2=0.5)
    assert torch.equal(found, _t([[0, 0, 3, 10], free]))
    found, _ = co_generate(_t([[0, 0, 10, 20], free]), scores, gt, theta2=0.5)
    assert torch.equal(found, _t([free]))


def test_degenerate_boxes_and_the_candidate_cap():
    boxes = _t([[5, 5, 5, 9], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
    found, _ = co_generate(boxes, torch.tensor([0.99, 0.7, 0.8, 0.9]), _t([]))
    assert len(found) == 3  # the zero-width box is never mined
    found, s = co_generate(boxes, torch.tensor([0.99, 0.7, 0.8, 0.9]), _t([]), max_candidates=2)
    assert s.tolist() == pytest.approx([0.9, 0.8])


def _outputs(scores: list[list[float]], anchors: torch.Tensor, size=(64, 64)) -> HeadOutputs:
    """Head outputs whose boxes are the anchors (zero deltas) with the given scores."""
    logits = torch.tensor([[_logit(p) for p in row] for row in scores])
    b, a = logits.shape
    return HeadOutputs(logits, torch.zeros(b, a, 4), anchors, size, [a])


def test_mine_batch_skips_np_tiles_only_when_attribute_aware():
    anchors = _t([[0, 0, 16, 16], [30, 30, 46, 46], [50, 50, 70, 70]])
    out = _outputs([[0.9, 0.3, 0.7], [0.8, 0.95, 0.1]], anchors)
    annotated = [_t([[0, 0, 16, 16]]), _t([])]
    ap = torch.tensor([True, False])
    aware = mine_batch(out, annotated, ap, attribute_aware=True)
    # AP tile: anchor 0 is the annotated box (dropped), anchor 2 is mined, clipped to 64 px
    assert torch.equal(aware[0], _t([[50, 50, 64, 64]]))
    assert aware[1].shape == (0, 4)  # NP tile: nothing mined
    original = mine_batch(out, annotated, ap, attribute_aware=False)
    assert torch.equal(original[0], aware[0])
    assert torch.equal(original[1], _t([[30, 30, 46, 46], [0, 0, 16, 16]]))


def test_complete_sets_put_annotations_first_and_flag_the_mined():
    boxes, flags = complete_sets([_t([[0, 0, 5, 5]]), _t([])], [_t([[9, 9, 12, 12]]), _t([])])
    assert torch.equal(boxes[0], _t([[0, 0, 5, 5], [9, 9, 12, 12]]))
    assert flags[0].tolist() == [False, True] and flags[1].numel() == 0


# --- DGHM-C: the group of mined positives -------------------------------------------------


def test_dghm_groups_move_mined_positives_to_the_noisy_group():
    targets = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    ap = torch.tensor([True, True, True, False, False])
    mined = torch.tensor([False, True, True, False, True])  # a mined flag on a negative is moot
    group, _ = dghm_groups(targets, ap, 2.0, 0.5, pseudo_positive=mined)
    assert group.tolist() == [CLEAN, NOISY, NOISY, CLEAN, NOISY]
    group, _ = dghm_groups(targets, ap, 2.0, 0.5, star=True, pseudo_positive=mined)
    assert group.tolist() == [AP_P, AP_N, AP_N, NP_N, AP_N]


def test_detection_loss_groups_positives_on_mined_boxes_as_the_setting_says():
    torch.manual_seed(0)
    anchors = _t([[x, y, x + 16, y + 16] for x in range(0, 64, 8) for y in range(0, 64, 8)])
    a = len(anchors)
    out = HeadOutputs(torch.randn(2, a) * 2, torch.zeros(2, a, 4), anchors, (64, 64), [a])
    boxes = [_t([[0, 0, 16, 16], [40, 40, 56, 56]]), _t([[8, 8, 24, 24]])]
    mined = [torch.tensor([False, True]), torch.tensor([False])]
    ap = torch.tensor([True, False])
    cfg = LossConfig(name="dghm")
    plain = detection_loss(out, boxes, ap, cfg)["cls"]
    noisy = detection_loss(out, boxes, ap, cfg, pseudo=mined)["cls"]
    clean = detection_loss(out, boxes, ap, cfg.model_copy(update={"dghm": cfg.dghm.model_copy(
        update={"pseudo_group": "clean"})}), pseudo=mined)["cls"]  # fmt: skip
    assert torch.allclose(clean, plain)  # 'clean': mined positives are ordinary positives
    # independent reference: label anchors, flag positives matched to box 1 of image 0
    logits, targets, ap_flat, flags = [], [], [], []
    for i in range(2):
        a_cfg = AssignConfig()  # the thresholds detection_loss uses by default
        lab = assign_retinanet(anchors, boxes[i], a_cfg.fg_iou, a_cfg.bg_iou,
                               a_cfg.allow_low_quality)  # fmt: skip
        valid = lab.labels >= 0
        pos = lab.labels == POSITIVE
        logits.append(out.cls_logits[i][valid])
        targets.append(pos[valid].float())
        ap_flat.append(torch.full((int(valid.sum()),), bool(ap[i])))
        flags.append((pos & (lab.matched == 1) & (i == 0))[valid])
    assert bool(torch.cat(flags).any())
    ref = dghm_c_loss(torch.cat(logits), torch.cat(targets), torch.cat(ap_flat),
                      pseudo_positive=torch.cat(flags))  # fmt: skip
    assert torch.allclose(noisy, ref, atol=1e-6)
    assert not torch.allclose(noisy, plain)


# --- the step: no gradient through pseudo-labels, views supervise each other --------------


def test_pseudo_labels_carry_no_gradient_and_supervise_the_other_view():
    torch.manual_seed(0)
    model = build_retinanet(ModelConfig(fpn_channels=16, norm="gn"))
    for m in model.head.classification_head.modules():  # logits that vary between anchors
        if isinstance(m, torch.nn.Conv2d):  # (at init they are the prior bias everywhere)
            torch.nn.init.kaiming_normal_(m.weight)
    model.train()
    images = torch.rand(2, 3, 96, 96)
    images_a = images.flip(1).roll(24, dims=3)  # a view whose high scores lie elsewhere
    boxes, ap = [_t([[10, 10, 30, 30]]), _t([])], torch.tensor([True, True])
    loss_cfg = LossConfig(name="focal")
    co = CominingConfig(enabled=True, tau=0.0, theta1=0.3, max_candidates=6)
    total, mined_o, mined_a = comining_losses(model, Criterion(loss_cfg), images, images_a,
                                              Targets(boxes, ap), co)  # fmt: skip
    assert all(m.shape[0] > 0 and not m.requires_grad for m in mined_o + mined_a)
    assert not all(torch.equal(x, y) for x, y in zip(mined_o, mined_a, strict=True))
    model.zero_grad()
    total["loss"].backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    # reference: the pseudo-labels as constants, each view on the other view's boxes
    model.zero_grad()
    out_o, out_a = split_views(model(torch.cat([images, images_a])), 2)
    c_o, f_o = complete_sets(boxes, [m.clone() for m in mined_a])
    c_a, f_a = complete_sets(boxes, [m.clone() for m in mined_o])
    ref = detection_loss(out_o, c_o, ap, loss_cfg, pseudo=f_o)["loss"]
    ref = ref + detection_loss(out_a, c_a, ap, loss_cfg, pseudo=f_a)["loss"]
    assert torch.allclose(total["loss"], ref)
    swapped = detection_loss(out_o, complete_sets(boxes, mined_o)[0], ap, loss_cfg)["loss"]
    swapped = (
        swapped + detection_loss(out_a, complete_sets(boxes, mined_a)[0], ap, loss_cfg)["loss"]
    )
    assert not torch.allclose(total["loss"], swapped)  # the views are crossed, not self-fed
    ref.backward()
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[k], p.grad, atol=1e-6), k


# --- colour view and truth carried through augmentation -----------------------------------


def test_colour_view_is_seeded_pixel_aligned_and_identity_at_zero_strength():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    view = ColourView(ColourViewConfig(blur_sigma=1.0, hed_jitter=0.05))
    a, b = view(image, 7), view(image, 7)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, view(image, 8))
    assert np.abs(a.astype(int) - image).mean() > 1.0
    still = ColourView(ColourViewConfig(brightness=0, contrast=0, saturation=0, hue=0))
    assert np.abs(still(image, 3).astype(int) - image).max() <= 1


def test_full_truth_boxes_follow_the_same_geometry_as_the_annotations():
    rng = np.random.default_rng(1)
    boxes = np.array([[10, 12, 40, 44], [100, 90, 130, 118], [60, 150, 90, 180]], np.float32)
    item = {"image": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), "boxes": boxes,
            "box_index": np.arange(3), "full_truth_boxes": boxes.copy()}  # fmt: skip
    aug = TileAugment(AugmentConfig(crop=150, vflip=True))
    for seed in range(10):
        out = aug(item, seed)
        assert np.array_equal(out["full_truth_boxes"], out["boxes"])
        assert out["box_index"].min(initial=0) >= 0


def test_mining_counts_by_hand():
    truth = [_t([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]), _t([])]
    annotated = [_t([[0, 0, 10, 10]]), _t([])]
    mined_o = [_t([[20, 20, 30, 31], [70, 70, 80, 80]]), _t([[5, 5, 9, 9]])]
    mined_a = [_t([[41, 41, 50, 50]]), _t([])]
    c = mining_counts(mined_o, mined_a, annotated, truth)
    # 4 mined; real: [20..] (IoU 0.91), [41..] (0.81); missed: 2 unannotated, both found
    assert c == {"mined": 4.0, "mined_real": 2.0, "missed": 2.0, "missed_found": 2.0}
    assert mining_counts(mined_o, mined_a, annotated, None) == {"mined": 4.0}


# --- training -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, positive=4, negative=4, size=512, seed=3, images_per_slide=1,
                            annotate_rate=0.5)  # fmt: skip
    return root


def _tiny(root: Path, **extra: str) -> list[str]:
    sets = {
        "data.root": str(root), "data.num_folds": "4", "data.tiling.tile_size": "256",
        "data.tiling.stride": "256", "model.fpn_channels": "32", "train.epochs": "1",
        "train.batch_size": "4", "train.augment.crop": "192", "train.precision": "auto",
        "train.num_workers": "0", "train.max_steps_per_epoch": "2", "train.log_every": "1",
        "train.val_tiles": "4", "train.val_batch_size": "2", **extra,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.mark.parametrize("loss", ["focal", "dghm"])
def test_comining_config_trains_and_logs_mining_against_the_truth(loss, data, tmp_path):
    # tau = 0 mines from the untrained detector, so the counts are not all zero
    cfg = load_config(REPO / "configs/comining.yaml",
                      _tiny(data, **{"loss.name": loss, "train.comining.tau": "0.0",
                                     "train.comining.max_candidates": "20"}))  # fmt: skip
    assert cfg.train.comining.enabled and cfg.train.comining.attribute_aware
    lines: list[str] = []
    summary = train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert summary["steps"] == 2
    rows = {r["name"]: r["value"] for r in read_metrics(tmp_path / "run") if r["split"] == "mining"}
    assert rows["mined"] > 0 and 0 <= rows["mined_real"] <= rows["mined"]
    assert 0 <= rows["missed_found"] <= rows["missed"]
    assert any("co-mining: mined" in line for line in lines)
    train_rows = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    per_step = sum(r["value"] for r in train_rows if r["name"] == "mined")
    assert per_step == rows["mined"]  # the epoch row sums the steps
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_saved_configs_stay_current_when_keys_are_added():
    cfg = load_config(REPO / "configs/dghm.yaml")
    old = cfg.model_dump(mode="json")
    del old["train"]["comining"], old["loss"]["dghm"]["pseudo_group"]  # before co-mining
    assert same_config(old, cfg)
    old["train"]["lr"] = 0.5
    assert not same_config(old, cfg)
    assert not same_config({"train": {"no_such_key": 1}}, Config())
