"""The training loop: ``train(cfg, run_dir)`` is what ``pathodet train`` runs.

One epoch = one pass over the AP training tiles in batches with AP:NP at 1:3
(:class:`~pathodet.data.sampler.APNPBatchSampler`), then a validation loss on the held-out
fold. Everything that decides the result is saved in ``last.pt`` (see
:mod:`pathodet.training.checkpoint`): a resumed run replays the same batches from where the
checkpoint was taken and ends with the same weights as a run that was never stopped.

Run folder::

    config.yaml     the resolved config (what --resume reads)
    last.pt         latest checkpoint (every train.checkpoint_every steps and each epoch)
    best.pt         checkpoint of the best epoch: highest validation FROC (with val_metrics,
                    as pathodet train passes), else lowest validation loss
    metrics.csv     step, epoch, split, name, value
    tb/             TensorBoard event files
    step-<N>.pt     the weights at step N, with train.snapshot_every (for load_detector)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from pathodet.core.dist import (
    DistInfo,
    all_reduce_sum,
    barrier,
    init_distributed,
    pick_device,
    shutdown,
    wrap_ddp,
)
from pathodet.core.io import remove_stale_temps
from pathodet.core.machine import (
    PrecisionSetting,
    autocast,
    configure_threads,
    machine_record,
    resolve_precision,
    share_cores,
)
from pathodet.core.progress import Bars
from pathodet.data.augment import ColourView, TileAugment
from pathodet.data.sampler import APNPBatchSampler
from pathodet.losses.criterion import Criterion, Targets
from pathodet.model import build_retinanet
from pathodet.model.retinanet import SRCRetinaNet, resolve_norm
from pathodet.training.batch import collate_pseudo
from pathodet.training.checkpoint import init_from_checkpoint, load_checkpoint, save_checkpoint
from pathodet.training.comining import (
    MINING_KEYS,
    collate_views,
    comining_losses,
    mining_counts,
    mining_summary,
)
from pathodet.training.config import Config
from pathodet.training.data import AugmentedTiles, TrainingData, training_data, validation_batches
from pathodet.training.distill import DISTILL_KEYS, Distiller, distill_losses
from pathodet.training.logs import MetricsLog
from pathodet.training.prior import score_prior
from pathodet.training.run_dir import (
    BEST,
    LAST,
    absolute_paths,
    check_resume_config,
    save_run_config,
    snapshot_name,
)
from pathodet.training.validate import ValMetrics, validate

OnStep = Callable[[int, int, float], None]
"""Called on rank 0 after every optimiser step with ``(step, total_steps, loss)``: steps
count from 1 over the whole run; a resumed run's first call carries the step it resumed at
plus one. The demo draws its own progress bar with it."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


class RunExists(ValueError):
    """``--out`` already holds a run and ``--resume`` was not given."""


