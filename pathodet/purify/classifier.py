"""The tile-level PU classifier ``N_pu`` (ResNet-18, one logit) and the class prior.

Training (Algorithm 1, step 1): mini-batches of half positives, half unlabeled tiles,
flipped and rotated by 90-degree steps and colour-jittered with HED stain jitter (so the
stain of the few labeled images is no shortcut between P and U), optimised on the non-negative PU risk (Eq. 6) with
Kiryo et al.'s defocusing step (:func:`pathodet.losses.nnpu.nnpu_risk`). Tiles are scaled
by ``scale`` (0.5: a 512-px tile is seen at 256 px; SRCs stay 15-45 px).

Class prior ``pi_p`` (the share of SRC tiles in the pool): given, or estimated before the
PU phase. A first phase trains the same network to tell positives from unlabeled tiles
(balanced batches, cross entropy). Its output ``h`` then estimates ``p_p / (p_p + p)``, so
``(1 - h) / h`` estimates ``p(x) / p_p(x)``, whose mean over held-out positives is
``integral of p over the support of p_p = pi_p + (1 - pi_p) P_n(support of p_p)``: the prior
exactly when positives and negatives do not overlap (an SRC either is in the tile or not),
an over-estimate otherwise. The PU phase continues from those weights.

With a teacher detector, the network starts from the teacher's ResNet-18 (the paper uses
its detector's backbone); otherwise from scratch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torchvision.models import resnet18

from pathodet.core.config import Strict
from pathodet.core.machine import autocast
from pathodet.data.augment import ColourView, ColourViewConfig
from pathodet.losses.nnpu import nnpu_risk
from pathodet.model.retinanet import IMAGENET_MEAN, IMAGENET_STD


class PUConfig(Strict):
    """How the PU classifier is trained and what it selects (``pathodet purify`` options)."""

    tile: int = Field(800, gt=0, description="tile side, pixels (the detector's tile size)")
    stride: int = Field(300, gt=0, description="stride of the labeled tiles, pixels")
    scale: float = Field(0.5, gt=0, le=1, description="classifier input = tile x scale")
    steps: int = Field(300, ge=1, description="PU-risk training steps")
    prior_steps: int = Field(100, ge=1, description="P-vs-U steps that estimate the prior")
    batch_size: int = Field(16, ge=2, description="half positives, half unlabeled")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    prior: float | None = Field(None, gt=0, lt=1, description="pi_p; None: estimate it")
    holdout: float = Field(0.2, gt=0, lt=1, description="positives held out for the prior")
    surrogate: Literal["sigmoid", "logistic"] = "sigmoid"
    beta: float = Field(0.0, ge=0, description="nnPU: defocus when the negative risk < -beta")
    gamma: float = Field(1.0, gt=0, description="nnPU: step size of the defocusing step")
    max_unlabeled: int = Field(4000, ge=1, description="pool tiles sampled for training")
    select: int | None = Field(None, ge=0, description="tiles to select; None: pi_p x pool")
    selection: Literal["pu", "random"] = Field(
        "pu", description="random: the paper's U^R control (same count, random tiles)"
    )
    tau: float = Field(0.5, ge=0, le=1, description="teacher score threshold of pseudo boxes")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 0

    def input_size(self) -> int:
        return max(32, round(self.tile * self.scale))


def build_pu_classifier(teacher_state: dict[str, Tensor] | None = None) -> nn.Module:
    """ResNet-18 with one output logit; initialised from a detector's backbone when given
    (its ``backbone.body.*`` weights), from scratch otherwise."""
    net = resnet18(weights=None, num_classes=1)
    if teacher_state is not None:
        prefix = "backbone.body."
        body = {k[len(prefix) :]: v for k, v in teacher_state.items() if k.startswith(prefix)}
        missing, _ = net.load_state_dict(body, strict=False)
        if [k for k in missing if not k.startswith("fc.") and "num_batches" not in k]:
            raise ValueError(f"the teacher's backbone is not a ResNet-18 (missing {missing[:3]})")
    return net


def to_input(tiles: np.ndarray, size: int) -> Tensor:
    """``(N, h, w, 3)`` uint8 -> ``(N, 3, size, size)`` float, ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: Tensor, rng: np.random.Generator) -> Tensor:
    """Random flips and 90-degree rotations, one draw per tile."""
    out = []
    for t in x:
        if rng.random() < 0.5:
            t = t.flip(-1)
        out.append(torch.rot90(t, int(rng.integers(4)), dims=(-2, -1)))
    return torch.stack(out)


