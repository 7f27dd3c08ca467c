"""Process-group plumbing for ``torchrun`` (DDP): who am I, sum over ranks, rank-0-only work.

``torchrun --nproc_per_node N -m pathodet train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them everything runs as a single process and these helpers are
no-ops. The backend is gloo on CPU and nccl on CUDA.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_dist_info() -> DistInfo:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as set by torchrun (defaults: one process)."""
    return DistInfo(
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(name: str, info: DistInfo) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (CUDA when available) -> this rank's device."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device is cuda but no CUDA device is available")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun; return this process's :class:`DistInfo`."""
    info = env_dist_info()
    if info.distributed and not dist.is_initialized():
        if device.type == "cuda":
            dev = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(dev)  # else every rank may create its context on GPU 0
            dist.init_process_group(backend="nccl", device_id=dev)
        else:
            dist.init_process_group(backend="gloo")
    return info


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(
    model: torch.nn.Module, device: torch.device, info: DistInfo, norm: str
) -> torch.nn.Module:
    """``model`` as DDP under torchrun (SyncBatchNorm on CUDA), itself otherwise."""
    if not info.distributed:
        return model
    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif norm == "bn":
        warnings.warn(
            "BatchNorm under CPU DDP uses per-process batch statistics; set "
            "model.norm=gn for a run identical to a single process",
            stacklevel=3,
        )
    ids = [device.index] if device.type == "cuda" else None
    # oneDNN returns channels-last gradients for 1x1 convolutions; DDP copies them
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
    return DistributedDataParallel(model, device_ids=ids)
