"""Distributed training equals single-process training on the same global batch.

The worker half of this file runs under ``torchrun`` (``python -m torch.distributed.run``):
each of 2 gloo processes computes the loss of its share of a fixed global batch with the
statistics all-reduced, and the test compares the sum over ranks, and the summed gradients,
with one process computing the loss of the whole batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pathodet.losses.config import LossConfig
from pathodet.losses.criterion import detection_loss
from pathodet.model import ModelConfig
from pathodet.model.retinanet import SRCRetinaNet

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "ce": {"name": "ce"},
    "focal": {"name": "focal"},
    "ghm": {"name": "ghm"},
    "ghm_momentum": {"name": "ghm", "ghm": {"momentum": 0.75}},
    "sce": {"name": "sce"},
    "dghm": {"name": "dghm"},
    "dghm_star": {"name": "dghm_star"},
    "oss": {"name": "oss"},
    "score_ss": {"name": "score_ss", "soft_sampling": {"threshold": 0.3}},
    "cleanliness": {"name": "cleanliness"},
}
B, SIZE = 4, 96


def global_batch():
    """4 images (2 AP with boxes, 2 NP), boxes, AP flags and prior scores, all seeded."""
    g = torch.Generator().manual_seed(5)
    images = torch.rand(B, 3, SIZE, SIZE, generator=g)
    boxes = [
        torch.tensor([[10.0, 12.0, 34.0, 40.0], [50.0, 50.0, 70.0, 66.0]]),
        torch.tensor([[30.0, 20.0, 52.0, 44.0]]),
        torch.zeros((0, 4)),
        torch.zeros((0, 4)),
    ]
    ap = torch.tensor([True, True, False, False])
    return images, boxes, ap


def model() -> SRCRetinaNet:
    torch.manual_seed(0)
    return SRCRetinaNet(ModelConfig(norm="gn", fpn_channels=32))


def worker(out_dir: str) -> None:  # runs under torchrun
    import torch.distributed as dist

    from pathodet.core.dist import all_reduce_sum

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    images, boxes, ap = global_batch()
    # rank r takes every 2nd AP and every 2nd NP image, as the batch sampler does
    mine = [i for i in range(B) if i % world == rank]
    net = model()
    results = {}
    for name, spec in CASES.items():
        cfg = LossConfig.model_validate(spec)
        acc = torch.full((cfg.ghm.bins,), 5.0) if cfg.ghm.momentum else None
        # each rank needs the prior scores of its own images: same generator, then slice
        net.zero_grad()
        out = net(images[mine])
        prior = torch.rand((B, out.cls_logits.shape[1]), generator=torch.Generator().manual_seed(9))
        loss = detection_loss(
            out, [boxes[i] for i in mine], ap[mine], cfg, None, prior[mine], all_reduce_sum, acc
        )["loss"]
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
        results[name] = {
            "loss": float(all_reduce_sum(loss.detach())),
            "grad": all_reduce_sum(grad),
            "acc": acc,
        }
    if rank == 0:
        torch.save(results, Path(out_dir) / "ranks.pt")
    dist.destroy_process_group()


def torchrun(*args: str) -> list[str]:
    """``torchrun --standalone``: a local rendezvous on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", *args]  # fmt: skip


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run(torchrun(__file__, str(out)), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(out / "ranks.pt", weights_only=True)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_sum_to_the_single_process_loss_and_gradient(ranks, case):
    cfg = LossConfig.model_validate(CASES[case])
    images, boxes, ap = global_batch()
    net = model()
    acc = torch.full((cfg.ghm.bins,), 5.0) if cfg.ghm.momentum else None
    net.zero_grad()
    out = net(images)
    prior = torch.rand(out.cls_logits.shape, generator=torch.Generator().manual_seed(9))
    loss = detection_loss(out, boxes, ap, cfg, None, prior, None, acc)["loss"]
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    got = ranks[case]
    assert got["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(got["grad"], grad, rtol=1e-4, atol=1e-6)
    if acc is not None:  # the GHM moving counts are updated from global counts
        torch.testing.assert_close(got["acc"], acc)


def test_local_statistics_would_differ(ranks):
    """Guard: without all-reduce, a rank's GHM/DGHM loss is not its share of the global one."""
    images, boxes, ap = global_batch()
    net = model()
    for case in ("ghm", "dghm", "focal"):
        cfg = LossConfig.model_validate(CASES[case])
        with torch.no_grad():
            parts = [
                float(
                    detection_loss(
                        net(images[[i, i + 2]]), [boxes[i], boxes[i + 2]], ap[[i, i + 2]], cfg
                    )["loss"]
                )  # fmt: skip
                for i in (0, 1)
            ]
        assert sum(parts) != pytest.approx(ranks[case]["loss"], rel=1e-3), case


def test_torchrun_training_matches_single_process(tmp_path):
    """``torchrun -m pathodet train`` on 2 processes tracks the 1-process run step by step."""
    from pathodet.data.synth import write_synthetic_dataset
    from pathodet.training.logs import read_metrics

    data = tmp_path / "data"
    write_synthetic_dataset(data, positive=4, negative=4, size=512, seed=3, images_per_slide=1)
    sets = [
        f"data.root={data}", "data.num_folds=4", "data.tiling.tile_size=256",
        "data.tiling.stride=256", "model.norm=gn", "model.fpn_channels=32", "train.epochs=1",
        "train.batch_size=8", "train.augment.crop=192", "train.precision=fp32",
        "train.num_workers=0", "train.max_steps_per_epoch=3", "train.val_tiles=2",
        "train.log_every=1", "loss.name=dghm",
    ]  # fmt: skip
    args = ["train", str(REPO / "configs/smoke.yaml"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pathodet", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(torchrun("-m", "pathodet", *args, "--out", str(tmp_path / "two")),
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"run_dir"') == 1  # one summary, from rank 0

    def losses(run):
        return [
            r["value"] for r in read_metrics(run) if r["split"] == "train" and r["name"] == "loss"
        ]

    assert len(losses(tmp_path / "one")) == 3
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    a = torch.load(tmp_path / "one/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two/last.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the runs' initial weights (train.seed 0)
    init = SRCRetinaNet(ModelConfig(norm="gn", fpn_channels=32)).state_dict()
    keys = [k for k in a if a[k].is_floating_point()]
    moved = torch.cat([(a[k] - init[k]).flatten() for k in keys]).norm()
    apart = torch.cat([(b[k] - a[k]).flatten() for k in keys]).norm()
    assert moved > 0
    # the two runs differ by a tiny fraction of how far training moved the weights
    assert apart / moved < 1e-2, f"{float(apart / moved):.3g}"


if __name__ == "__main__":
    worker(sys.argv[1])
