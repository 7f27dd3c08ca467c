"""The AP:NP batch sampler: every mini-batch holds AP and NP tiles in a fixed ratio.

DGHM (section 4.2) trains on mini-batches of 8 with AP:NP tiles at 1:3. One epoch is one
pass over the AP tiles in a random order; NP tiles are drawn from successive random
permutations of all NP tiles, so every NP tile is seen before any repeats.

The batches of an epoch are a pure function of ``(seed, epoch)``. Each tile index comes
with an augmentation seed, so the whole input stream is reproducible across worker counts
and restarts: :meth:`APNPBatchSampler.start_at` skips the batches a resumed run already
did. Under distributed training the *global* batch is the one a single process would use;
rank ``r`` of ``W`` takes every ``W``-th AP and every ``W``-th NP tile of it, so each rank
keeps the AP:NP ratio and the union over ranks is exactly the single-process batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

TileSeed = tuple[int, int]
"""``(tile index, augmentation seed)``."""


class APNPBatchSampler:
    """Batch sampler yielding lists of :data:`TileSeed` for one rank.

    Args:
        ap, np_: indices of AP and NP tiles in the dataset.
        batch_size: global mini-batch size (all ranks together).
        ap_fraction: share of AP tiles per batch (0.25 = 1:3); rounded to a whole number,
            at least one of each kind when both exist.
        seed: base seed. rank, world_size: this process among ``world_size``.
        max_batches: cap on batches per epoch (smoke runs), or None.

    Raises:
        ValueError: no tiles at all, or per-batch AP/NP counts not divisible by
            ``world_size`` (the ratio could not be kept on every rank).
    """

    def __init__(
        self,
        ap: Sequence[int],
        np_: Sequence[int],
        batch_size: int,
        ap_fraction: float = 0.25,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
    ) -> None:
        if len(ap) == 0 and len(np_) == 0:
            raise ValueError("no training tiles: the training fold holds no usable image")
        if batch_size < 1 or not 0.0 <= ap_fraction <= 1.0:
            raise ValueError(f"bad batch_size {batch_size} or ap_fraction {ap_fraction}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.ap = np.asarray(ap, np.int64)
        self.np = np.asarray(np_, np.int64)
        n_ap = round(batch_size * ap_fraction)
        if len(self.ap) and len(self.np) and 0 < ap_fraction < 1:
            n_ap = min(max(n_ap, 1), batch_size - 1)
        if not len(self.np):
            n_ap = batch_size
        if not len(self.ap):
            n_ap = 0
        self.n_ap, self.n_np = n_ap, batch_size - n_ap
        if self.n_ap % world_size or self.n_np % world_size:
            raise ValueError(
                f"a batch of {batch_size} holds {self.n_ap} AP and {self.n_np} NP tiles, which "
                f"{world_size} processes cannot share evenly: choose train.batch_size and "
                "train.ap_fraction so both counts divide by the number of processes"
            )
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.max_batches = max_batches
        self.epoch, self.start = 0, 0

    def batches_per_epoch(self) -> int:
        if self.n_ap:
            n = math.ceil(len(self.ap) / self.n_ap)
        else:
            n = math.ceil(len(self.np) / self.n_np)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start

    def start_at(self, epoch: int, batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from batch ``batch`` (0-based) on."""
        self.epoch, self.start = epoch, batch

    def global_batches(self, epoch: int) -> list[list[TileSeed]]:
        """Every global batch of ``epoch``: AP tiles first, then NP tiles, each with its seed."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.batches_per_epoch()
        ap = _stream(rng, self.ap, n * self.n_ap, self.n_ap)
        np_ = _stream(rng, self.np, n * self.n_np, self.n_np)
        seeds = rng.integers(0, 2**31 - 1, size=(n, self.batch_size))
        out = []
        for b in range(n):
            tiles = list(ap[b * self.n_ap : (b + 1) * self.n_ap])
            tiles += list(np_[b * self.n_np : (b + 1) * self.n_np])
            out.append([(int(t), int(s)) for t, s in zip(tiles, seeds[b], strict=True)])
        return out

    def rank_share(self, batch: list[TileSeed]) -> list[TileSeed]:
        """This rank's part of a global batch: every ``W``-th AP and every ``W``-th NP tile."""
        ap, np_ = batch[: self.n_ap], batch[self.n_ap :]
        return ap[self.rank :: self.world_size] + np_[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[TileSeed]]:
        for batch in self.global_batches(self.epoch)[self.start :]:
            yield self.rank_share(batch)


def _stream(rng: np.random.Generator, pool: np.ndarray, count: int, per_batch: int) -> np.ndarray:
    """``count`` items from successive random permutations of ``pool`` (empty pool: none).

    Where one permutation ends inside a batch of ``per_batch`` items, the next permutation
    puts the tiles that batch already holds last, so no batch holds a tile twice (when
    ``per_batch <= len(pool)``).
    """
    if not len(pool) or count <= 0:
        return np.zeros(0, np.int64)
    out: list[int] = []
    while len(out) < count:
        perm = pool[rng.permutation(len(pool))]
        partial = set(out[len(out) - len(out) % per_batch :]) if per_batch else set()
        if partial:
            perm = np.concatenate([perm[~np.isin(perm, list(partial))],
                                   perm[np.isin(perm, list(partial))]])  # fmt: skip
        out.extend(int(x) for x in perm)
    return np.asarray(out[:count], np.int64)
