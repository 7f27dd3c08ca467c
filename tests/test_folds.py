"""Cross-validation folds grouped by slide and balanced in AP and NP images."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pathodet.data.digestpath import ImageRecord
from pathodet.data.folds import assign_folds, fold_summary, split


def random_dataset(r: random.Random, n_slides: int, max_per_slide: int) -> list[ImageRecord]:
    """Slides of 1..max images; a slide holds AP images, NP images or both."""
    records = []
    for s in range(n_slides):
        kind = r.choice(["AP", "NP", "NP", "mixed"])
        for j in range(r.randint(1, max_per_slide)):
            attr = r.choice(["AP", "NP"]) if kind == "mixed" else kind
            records.append(ImageRecord(Path(f"slide{s} img{j}.jpeg"), attr, None, f"slide{s}"))
    return records


def counts_per_fold(records, k, attribute):
    c = Counter(r.fold for r in records if r.attribute == attribute)
    return [c.get(f, 0) for f in range(k)]


def largest_slide(records, attribute):
    c = Counter(r.slide_id for r in records if r.attribute == attribute)
    return max(c.values(), default=0)


def test_random_datasets_group_balance_and_determinism():
    r = random.Random(2024)
    for trial in range(150):
        k = r.randint(2, 7)
        max_per = r.choice([1, 1, 2, 3, 5])
        records = random_dataset(r, r.randint(k, 45), max_per)
        seed = r.randint(0, 10**6)
        out = assign_folds(records, k=k, seed=seed)

        # same records, same order, only the fold filled in
        assert [(o.image, o.attribute, o.slide_id) for o in out] == [
            (i.image, i.attribute, i.slide_id) for i in records
        ]
        assert all(o.fold in range(k) for o in out)
        # no slide in two folds
        folds_of = defaultdict(set)
        for o in out:
            folds_of[o.slide_id].add(o.fold)
        assert all(len(f) == 1 for f in folds_of.values())
        # every fold used
        assert {o.fold for o in out} == set(range(k))
        # balance: the spread of AP (NP) counts stays within the largest slide (+1)
        for attribute in ("AP", "NP"):
            c = counts_per_fold(out, k, attribute)
            limit = largest_slide(records, attribute) + (0 if max_per == 1 else 1)
            assert max(c) - min(c) <= limit, (trial, attribute, c)

        # deterministic, and independent of the input order
        assert assign_folds(records, k=k, seed=seed) == out
        shuffled = records[:]
        r.shuffle(shuffled)
        again = {o.image: o.fold for o in assign_folds(shuffled, k=k, seed=seed)}
        assert again == {o.image: o.fold for o in out}


def test_single_image_slides_split_evenly():
    # 10 AP and 10 NP single-image slides into 2 folds: 5 + 5 of each. The first version
    # balanced only the sum of AP and NP shares and could put 8 AP and 2 NP in one fold.
    records = [ImageRecord(Path(f"a{i}.jpeg"), "AP", None, f"a{i}") for i in range(10)]
    records += [ImageRecord(Path(f"n{i}.jpeg"), "NP", None, f"n{i}") for i in range(10)]
    for seed in range(20):
        for k, share in ((2, 5), (5, 2)):
            summary = fold_summary(assign_folds(records, k=k, seed=seed))
            assert [(f["AP"], f["NP"]) for f in summary] == [(share, share)] * k, (seed, k)


def test_paper_like_split():
    # about 77 AP and 363 NP images, 1-3 images per slide: 5 folds of ~16 AP and ~72 NP
    r = random.Random(1)
    records = []
    s = 0
    for attribute, total in (("AP", 77), ("NP", 363)):
        left = total
        while left:
            n = min(left, r.randint(1, 3))
            records += [ImageRecord(Path(f"{attribute}{s}-{j}.jpeg"), attribute, None, f"s{s}") for j in range(n)]  # fmt: skip
            left -= n
            s += 1
    summary = fold_summary(assign_folds(records, k=5, seed=0))
    assert sum(f["AP"] for f in summary) == 77 and sum(f["NP"] for f in summary) == 363
    assert all(abs(f["AP"] - 77 / 5) <= 3 for f in summary), summary
    assert all(abs(f["NP"] - 363 / 5) <= 3 for f in summary), summary


def test_seed_changes_the_split():
    r = random.Random(3)
    records = random_dataset(r, 30, 2)
    splits = {tuple(o.fold for o in assign_folds(records, k=5, seed=seed)) for seed in range(6)}
    assert len(splits) > 1


@pytest.mark.parametrize("k, slides, match", [(1, 5, "at least 2"), (0, 5, "at least 2"), (4, 3, "from 3 case")])  # fmt: skip
def test_assign_folds_errors(k, slides, match):
    records = [ImageRecord(Path(f"{i}-{j}.jpeg"), "AP", None, f"s{i}") for i in range(slides) for j in range(2)]  # fmt: skip
    with pytest.raises(ValueError, match=match):
        assign_folds(records, k=k)


def test_fold_summary_and_split():
    records = [
        ImageRecord(Path("a.jpeg"), "AP", None, "s1", 0),
        ImageRecord(Path("b.jpeg"), "NP", None, "s1", 0),
        ImageRecord(Path("c.jpeg"), "NP", None, "s2", 0),
        ImageRecord(Path("d.jpeg"), "AP", None, "s3", 2),
        ImageRecord(Path("e.jpeg"), "NP", None, "s4", None),
    ]
    assert fold_summary(records) == [
        {"fold": 0, "AP": 1, "NP": 2, "slides": 2, "cases": 2},
        {"fold": 2, "AP": 1, "NP": 0, "slides": 1, "cases": 1},
    ]
    with pytest.raises(ValueError, match="no fold"):
        split(records, 0)
    train, val = split(records[:4], 0)
    assert [r.image.name for r in val] == ["a.jpeg", "b.jpeg", "c.jpeg"]
    assert [r.image.name for r in train] == ["d.jpeg"]


def test_case_grouping_keeps_slides_of_one_case_together_and_slide_grouping_does_not_have_to():
    # 6 cases of 3 slides each (blocks 1-1, 1-2, 1-3), 2 images per slide
    records = [
        ImageRecord(Path(f"c{c}-b{b}-{j}.jpeg"), "AP" if c % 2 else "NP", None,
                    f"2018_{60000 + c}_1-{b}")
        for c in range(6) for b in range(1, 4) for j in range(2)
    ]  # fmt: skip
    by_case = assign_folds(records, k=3, seed=0)
    assert {r.case_id for r in records} == {f"2018_{60000 + c}" for c in range(6)}
    for c in range(6):
        assert len({r.fold for r in by_case if r.case_id == f"2018_{60000 + c}"}) == 1
    by_slide = assign_folds(records, k=3, seed=0, group="slide")
    for r in by_slide:  # a slide stays together either way
        assert len({o.fold for o in by_slide if o.slide_id == r.slide_id}) == 1
    # with 18 slides in 3 folds, slide grouping splits at least one case
    assert any(
        len({r.fold for r in by_slide if r.case_id == c}) > 1 for c in {r.case_id for r in records}
    )
    with pytest.raises(ValueError, match="group must be"):
        assign_folds(records, k=3, group="patient")  # type: ignore[arg-type]