def estimate_prior(h_positive: np.ndarray, clip: float = 0.01) -> float:
    """``pi_p`` from the P-vs-U classifier's probabilities ``h`` on held-out positives:
    the mean of ``(1 - h) / h`` (``h`` clipped to ``[clip, 1]``), limited to
    ``[0.001, 0.999]``. See the module docstring for why."""
    h = np.clip(np.asarray(h_positive, np.float64), clip, 1.0)
    if h.size == 0:
        raise ValueError("no held-out positive to estimate the class prior from")
    return float(np.clip(np.mean((1.0 - h) / h), 0.001, 0.999))


def _batches(n: int, half: int, rng: np.random.Generator) -> Iterable[np.ndarray]:
    while True:
        yield rng.choice(n, size=half, replace=n < half)


def train_classifier(
    positives: np.ndarray,
    unlabeled: np.ndarray,
    cfg: PUConfig,
    teacher_state: dict[str, Tensor] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Algorithm 1, step 1: train ``N_pu`` on ``(n_p, s, s, 3)`` positive and ``(n_u, s, s,
    3)`` unlabeled uint8 tiles (already at input size).

    Returns:
        the classifier (eval mode) and ``{"prior", "prior_estimated", "final_risk", ...}``.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 11])
    net = build_pu_classifier(teacher_state)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    size = cfg.input_size()
    half = cfg.batch_size // 2
    info: dict = {"positives": len(positives), "unlabeled": len(unlabeled)}
    device = torch.device("cpu")

    colour = ColourView(ColourViewConfig(brightness=0.15, contrast=0.15, saturation=0.2,
                                         hue=0.04, hed_jitter=0.04))  # fmt: skip

    def batch(tiles: np.ndarray, idx: np.ndarray) -> Tensor:
        jittered = np.stack([colour(tiles[i], int(rng.integers(2**31))) for i in idx])
        return _augment(to_input(jittered, size), rng)

    prior = cfg.prior
    train_p = np.arange(len(positives))
    if prior is None:
        order = rng.permutation(len(positives))
        n_hold = max(1, round(cfg.holdout * len(positives)))
        if len(positives) - n_hold < 1:
            raise ValueError("too few positive tiles to hold some out for the class prior")
        held, train_p = order[:n_hold], order[n_hold:]
        draw_p, draw_u = _batches(len(train_p), half, rng), _batches(len(unlabeled), half, rng)
        net.train()
        for _ in range(cfg.prior_steps):
            x = torch.cat([batch(positives, train_p[next(draw_p)]),
                           batch(unlabeled, next(draw_u))])  # fmt: skip
            y = torch.cat([torch.ones(half), torch.zeros(half)])
            with autocast(cfg.precision, device):
                g = net(x).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(g.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        h = score(net, positives[held], cfg)
        prior = estimate_prior(torch.sigmoid(torch.from_numpy(h)).numpy())
        info["prior_heldout_positives"] = int(n_hold)
        log(f"class prior pi_p estimated at {prior:.3f} from {n_hold} held-out positive tiles")
    info["prior"], info["prior_estimated"] = float(prior), cfg.prior is None
    draw_p, draw_u = _batches(len(train_p), half, rng), _batches(len(unlabeled), half, rng)
    clamped, risks = 0, []
    net.train()
    for step in range(cfg.steps):
        xp, xu = batch(positives, train_p[next(draw_p)]), batch(unlabeled, next(draw_u))
        with autocast(cfg.precision, device):
            g = net(torch.cat([xp, xu])).squeeze(1).float()
        r = nnpu_risk(g[:half], g[half:], prior, cfg.surrogate, cfg.beta, cfg.gamma)
        opt.zero_grad(set_to_none=True)
        r.objective.backward()
        opt.step()
        clamped += r.clamped
        risks.append(float(r.risk.detach()))
        if (step + 1) % 50 == 0:
            log(f"PU step {step + 1}/{cfg.steps}: risk {np.mean(risks[-50:]):.4f}")
    info["final_risk"] = float(np.mean(risks[-50:]))
    info["clamped_steps"] = int(clamped)
    return net.eval(), info


@torch.no_grad()
def score(net: nn.Module, tiles: np.ndarray, cfg: PUConfig, batch: int = 32) -> np.ndarray:
    """``g(x)`` (logits, ``(N,)`` float64) of ``(N, s, s, 3)`` uint8 tiles; eval mode."""
    was_training = net.training
    net.eval()
    out = []
    for k in range(0, len(tiles), batch):
        with autocast(cfg.precision, torch.device("cpu")):
            out.append(net(to_input(tiles[k : k + batch], cfg.input_size())).float().squeeze(1))
    net.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros(0)