class Trainer:
    """Holds the model, optimiser and position of one run; :meth:`fit` runs it to the end."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        val_metrics: ValMetrics | None = None,
        on_step: OnStep | None = None,
    ) -> None:
        # wall seconds spent on this run (setup, training, validation), over every resumed
        # segment up to the checkpoint it resumed from (work redone after a kill counts once)
        self.seconds_before, self.segment_start = 0.0, time.perf_counter()
        self.run_dir = Path(run_dir)
        self.val_metrics = val_metrics
        self.on_step = on_step
        self.log_line = log
        tc = cfg.train
        if tc.threads:  # else what the command line chose (configure_threads)
            configure_threads(tc.threads)
        self.info = init_distributed(pick_device(tc.device, DistInfo()))
        self.device = pick_device(tc.device, self.info)
        quiet = log if self.info.is_main else (lambda _: None)
        self.precision = resolve_precision(tc.precision, self.device, quiet)
        self.machine = machine_record(self.precision, self.device)  # recorded in every checkpoint
        d = cfg.data  # the pixel size the detector learns at, recorded in every checkpoint
        self.pixels = {"scale": d.scale, "source_mpp": d.mpp,
                       "detector_mpp": None if d.mpp is None else d.mpp / d.scale}  # fmt: skip
        if not resume and (self.run_dir / LAST).exists():  # every rank: nobody waits alone
            raise RunExists(
                f"{self.run_dir} already holds a run (last.pt): continue it with --resume "
                f"{self.run_dir}, or choose another --out"
            )
        self.data: TrainingData = training_data(cfg.data, tc)
        torch.manual_seed(tc.seed)
        model = build_retinanet(cfg.model)
        if cfg.model.init is not None and not resume:  # fine-tuning: start from its weights
            init_from_checkpoint(model, cfg.model.init)
        resolved = resolve_norm(cfg.model.norm, model.pretrained)
        self.cfg = absolute_paths(cfg)
        self.cfg.model.norm = resolved  # type: ignore[assignment]
        self.model: SRCRetinaNet = model.to(self.device)
        self.distiller = None
        params = [p for p in model.parameters() if p.requires_grad]
        if tc.distill.enabled:
            self.distiller = Distiller(tc.distill, self.cfg.model, self.device, self.precision)
            params += list(self.distiller.adapters.parameters())
        self.optimizer = torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)
        reduce = all_reduce_sum if self.info.distributed else None
        # self.cfg.loss: score soft sampling sets its threshold T below, the criterion reads it
        self.criterion = Criterion(self.cfg.loss, self.cfg.model.assign, reduce).to(self.device)
        self.epoch, self.batch, self.step, self.best, self.metrics = 0, 0, 0, None, {}
        self.loss_sum, self.loss_count = 0.0, 0  # this epoch's training loss so far
        self.mining: dict[str, float] = {}  # this epoch's co-mining counts so far
        if resume:
            state = load_checkpoint(self.run_dir / LAST)
            check_resume_config(self.run_dir / LAST, state, self.cfg)
            self._restore(state)
        self.net = wrap_ddp(self.model, self.device, self.info, resolved)
        self.sampler = APNPBatchSampler(
            self.data.ap_tiles, self.data.np_tiles, tc.batch_size, tc.ap_fraction, tc.seed,
            self.info.rank, self.info.world_size, tc.max_steps_per_epoch,
        )  # fmt: skip
        co = tc.comining.enabled
        tiles = AugmentedTiles(
            self.data.train,
            TileAugment(tc.augment),
            ColourView(tc.comining.view) if co else None,
            self.data.full_truth,
        )
        self.loader = torch.utils.data.DataLoader(
            tiles, batch_sampler=self.sampler, collate_fn=collate_views if co else collate_pseudo,
            num_workers=tc.num_workers, persistent_workers=tc.num_workers > 0,
        )  # fmt: skip
        self.val_batches = validation_batches(
            self.data.val, tc.val_tiles, tc.val_batch_size, tc.seed
        )
        self.prior = None
        if self.criterion.needs_prior:
            self.prior = score_prior(self.cfg, self.data.train, self.data.ap_tiles, self.device,
                                     self.log_line if self.info.is_main else None)  # fmt: skip
        self.progress = progress and self.info.is_main
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.run_dir, [".*.pt.*.tmp"])  # left by a run killed mid-write
            save_run_config(self.cfg, self.run_dir)
            # resuming before the epoch-end validation: its rows at this step are redone
            at_end = resume and self.batch >= self.sampler.batches_per_epoch()
            self.logs = MetricsLog(self.run_dir, self.step if resume else None, redo_val=at_end)
            for p in self.data.problems:
                self.log_line(f"warning: {p.file}: {p.error}")

    # -- state ---------------------------------------------------------------------------
    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        acc = self.criterion.ghm_acc_sum
        if acc is not None and state.get("ghm_acc_sum") is not None:
            acc.copy_(state["ghm_acc_sum"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.best, self.metrics = state.get("best"), state.get("metrics", {})
        self.loss_sum, self.loss_count = state.get("loss_sum", 0.0), state.get("loss_count", 0)
        self.mining = state.get("mining", {})
        self.seconds_before = state.get("train_seconds", 0.0)  # 0: written before it was kept
        if self.distiller is not None:
            self.distiller.adapters.load_state_dict(state["adapters"])

    def state(self) -> dict:
        tc = self.cfg.train
        return {
            "config": self.cfg.model_dump_json(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "lr": tc.lr_at(self.epoch, self.step),
                "milestones": list(tc.milestones),
                "gamma": tc.lr_gamma,
            },
            "ghm_acc_sum": self.criterion.ghm_acc_sum,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "best": self.best,
            "metrics": self.metrics,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "mining": self.mining,
            "adapters": None if self.distiller is None else self.distiller.adapters.state_dict(),
            "machine": self.machine,
            "pixels": self.pixels,
            "train_seconds": self.train_seconds(),
        }

    def train_seconds(self) -> float:
        """Wall seconds of this run since it started (setup and validation included),
        summed over resumed segments."""
        return self.seconds_before + (time.perf_counter() - self.segment_start)

    def save(self, name: str = LAST) -> None:
        if self.info.is_main:
            save_checkpoint(self.run_dir / name, self.state())

    # -- one step ------------------------------------------------------------------------
    def train_step(
        self, images, boxes, is_ap, pseudo=None, images_a=None, full_truth=None
    ) -> dict[str, float]:
        """One optimiser step; ``pseudo`` flags pseudo-labeled boxes; ``images_a`` (the
        colour view) and ``full_truth`` with co-mining."""
        tc = self.cfg.train
        share_cores()  # another pathodet process may have started or ended
        images = images.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = tc.lr_at(self.epoch, self.step)
        reduce = self.criterion.reduce
        counts = None
        if pseudo is not None:  # None when no box is a pseudo-label: the plain loss
            pseudo = [p.to(self.device) for p in pseudo] if any(p.any() for p in pseudo) else None
        targets = Targets([b.to(self.device) for b in boxes], is_ap.to(self.device), pseudo)
        keys = ("loss", "cls", "reg")
        # the gradient norm is of the global batch: DDP has already combined the ranks'
        if self.distiller is not None:
            losses = distill_losses(self.net, self.distiller, self.criterion, images, targets,
                                    self.precision)  # fmt: skip
            keys += DISTILL_KEYS
        elif images_a is not None:
            losses, mined_o, mined_a = comining_losses(
                self.net, self.criterion, images, images_a.to(self.device), targets,
                tc.comining, self.precision, self.prior,
            )  # fmt: skip
            counts = mining_counts(mined_o, mined_a, targets.boxes, full_truth)
        else:
            if self.prior is not None:
                targets.prior_scores = self.prior(images)
            losses = plain_losses(self.net, self.criterion, images, targets, self.precision)
        grad_norm = backward(losses["loss"], self.optimizer, self.info.world_size, tc.grad_clip)
        values = torch.stack([losses[k].detach().float() for k in keys])
        values = all_reduce_sum(values) if reduce else values
        if not (torch.isfinite(values).all() and math.isfinite(grad_norm)):
            what = f"loss is {float(values[0])}" if not torch.isfinite(values).all() else (
                f"gradient norm is {grad_norm}")  # fmt: skip
            raise TrainingDiverged(
                f"step {self.step + 1} (epoch {self.epoch + 1}): {what}; stopped without "
                f"updating the weights. {self.run_dir / LAST} (if any) holds the last good "
                "state; lower train.lr or set train.grad_clip"
            )
        self.optimizer.step()
        out = dict(zip(keys, values.tolist(), strict=True))
        out["positives"] = float(all_reduce_sum(losses["positives"].float()))
        out["lr"] = tc.lr_at(self.epoch, self.step)
        out["grad_norm"] = grad_norm
        if counts is not None:
            keys = [k for k in MINING_KEYS if k in counts]
            summed = torch.tensor([counts[k] for k in keys], device=self.device)
            out.update(zip(keys, (reduce(summed) if reduce else summed).tolist(), strict=True))
        return out

    def validate(self) -> dict[str, float]:
        """The epoch-end validation of :func:`~pathodet.training.validate.validate`, with a
        criterion of its own: validation must not move GHM-C's training statistics."""
        acc = self.criterion.ghm_acc_sum
        criterion = Criterion(self.cfg.loss, self.cfg.model.assign, None,
                              None if acc is None else acc.clone())  # fmt: skip
        return validate(
            self.model, criterion, self.data.val, self.val_batches, self.cfg.model.inference,
            self.device, self.precision, self.prior, self.val_metrics,
        )  # fmt: skip

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> dict:
        tc = self.cfg.train
        n_batches = self.sampler.batches_per_epoch()
        bar = Bars(enabled=self.progress)
        bar.add("train", total=tc.epochs * n_batches)
        try:
            with bar if self.progress else nullcontext():
                while self.epoch < tc.epochs:
                    self._run_epoch(bar, n_batches)
            barrier()
        finally:
            if self.info.is_main:
                self.logs.close()
            self.loader = None  # let persistent DataLoader workers exit
        return {
            "run_dir": str(self.run_dir),
            "epochs": self.epoch,
            "steps": self.step,
            "best": self.best,
            "metrics": self.metrics,
            "machine": self.machine,
            "train_seconds": self.train_seconds(),
        }

    def _run_epoch(self, bar: Bars, n_batches: int) -> None:
        tc = self.cfg.train
        self.sampler.start_at(self.epoch, self.batch)
        epoch = f"epoch {self.epoch + 1}/{tc.epochs}"
        bar.update("train", self.epoch * n_batches + self.batch, note=epoch)
        t0, tiles = time.perf_counter(), 0
        for batch in self.loader:
            if self.cfg.train.comining.enabled:  # images, boxes, is_ap, images_a, full_truth
                values = self.train_step(*batch[:3], images_a=batch[3], full_truth=batch[4])
            else:  # images, boxes, is_ap, pseudo
                values = self.train_step(*batch)
            self.step, self.batch = self.step + 1, self.batch + 1
            self.loss_sum, self.loss_count = self.loss_sum + values["loss"], self.loss_count + 1
            for k in MINING_KEYS:
                if k in values:
                    self.mining[k] = self.mining.get(k, 0.0) + values[k]
            tiles += tc.batch_size
            rate = tiles / max(time.perf_counter() - t0, 1e-9)
            bar.update("train", advance=1,
                       note=f"{epoch}  loss {values['loss']:.4f}  {rate:.1f} tiles/s")  # fmt: skip
            if self.on_step is not None and self.info.is_main:
                self.on_step(self.step, tc.epochs * n_batches, values["loss"])
            if self.info.is_main and (self.step % tc.log_every == 0 or self.batch == n_batches):
                self.logs.log(self.step, self.epoch, "train", {**values, "tiles_per_s": rate})
            if tc.snapshot_every and self.step % tc.snapshot_every == 0 and self.info.is_main:
                # before last.pt: a run killed in between redoes this step and its snapshot
                save_checkpoint(self.run_dir / snapshot_name(self.step),
                                {"config": self.cfg.model_dump_json(), "model": self.model.state_dict()})  # fmt: skip
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.save()
        val = self.validate() if self.info.is_main else {}
        if self.info.is_main:
            mean = self.loss_sum / max(self.loss_count, 1)
            self.metrics = {"train_loss": mean, **{f"val_{k}": v for k, v in val.items()}}
            self.logs.log(self.step, self.epoch, "val", val)
            # best: highest validation FROC when measured, else lowest validation loss
            key = "val_froc" if "val_froc" in self.metrics else "val_loss"
            sign = -1.0 if key == "val_froc" else 1.0
            v = self.metrics.get(key)
            if v is not None and not math.isfinite(v):
                self.log_line(f"warning: epoch {self.epoch + 1}: {key} is {v}")
            improved = v is not None and math.isfinite(v) and (
                self.best is None or self.best["metric"] != key
                or sign * v < sign * self.best["value"]
            )  # fmt: skip
        mining, self.mining = self.mining, {}
        self.epoch, self.batch = self.epoch + 1, 0
        self.loss_sum, self.loss_count = 0.0, 0
        if self.info.is_main:
            if mining:
                self.logs.log(self.step, self.epoch - 1, "mining", mining)
                self.log_line(f"epoch {self.epoch}/{tc.epochs} co-mining: "
                              f"{mining_summary(mining)}")  # fmt: skip
            if improved:
                self.best = {"metric": key, "value": v, "epoch": self.epoch}
                self.save(BEST)  # before last.pt: a kill in between re-validates on resume
            self.save()
            shown = ", ".join(f"{k} {x:.4f}" for k, x in self.metrics.items())
            self.log_line(f"epoch {self.epoch}/{tc.epochs}: {shown}")
        barrier()


