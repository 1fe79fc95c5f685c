"""Stratified, seeded, group-aware hold-out splits and K folds."""

from __future__ import annotations

import numpy as np
import pytest

from transferlab.data.splits import holdout_split, read_split_csv, stratified_folds, write_split_csv
from transferlab.errors import DataError


def labels_of(counts):
    return np.repeat(np.arange(len(counts)), counts)


@pytest.mark.parametrize("counts", [[50, 50], [7, 13, 101], [3, 4, 5, 30], [1000, 10]])
@pytest.mark.parametrize("fractions", [(0.15, 0.15), (0.2, 0.0), (0.1, 0.3)])
def test_holdout_is_stratified_within_one_image_per_class(counts, fractions):
    labels = labels_of(counts)
    val_fraction, test_fraction = fractions
    split = holdout_split(labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=3)
    for label, n in enumerate(counts):
        mine = split[labels == label]
        forced = any(0 < f and n * f < 0.5 for f in fractions)
        for name, fraction in (("val", val_fraction), ("test", test_fraction),
                               ("train", 1 - val_fraction - test_fraction)):
            got = int((mine == name).sum())
            if name != "train" and fraction > 0 and n * fraction < 0.5:
                assert got == 1  # a fraction above zero always gets one image
            elif not (forced and name == "train"):
                assert abs(got - n * fraction) <= 1 + 1e-9, (label, name, got, n * fraction)


def test_holdout_is_seeded():
    labels = labels_of([30, 30, 30])
    a = holdout_split(labels, val_fraction=0.2, test_fraction=0.2, seed=1)
    b = holdout_split(labels, val_fraction=0.2, test_fraction=0.2, seed=1)
    c = holdout_split(labels, val_fraction=0.2, test_fraction=0.2, seed=2)
    assert (a == b).all() and (a != c).any()


def test_holdout_keeps_groups_together():
    labels = labels_of([40, 40])
    groups = np.arange(80) // 4  # 20 groups of 4
    split = holdout_split(labels, groups, val_fraction=0.25, test_fraction=0.25, seed=0)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1


def test_holdout_names_a_class_that_is_too_small():
    with pytest.raises(DataError, match="class 'rare' has 2 image"):
        holdout_split(labels_of([10, 2]), val_fraction=0.1, test_fraction=0.1, seed=0, classes=["common", "rare"])


@pytest.mark.parametrize("counts,folds", [([50, 50], 5), ([7, 13, 101], 5), ([10, 11, 12], 10)])
def test_folds_are_disjoint_cover_everything_and_stratified(counts, folds):
    labels = labels_of(counts)
    splits = stratified_folds(labels, folds=folds, seed=0)
    assert len(splits) == folds
    seen = np.zeros(len(labels), int)
    for _, _, train, test in splits:
        assert not set(train) & set(test)
        assert len(train) + len(test) == len(labels)
        seen[test] += 1
        for label, n in enumerate(counts):
            assert abs((labels[test] == label).sum() - n / folds) <= 1
    assert (seen == 1).all()


def test_repeated_folds_differ_between_repeats_and_are_seeded():
    labels = labels_of([20, 20])
    splits = stratified_folds(labels, folds=4, repeats=3, seed=0)
    assert [(r, f) for r, f, _, _ in splits] == [(r, f) for r in range(3) for f in range(4)]
    first = [tuple(sorted(t)) for r, _, _, t in splits if r == 0]
    second = [tuple(sorted(t)) for r, _, _, t in splits if r == 1]
    assert first != second
    again = stratified_folds(labels, folds=4, repeats=3, seed=0)
    assert all((a[3] == b[3]).all() for a, b in zip(splits, again))


def test_group_folds_never_split_a_group():
    labels = labels_of([60, 60])
    groups = np.arange(120) // 3
    for _, _, train, test in stratified_folds(labels, groups, folds=5, seed=0):
        assert not set(groups[train]) & set(groups[test])


def test_fold_errors_name_the_problem():
    with pytest.raises(DataError, match="at least 2 folds"):
        stratified_folds(labels_of([5, 5]), folds=1, seed=0)
    with pytest.raises(DataError, match="class 'b' has 3 image.*fewer than --folds 5"):
        stratified_folds(labels_of([10, 3]), folds=5, seed=0, classes=["a", "b"])


def test_split_csv_roundtrip(tmp_path):
    write_split_csv(tmp_path / "split.csv", ["a/1.png", "b/2,x.png"], ["a", "b"], {"split": ["train", "test"]})
    rows = read_split_csv(tmp_path / "split.csv")
    assert rows == [{"path": "a/1.png", "label": "a", "split": "train"},
                    {"path": "b/2,x.png", "label": "b", "split": "test"}]


def test_split_csv_is_never_left_half_written(tmp_path):
    """A run resumes from any point, so split.csv must be whole or absent: a write that fails midway (a
    full disk, Ctrl-C) leaves the previous file as it was and no partial one."""
    path = tmp_path / "split.csv"
    write_split_csv(path, ["a.png", "b.png"], ["a", "b"], {"split": ["train", "test"]})
    before = path.read_bytes()

    def labels():
        yield "a"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_split_csv(path, ["a.png", "b.png", "c.png"], labels(), {"split": ["train", "val", "test"]})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["split.csv"]
