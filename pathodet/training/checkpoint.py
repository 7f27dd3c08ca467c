"""Checkpoints: one ``.pt`` file per snapshot, written atomically, loadable without pickle code.

A checkpoint is a dict of tensors and plain Python values only (loaded with
``torch.load(weights_only=True)``):

    format, version      "pathodet-checkpoint", CHECKPOINT_VERSION
    config               the resolved run config as JSON text
    model                the detector's state dict
    optimizer            Adam's state dict
    scheduler            {"lr": current lr, "milestones": [...], "gamma": ...} (lr is a
                         pure function of epoch and step, see TrainConfig.lr_at)
    ghm_acc_sum          GHM-C moving bin counts (bins,) or None
    epoch, batch         where to continue: batch ``batch`` (0-based) of epoch ``epoch``
    step                 optimiser steps done
    best                 {"metric": name, "value": v, "epoch": e} or None
    metrics              the last validation metrics
    machine              the precision the run computed in and the CPU it ran on (model,
                         torch's capability, native bf16 or not, threads; see
                         pathodet.core.machine.machine_record)
    pixels               the pixel size learnt at: {"scale": data.scale, "source_mpp": data.mpp,
                         "detector_mpp": mpp / scale or None}; predict resizes by ``scale``
    loss_sum, loss_count the current epoch's training loss so far; mining: its co-mining counts
    adapters             the distillation adapters' state dict, or None
    train_seconds        wall seconds of the run so far (setup, training, validation), summed
                         over resumed segments up to this checkpoint

The file is written to a temporary name in the same folder, flushed to disk, then renamed
over the target, so a run killed at any moment leaves either the old or the new file whole.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import torch

from pathodet.core.io import atomic_write

CHECKPOINT_FORMAT = "pathodet-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def _load_problem(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line.

    torch's own message for a refused object advises loading with ``weights_only=False``,
    which would run the object's code: it is replaced by what the object is.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        unsafe = re.search(r"GLOBAL ([\w.]+)", text)
        if unsafe:
            return (
                f"refused: it holds a Python object ({unsafe.group(1)}) that could run code "
                "when loaded; a pathodet checkpoint holds only tensors and plain values"
            )
        lines = [x.strip() for x in text.splitlines() if x.strip()]
        detail = [
            x for x in lines if not any(k in x.lower() for k in ("weights_only", "weights only"))
        ]
        return f"not a loadable checkpoint (not a torch file, or damaged: {(detail or ['?'])[0]})"
    first = text.splitlines()[0] if text else ""
    return f"not a loadable checkpoint ({type(exc).__name__}: {first})"


class _WriteErrors:
    """The file ``f`` as torch.save sees it, keeping the first ``OSError`` of its writes."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(state: dict[str, Any], f: BinaryIO) -> None:
    """``torch.save(state, f)``, raising the write's ``OSError`` when a write failed.

    torch's zip writer finishes the archive in its cleanup even after a failed write; when
    the failure came inside a record, that cleanup raises a ``RuntimeError`` ("unexpected
    pos") which would replace the ``OSError`` (a full disk) that caused it.
    """
    out = _WriteErrors(f)
    try:
        torch.save(state, out)
    except Exception:
        if out.error is not None:
            raise out.error from None
        raise


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) atomically to ``path``.

    Raises:
        OSError: the file could not be written (a full disk, say): same ``errno``, the
            message names ``path``; a checkpoint already at ``path`` is left as it was.
    """
    path = Path(path)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    try:  # streamed into the file: no second copy of the weights in memory
        return atomic_write(path, lambda f: _torch_save(state, f))
    except OSError as exc:
        kept = "the previous one is kept" if path.is_file() else "nothing was written"
        raise OSError(
            exc.errno, f"{path}: checkpoint not written ({exc.strerror or exc}); {kept}"
        ) from exc


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        CheckpointError: missing, unreadable, not a pathodet checkpoint, another version,
            or a file that would need arbitrary code to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: {_load_problem(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a pathodet checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')} (this pathodet reads "
            f"{CHECKPOINT_VERSION})"
        )
    return state


def load_detector(path: str | os.PathLike[str]):
    """The detector of a checkpoint in eval mode, and the run config it was trained with.

    Returns:
        ``(model, config)``: an :class:`~pathodet.model.retinanet.SRCRetinaNet` on the CPU and
        the :class:`~pathodet.training.config.Config` stored in the checkpoint.
    """
    from pydantic import ValidationError

    from pathodet.model.retinanet import SRCRetinaNet
    from pathodet.training.config import Config

    state = load_checkpoint(path)
    try:
        cfg = Config.model_validate_json(state["config"])
    except (KeyError, ValidationError) as exc:
        raise CheckpointError(f"{path}: its config does not validate: {exc}") from None
    if cfg.model.norm == "auto":
        raise CheckpointError(f"{path}: its config leaves model.norm unresolved ('auto')")
    # the trained weights replace any initialisation, so no ImageNet file is needed here
    model = SRCRetinaNet(cfg.model.model_copy(update={"weights": None}))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its config: {exc}") from None
    return model.eval(), cfg


def init_from_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load the detector weights of a pathodet checkpoint into ``model`` (fine-tuning).

    Raises:
        CheckpointError: the file is not a loadable checkpoint.
        ValueError: its detector has another shape (e.g. another ``model.fpn_channels``).
    """
    state = load_checkpoint(path)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ValueError(f"{path}: model.init holds another detector: {first[0].strip()}") from None