def train(
    cfg: Config,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    val_metrics: ValMetrics | None = None,
    on_step: OnStep | None = None,
) -> dict:
    """Train (or, with ``resume``, continue) the run in ``run_dir``; returns a summary dict.

    Under torchrun every rank calls this; only rank 0 writes files and logs.
    """
    try:
        return Trainer(cfg, run_dir, resume, progress, log, val_metrics, on_step).fit()
    finally:
        shutdown()


def plain_losses(
    net: torch.nn.Module,
    criterion: Criterion,
    images: Tensor,
    targets: Targets,
    precision: PrecisionSetting = "fp32",
) -> dict[str, Tensor]:
    """The plain step's forward and loss: ``net`` (may be DDP-wrapped) in train mode under
    autocast, the criterion in fp32. Co-mining and distillation have their own forward
    (two views; a teacher beside the student)."""
    net.train()
    with autocast(precision, images.device):
        outputs = net(images)
    return criterion(outputs, targets)


def backward(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    world_size: int = 1,
    grad_clip: float | None = None,
) -> float:
    """Fresh gradients of ``loss * world_size``; returns their total norm, clipped to
    ``grad_clip`` when given (``nan``/``inf`` when they are not finite).

    Under DDP each rank's loss is its share of the global-batch loss (the criterion's
    ``reduce`` makes the statistics global) and DDP averages gradients, so the loss is
    scaled by ``world_size`` to backpropagate the global loss.
    """
    optimizer.zero_grad(set_to_none=True)
    (loss * world_size).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return float(torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf")))


def train_step(
    model: SRCRetinaNet,
    optimizer: torch.optim.Optimizer,
    criterion: Criterion,
    images: Tensor,
    targets: Targets,
    precision: PrecisionSetting = "fp32",
) -> dict[str, float]:
    """One single-process optimisation step of the plain path of :meth:`Trainer.train_step`
    (benchmarks and calibration time it); returns the loss terms."""
    losses = plain_losses(model, criterion, images, targets, precision)
    backward(losses["loss"], optimizer)
    optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()}
