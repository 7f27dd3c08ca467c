"""The AP:NP batch sampler: ratio, coverage, determinism, resuming and sharing across ranks.

Expected values are worked out by hand from the documented contract (a batch of 8 at 1:3
holds 2 AP and 6 NP tiles, an epoch is one pass over the AP tiles, ...), never by asking
the sampler for them.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pathodet.data.sampler import APNPBatchSampler

# Disjoint index ranges, so a tile index alone tells whether it is AP or NP.
AP12 = list(range(0, 12))
AP11 = list(range(0, 11))
NP30 = list(range(100, 130))
NP7 = list(range(200, 207))


def split(batch: list[tuple[int, int]], ap: list[int]) -> tuple[list[int], list[int]]:
    """Tile indices of a batch, split into AP and NP by membership in ``ap``."""
    ap_set = set(ap)
    tiles = [t for t, _ in batch]
    return [t for t in tiles if t in ap_set], [t for t in tiles if t not in ap_set]


def ap_stream(batches: list[list[tuple[int, int]]], n_ap: int) -> list[int]:
    return [t for b in batches for t, _ in b[:n_ap]]


def np_stream(batches: list[list[tuple[int, int]]], n_ap: int) -> list[int]:
    return [t for b in batches for t, _ in b[n_ap:]]


# ---------------------------------------------------------------- batch composition


@pytest.mark.parametrize(
    ("batch_size", "fraction", "n_ap"),
    [
        (8, 0.25, 2),  # the paper's 1:3
        (4, 0.25, 1),
        (8, 0.5, 4),
        (16, 0.25, 4),
        (2, 0.25, 1),  # round(0.5) is 0, raised to one AP tile
        (3, 0.1, 1),  # round(0.3) is 0, raised to one AP tile
        (8, 0.99, 7),  # round(7.92) is 8, lowered to keep one NP tile
        (8, 1.0, 8),  # no NP tile asked for
        (8, 0.0, 0),  # no AP tile asked for
    ],
)
def test_counts_per_batch(batch_size, fraction, n_ap):
    s = APNPBatchSampler(AP12, NP30, batch_size, fraction, seed=3)
    assert (s.n_ap, s.n_np) == (n_ap, batch_size - n_ap)
    batches = list(s)
    assert batches, "at least one batch"
    for b in batches:
        assert len(b) == batch_size
        ap, np_ = split(b, AP12)
        assert len(ap) == n_ap and len(np_) == batch_size - n_ap
        # AP tiles come first, then NP tiles
        assert [t for t, _ in b[:n_ap]] == ap


def test_paper_ratio_two_ap_six_np():
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=0)
    batches = list(s)
    assert len(batches) == 6  # 12 AP tiles, 2 per batch
    for b in batches:
        assert all(0 <= t < 12 for t, _ in b[:2])
        assert all(100 <= t < 130 for t, _ in b[2:])


def test_items_are_python_int_pairs_with_seeds_in_range():
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=0)
    for b in s:
        for pair in b:
            assert isinstance(pair, tuple) and len(pair) == 2
            t, seed = pair
            assert type(t) is int and type(seed) is int
            assert 0 <= seed < 2**31


# ---------------------------------------------------------------- coverage within an epoch


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_each_ap_tile_exactly_once_when_divisible(epoch):
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=11)
    stream = ap_stream(s.global_batches(epoch), 2)
    assert sorted(stream) == AP12


def test_ap_tiles_all_covered_when_not_divisible():
    # 11 AP tiles, 2 per batch: 6 batches, 12 AP slots, so exactly one slot is a repeat and
    # it can only sit in the last batch (the first 11 slots are one pass over the AP tiles).
    for seed in range(20):
        s = APNPBatchSampler(AP11, NP30, 8, 0.25, seed=seed)
        batches = s.global_batches(0)
        assert len(batches) == 6
        stream = ap_stream(batches, 2)
        assert len(stream) == 12
        assert set(stream) == set(AP11), "every AP tile seen"
        assert sorted(stream[:11]) == AP11, "first pass is a permutation"
        assert stream[11] in set(AP11)


def test_no_batch_holds_the_same_ap_tile_twice():
    for seed in range(100):
        s = APNPBatchSampler(AP11, NP30, 8, 0.25, seed=seed)
        for b in s.global_batches(0):
            ap = [t for t, _ in b[:2]]
            assert len(set(ap)) == len(ap), f"seed {seed}: batch {b} repeats an AP tile"


@pytest.mark.parametrize(("np_tiles", "seed"), [(NP30, 0), (NP7, 1), (NP7, 2), (NP30[:10], 4)])
def test_np_tiles_do_not_repeat_before_all_are_used(np_tiles, seed):
    # 12 AP tiles at 2 per batch: 6 batches, 36 NP slots, more than the NP pool holds
    # (except NP30): the stream must run through whole permutations of the pool.
    s = APNPBatchSampler(AP12, np_tiles, 8, 0.25, seed=seed)
    stream = np_stream(s.global_batches(0), 2)
    assert len(stream) == 36
    k = len(np_tiles)
    for start in range(0, len(stream), k):
        chunk = stream[start : start + k]
        assert len(set(chunk)) == len(chunk), "no repeat inside one pass"
        if len(chunk) == k:
            assert sorted(chunk) == sorted(np_tiles), "a full pass sees every NP tile"
    # with the larger pool, 36 slots of 30 tiles: every tile at least once, 6 at most twice
    if k == 30:
        counts = Counter(stream)
        assert set(counts) == set(np_tiles)
        assert sorted(counts.values()) == [1] * 24 + [2] * 6


# ---------------------------------------------------------------- determinism


def test_same_seed_and_epoch_give_identical_batches():
    a = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=5)
    b = APNPBatchSampler(list(AP12), list(NP30), 8, 0.25, seed=5)
    for epoch in (0, 3):
        a.start_at(epoch)
        b.start_at(epoch)
        first = list(a)
        assert first == list(b)
        assert first == list(a), "iterating again gives the same batches"
        assert first == a.global_batches(epoch)


def test_other_epoch_or_seed_changes_order():
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=5)
    e0, e1 = s.global_batches(0), s.global_batches(1)
    assert ap_stream(e0, 2) != ap_stream(e1, 2)
    assert sorted(ap_stream(e0, 2)) == sorted(ap_stream(e1, 2)) == AP12
    other = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=6).global_batches(0)
    assert other != e0
    # augmentation seeds are not reused from one epoch to the next either
    seeds0 = {s for b in e0 for _, s in b}
    seeds1 = {s for b in e1 for _, s in b}
    assert len(seeds0) > 40 and len(seeds1) > 40  # 48 draws from 2**31 values
    assert seeds0 != seeds1


def test_global_batches_do_not_depend_on_rank_or_world_size():
    single = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=9)
    ranked = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=9, rank=1, world_size=2)
    assert single.global_batches(2) == ranked.global_batches(2)


# ---------------------------------------------------------------- resuming


@pytest.mark.parametrize("k", [0, 1, 3, 5, 6])
def test_start_at_skips_the_first_batches(k):
    fresh = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=2)
    fresh.start_at(4)
    full = list(fresh)
    assert len(full) == 6
    resumed = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=2)
    resumed.start_at(4, k)
    assert len(resumed) == 6 - k
    assert list(resumed) == full[k:]


def test_start_at_sets_the_epoch():
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=2)
    s.start_at(3)
    assert list(s) == s.global_batches(3)
    assert list(s) != s.global_batches(0)


def test_works_as_a_dataloader_batch_sampler():
    torch = pytest.importorskip("torch")

    class Keys(torch.utils.data.Dataset):
        def __len__(self):
            return 200

        def __getitem__(self, key):
            return key

    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=1)
    s.start_at(2, 1)
    loader = torch.utils.data.DataLoader(Keys(), batch_sampler=s, collate_fn=list)
    assert len(loader) == 5
    assert list(loader) == s.global_batches(2)[1:]


# ---------------------------------------------------------------- distributed sharing


@pytest.mark.parametrize(
    ("batch_size", "world_size", "n_ap_rank", "n_np_rank"),
    [(8, 2, 1, 3), (16, 4, 1, 3), (16, 2, 2, 6)],
)
def test_rank_shares_partition_the_global_batch(batch_size, world_size, n_ap_rank, n_np_rank):
    ranks = [
        APNPBatchSampler(AP12, NP30, batch_size, 0.25, seed=4, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for s in ranks:
        s.start_at(1)
    per_rank = [list(s) for s in ranks]
    glob = ranks[0].global_batches(1)
    assert all(len(p) == len(glob) for p in per_rank), "every rank runs the same batch count"
    for b, batch in enumerate(glob):
        union: Counter = Counter()
        for p in per_rank:
            share = p[b]
            ap, np_ = split(share, AP12)
            assert len(ap) == n_ap_rank and len(np_) == n_np_rank, "each rank keeps 1:3"
            union.update(share)
        assert union == Counter(batch), "the shares add up to the global batch"


def test_rank_share_takes_every_wth_tile_of_each_kind():
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=0, rank=1, world_size=2)
    batch = [(0, 10), (1, 11), (100, 12), (101, 13), (102, 14), (103, 15), (104, 16), (105, 17)]
    assert s.rank_share(batch) == [(1, 11), (101, 13), (103, 15), (105, 17)]


def test_uneven_split_across_ranks_is_an_error():
    # a batch of 4 at 1:3 holds 1 AP and 3 NP tiles: two ranks cannot share that evenly
    with pytest.raises(ValueError, match="cannot share evenly") as info:
        APNPBatchSampler(AP12, NP30, 4, 0.25, rank=0, world_size=2)
    assert "1 AP" in str(info.value) and "3 NP" in str(info.value)


def test_bad_rank_is_an_error():
    with pytest.raises(ValueError, match="rank"):
        APNPBatchSampler(AP12, NP30, 8, 0.25, rank=2, world_size=2)


# ---------------------------------------------------------------- epoch length and edge cases


@pytest.mark.parametrize(
    ("n_ap_tiles", "batch_size", "expected"),
    [(12, 8, 6), (11, 8, 6), (13, 8, 7), (1, 8, 1), (2, 8, 1), (3, 8, 2), (12, 16, 3)],
)
def test_batches_per_epoch_is_ceil_of_ap_over_n_ap(n_ap_tiles, batch_size, expected):
    s = APNPBatchSampler(list(range(n_ap_tiles)), NP30, batch_size, 0.25)
    assert s.batches_per_epoch() == expected
    assert len(s) == expected
    assert len(list(s)) == expected


@pytest.mark.parametrize(("cap", "expected"), [(1, 1), (4, 4), (6, 6), (100, 6)])
def test_max_batches_caps_the_epoch(cap, expected):
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=0, max_batches=cap)
    assert s.batches_per_epoch() == expected
    assert len(s) == expected
    batches = list(s)
    assert len(batches) == expected
    assert all(len(b) == 8 for b in batches)


def test_max_batches_with_start_at():
    s = APNPBatchSampler(AP12, NP30, 8, 0.25, seed=0, max_batches=4)
    s.start_at(0, 3)
    assert len(s) == 1
    assert len(list(s)) == 1


def test_no_np_tiles_gives_all_ap_batches():
    s = APNPBatchSampler(list(range(16)), [], 8, 0.25, seed=0)
    assert (s.n_ap, s.n_np) == (8, 0)
    batches = list(s)
    assert len(batches) == 2
    assert all(len(b) == 8 for b in batches)
    assert sorted(t for b in batches for t, _ in b) == list(range(16))


def test_no_ap_tiles_gives_all_np_batches():
    s = APNPBatchSampler([], NP30[:16], 8, 0.25, seed=0)
    assert (s.n_ap, s.n_np) == (0, 8)
    batches = list(s)
    assert len(batches) == 2  # ceil(16 / 8)
    assert sorted(t for b in batches for t, _ in b) == NP30[:16]


def test_no_tiles_is_an_error():
    with pytest.raises(ValueError, match="no training tiles"):
        APNPBatchSampler([], [], 8, 0.25)


@pytest.mark.parametrize(("batch_size", "fraction"), [(0, 0.25), (8, -0.1), (8, 1.5)])
def test_bad_batch_size_or_fraction_is_an_error(batch_size, fraction):
    with pytest.raises(ValueError, match="bad batch_size"):
        APNPBatchSampler(AP12, NP30, batch_size, fraction)
