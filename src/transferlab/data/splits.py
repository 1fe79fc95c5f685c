"""Stratified, seeded, group-aware splits: hold-out (train / val / test) and K folds.

Images that share a group (the manifest's group column, or byte-identical copies) always land
on the same side, so no duplicate straddles training and evaluation. Splits are written to
`split.csv` so a run can be audited and reproduced.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold, StratifiedKFold

from transferlab.errors import DataError


def holdout_split(labels: np.ndarray, groups: np.ndarray | None = None, *, val_fraction: float,
                  test_fraction: float, seed: int, classes: list[str] | None = None) -> np.ndarray:
    """'train' / 'val' / 'test' per image, stratified by class and seeded.

    Each class's share of val and test is its count times the fraction, rounded (so within one
    image, or one group, of exact); a fraction above zero gets at least one.
    """
    labels = np.asarray(labels)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                        "and leave something to train on")
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    unit_labels = labels[first]  # a group's label is its first image's
    rng = np.random.default_rng(seed)
    unit_split = np.empty(len(unit_labels), dtype=object)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    for label in np.unique(unit_labels):
        members = np.flatnonzero(unit_labels == label)
        if len(members) < needed:
            name = classes[label] if classes else label
            raise DataError(
                f"class '{name}' has {len(members)} image(s): a train/val/test split needs at least {needed}; "
                "add images, set data.val_fraction / data.test_fraction to 0, or use `transferlab cv`"
            )
        members = rng.permutation(members)
        n_test = max(int(test_fraction > 0), round(len(members) * test_fraction))
        n_val = max(int(val_fraction > 0), round(len(members) * val_fraction))
        n_val = min(n_val, len(members) - n_test - 1)
        unit_split[members[:n_test]] = "test"
        unit_split[members[n_test : n_test + n_val]] = "val"
        unit_split[members[n_test + n_val :]] = "train"
    return unit_split[inverse].astype(str)


def check_folds(labels: np.ndarray, folds: int, classes: list[str] | None = None) -> None:
    """Clear errors for fold counts that cannot work with these classes."""
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(labels)
    for label, count in enumerate(counts):
        if 0 < count < folds:
            name = classes[label] if classes else label
            raise DataError(f"class '{name}' has {count} image(s), fewer than --folds {folds}: "
                            f"use at most {int(counts[counts > 0].min())} folds or add images")


def stratified_folds(labels: np.ndarray, groups: np.ndarray | None = None, *, folds: int, repeats: int = 1,
                     seed: int, classes: list[str] | None = None) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(repeat, fold, train_indices, test_indices) for stratified K-fold CV, repeated R times;
    a group never straddles folds."""
    labels = np.asarray(labels)
    check_folds(labels, folds, classes)
    placeholder = np.zeros(len(labels))
    grouped = groups is not None and len(np.unique(groups)) < len(labels)
    out = []
    if grouped:
        for repeat in range(repeats):
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
            for fold, (train, test) in enumerate(splitter.split(placeholder, labels, groups)):
                out.append((repeat, fold, train, test))
        return out
    if repeats > 1:
        splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (train, test) in enumerate(splitter.split(placeholder, labels)):
        out.append((k // folds, k % folds, train, test))
    return out


@rank_zero_only
def write_split_csv(path: str | Path, paths: list[str], labels: list[str], columns: dict[str, list]) -> None:
    """split.csv: path, label and one column per entry of `columns` (split, or repeat and fold)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *columns])
        for row in zip(paths, labels, *columns.values()):
            writer.writerow(row)


def read_split_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
