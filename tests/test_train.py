"""The training engine end to end on a tiny synthetic dataset: runs, checkpoints, logs,
resume after SIGKILL, divergence, bad input, and every method config for one step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pathodet.data.digestpath import DatasetError
from pathodet.data.synth import write_synthetic_dataset
from pathodet.losses.criterion import Criterion
from pathodet.training import train as train_mod
from pathodet.training.checkpoint import CheckpointError, load_checkpoint, load_detector
from pathodet.training.config import ConfigError, TrainConfig, load_config
from pathodet.training.logs import MetricsLog, read_metrics
from pathodet.training.train import RunExists, TrainingDiverged, train

REPO = Path(__file__).resolve().parents[1]
METHODS = ["ce", "focal", "ghm", "sce", "dghm", "dghm_star", "oss", "score_ss", "cleanliness"]


def tiny(root: Path, **extra: str) -> list[str]:
    """Overrides that shrink any config to a few seconds on the tiny dataset."""
    sets = {
        "data.root": str(root),
        "data.num_folds": "4",
        "data.tiling.tile_size": "256",
        "data.tiling.stride": "256",
        "model.fpn_channels": "32",
        "train.epochs": "2",
        "train.batch_size": "4",
        "train.augment.crop": "192",
        "train.milestones": "[1]",
        "train.precision": "auto",
        "train.num_workers": "0",
        "train.max_steps_per_epoch": "3",
        "train.checkpoint_every": "0",  # epoch ends: a 135 MB save costs ~0.5 s (tests that
        # kill or fail a run mid-epoch set 1)
        "train.log_every": "1",
        "train.val_tiles": "4",
        "train.val_batch_size": "2",
        **extra,
    }
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, positive=4, negative=4, size=512, seed=3, images_per_slide=1)
    return root


@pytest.fixture(scope="module")
def focal_run(data, tmp_path_factory) -> Path:
    """A finished two-epoch focal run (also the prior detector for score soft sampling)."""
    out = tmp_path_factory.mktemp("runs") / "focal"
    cfg = load_config(REPO / "configs/focal.yaml", tiny(data))
    train(cfg, out, progress=False, log=lambda m: None)
    return out


def test_run_writes_checkpoints_config_and_logs(focal_run):
    state = load_checkpoint(focal_run / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (2, 0, 6)
    assert set(state) >= {"model", "optimizer", "scheduler", "config", "best", "metrics"}
    assert state["scheduler"]["lr"] == pytest.approx(1e-5)  # after milestone 1
    # the resolved config: what --resume reads; norm no longer "auto"
    saved = load_config(focal_run / "config.yaml")
    assert saved.loss.name == "focal" and saved.model.norm == "bn"
    assert saved.train.max_steps_per_epoch == 3
    # best.pt is the epoch with the lowest validation loss
    rows = read_metrics(focal_run)
    val = {r["epoch"]: r["value"] for r in rows if r["split"] == "val" and r["name"] == "loss"}
    assert sorted(val) == [0, 1]
    best = load_checkpoint(focal_run / "best.pt")
    assert best["best"]["value"] == pytest.approx(min(val.values()), rel=1e-5)
    assert best["epoch"] == min(val, key=val.get) + 1
    steps = [r["step"] for r in rows if r["split"] == "train" and r["name"] == "loss"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(torch.tensor(r["value"])) for r in rows)
    assert any(p.name.startswith("events.out.tfevents") for p in (focal_run / "tb").iterdir())
    # the detector loads back with the trained weights
    model, cfg = load_detector(focal_run / "last.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k]), k
    assert cfg.loss.name == "focal"


def test_validation_froc_picks_the_best_checkpoint(data, tmp_path):
    from pathodet.eval.validation import tile_metrics

    cfg = load_config(
        REPO / "configs/focal.yaml", tiny(data, **{"train.epochs": "3", "train.val_tiles": "8"})
    )
    summary = train(cfg, tmp_path / "run", progress=False, log=lambda m: None,
                    val_metrics=tile_metrics)  # fmt: skip
    rows = read_metrics(tmp_path / "run")
    froc = {r["epoch"]: r["value"] for r in rows if r["split"] == "val" and r["name"] == "froc"}
    assert sorted(froc) == [0, 1, 2]
    assert all(0.0 <= v <= 1.0 for v in froc.values())
    assert summary["best"]["metric"] == "val_froc"
    best_epoch = max(sorted(froc), key=lambda e: froc[e])  # first epoch reaching the max
    assert summary["best"]["epoch"] == best_epoch + 1
    assert load_checkpoint(tmp_path / "run/best.pt")["epoch"] == best_epoch + 1


def test_tile_metrics_by_hand():
    import numpy as np

    from pathodet.data.predictions import ImagePredictions
    from pathodet.eval.validation import tile_metrics

    preds = {
        "a": ImagePredictions(np.array([[0, 0, 10, 10.0]]), np.array([0.9])),
        "n": ImagePredictions(np.array([[0, 0, 5, 5.0], [9, 9, 19, 19]]), np.array([0.8, 0.7])),
    }
    truth = {"a": ("AP", np.array([[0, 0, 10, 10.0], [50, 50, 60, 60]])),
             "n": ("NP", np.zeros((0, 4)))}  # fmt: skip
    m = tile_metrics(preds, truth)
    # recall 1/2; nfp 2 per NP tile; the hit (0.9) enters before any FP -> 0.5 at every k
    assert m == {"recall": 0.5, "nfp": 2.0, "froc": 0.5}


def test_lr_schedule_follows_milestones_and_warmup():
    tc = TrainConfig(lr=1e-4, milestones=[9, 12], lr_gamma=0.1, warmup_steps=4)
    assert tc.lr_at(0, 0) == pytest.approx(0.25e-4)
    assert tc.lr_at(0, 3) == pytest.approx(1e-4)
    assert tc.lr_at(8, 1000) == pytest.approx(1e-4)
    assert tc.lr_at(9, 1000) == pytest.approx(1e-5)
    assert tc.lr_at(11, 1000) == pytest.approx(1e-5)
    assert tc.lr_at(12, 1000) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="increasing"):
        TrainConfig(milestones=[12, 9])


def _initial_weights(cfg) -> dict[str, torch.Tensor]:
    from pathodet.model import build_retinanet

    torch.manual_seed(cfg.train.seed)
    return build_retinanet(cfg.model).state_dict()


@pytest.mark.parametrize("method", METHODS)
def test_each_method_config_trains_one_step(method, data, focal_run, tmp_path):
    extra = {"train.epochs": "1", "train.max_steps_per_epoch": "1"}
    if method == "score_ss":
        extra["loss.soft_sampling.prior_checkpoint"] = str(focal_run / "last.pt")
    cfg = load_config(REPO / f"configs/{method}.yaml", tiny(data, **extra))
    assert cfg.loss.name == method
    summary = train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    assert summary["steps"] == 1
    state = load_checkpoint(tmp_path / "run/last.pt")
    init = _initial_weights(cfg)
    changed = [
        k
        for k, v in state["model"].items()
        if v.is_floating_point() and not torch.equal(v, init[k])
    ]
    assert changed, "one optimiser step must change the weights"
    assert "head.classification_head.cls_logits.weight" in changed
    loss = [r for r in read_metrics(tmp_path / "run") if r["name"] == "loss"]
    assert loss and all(abs(r["value"]) < 1e6 for r in loss)
    if method == "score_ss":  # T measured from the prior detector and saved with the run
        t = load_config(tmp_path / "run/config.yaml").loss.soft_sampling.threshold
        assert t is not None and 0.0 <= t <= 1.0


def _write_cfg(path: Path, base: str, sets: list[str]) -> Path:
    cfg = load_config(REPO / base, sets)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pathodet", *args]


def test_sigkill_then_resume_matches_uninterrupted_run(data, tmp_path):
    """Kill a run mid-epoch with SIGKILL, resume it, and get bit-identical final weights."""
    sets = tiny(data, **{"train.max_steps_per_epoch": "3", "loss.name": "ghm",
                         "train.checkpoint_every": "1",
                         "loss.ghm.momentum": "0.75"})  # fmt: skip
    cfg_file = _write_cfg(tmp_path / "cfg.yaml", "configs/smoke.yaml", sets)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_cli("train", str(cfg_file), "--out", str(full), "--quiet"), env=env,
                   check=True, capture_output=True)  # fmt: skip

    proc = subprocess.Popen(_cli("train", str(cfg_file), "--out", str(killed), "--quiet"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait for step 2 of 6 (epoch 1 of 2) to be logged, then kill
            m = killed / "metrics.csv"
            if m.exists() and any(r.startswith("2,") for r in m.read_text().splitlines()):
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = load_checkpoint(killed / "last.pt")
    assert before["step"] in (1, 2), "the kill should land mid-epoch (epoch 1: steps 1-3)"

    subprocess.run(_cli("train", "--resume", str(killed), "--quiet"), env=env, check=True,
                   capture_output=True)  # fmt: skip
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["ghm_acc_sum"], b["ghm_acc_sum"])

    # the log holds each step once, with the same values as the uninterrupted run
    def losses(run):
        return [(r["step"], r["value"]) for r in read_metrics(run)
                if r["split"] == "train" and r["name"] == "loss"]  # fmt: skip

    assert losses(killed) == losses(full)


POISONS = {
    # the loss value itself turns NaN
    "loss is nan": lambda outputs, loss: loss * float("nan"),
    # the value is unchanged (sqrt(0) = 0) but the gradient is 0 * inf = NaN
    "gradient norm is nan": lambda outputs, loss: (
        loss + torch.sqrt(outputs.cls_logits.float().sum() * 0.0)
    ),
}


@pytest.mark.parametrize("message", list(POISONS))
def test_divergence_stops_at_the_step_and_keeps_last_good_checkpoint(
    message, data, tmp_path, monkeypatch
):
    real = Criterion.__call__
    calls = {"n": 0}

    def poisoned(self, outputs, *args, **kwargs):
        out = real(self, outputs, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss"] = POISONS[message](outputs, out["loss"])
        return out

    monkeypatch.setattr(Criterion, "__call__", poisoned)
    cfg = load_config(REPO / "configs/focal.yaml", tiny(data, **{"train.checkpoint_every": "1"}))
    with pytest.raises(TrainingDiverged, match=rf"step 3 \(epoch 1\): {message}"):
        train(cfg, tmp_path / "run", progress=False, log=lambda m: None)
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_validation_never_becomes_best(data, tmp_path, monkeypatch):
    real = train_mod.Trainer.validate
    calls = {"n": 0}

    def first_nan(self):
        out = real(self)
        calls["n"] += 1
        return {**out, "loss": float("nan")} if calls["n"] == 1 else out

    monkeypatch.setattr(train_mod.Trainer, "validate", first_nan)
    lines: list[str] = []
    cfg = load_config(REPO / "configs/focal.yaml", tiny(data))
    summary = train(cfg, tmp_path / "run", progress=False, log=lines.append)
    assert summary["best"]["epoch"] == 2
    assert load_checkpoint(tmp_path / "run/best.pt")["epoch"] == 2
    assert any("val_loss is nan" in m for m in lines)


def test_existing_run_is_not_overwritten(focal_run, data):
    cfg = load_config(REPO / "configs/focal.yaml", tiny(data))
    before = (focal_run / "last.pt").stat().st_mtime_ns
    with pytest.raises(RunExists, match="--resume"):
        train(cfg, focal_run, progress=False, log=lambda m: None)
    assert (focal_run / "last.pt").stat().st_mtime_ns == before


def test_missing_data_fails_fast(tmp_path):
    cfg = load_config(REPO / "configs/dghm.yaml")
    with pytest.raises(DatasetError, match="data.root is not set"):
        train(cfg, tmp_path / "a", progress=False)
    cfg = load_config(REPO / "configs/dghm.yaml", [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DatasetError, match="nowhere"):
        train(cfg, tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_errors_are_one_line(tmp_path, data, focal_run):
    """In process (CliRunner): the same command and exit codes, without a Python start-up
    per case. The line is written before exit; no exception escapes the command."""
    from typer.testing import CliRunner

    from pathodet.cli import app

    def run(*args: str):
        res = CliRunner().invoke(app, list(args))
        assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
        assert len(res.output.strip().splitlines()) == 1  # one line, no traceback
        return res.output

    assert "unknown key 'train.epoch'" in run("train", str(REPO / "configs/dghm.yaml"), "--set",
                                              "train.epoch=3")  # fmt: skip
    assert "loss.name cannot change" in run("train", "--resume", str(focal_run), "--set",
                                            "loss.name=ce")  # fmt: skip
    out = run("train", "--resume", str(focal_run), "--out", str(tmp_path))
    assert "give neither CONFIG nor --out" in out
    assert "no last.pt" in run("train", "--resume", str(tmp_path))


def test_metrics_log_drops_rows_after_resume_point(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, 0, "train", {"loss": float(step)})
    log.close()
    log = MetricsLog(tmp_path, resume_step=3, tensorboard=False)
    log.log(4, 0, "train", {"loss": 40.0})
    log.close()
    rows = [(r["step"], r["value"]) for r in read_metrics(tmp_path)]
    assert rows == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_bad_checkpoints_are_refused_with_the_file_name(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a pathodet checkpoint"):
        load_checkpoint(other)
    future = tmp_path / "future.pt"
    torch.save({"format": "pathodet-checkpoint", "version": 99}, future)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(future)
    code = tmp_path / "code.pt"
    torch.save({"format": "pathodet-checkpoint", "version": 1, "x": Path("/etc")}, code)
    with pytest.raises(CheckpointError, match="code.pt"):  # weights_only refuses the class
        load_checkpoint(code)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_config_error_for_bad_override_type():
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(REPO / "configs/smoke.yaml", ["train.precision=fp8"])


@pytest.mark.parametrize("clip", [None, 35.0, 100.0])
def test_backward_clips_the_gradient_norm_and_returns_it_unclipped(clip):
    # loss = 30 * w1 + 40 * w2: its gradient is (30, 40), of L2 norm 50
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([w])
    norm = train_mod.backward((w * torch.tensor([30.0, 40.0])).sum(), opt, grad_clip=clip)
    assert norm == pytest.approx(50.0)  # the norm before clipping: what the log shows
    expected = 50.0 if clip is None or clip >= 50 else clip
    assert float(w.grad.norm()) == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(w.grad / w.grad.norm(), torch.tensor([0.6, 0.8]))  # same direction
