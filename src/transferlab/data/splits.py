"""Stratified, seeded, group-aware splits: hold-out (train / val / test) and K folds.

Images that share a group (the manifest's group column, or byte-identical copies) always land
on the same side, so no duplicate straddles training and evaluation. Splits are written to
`split.csv` so a run can be audited and reproduced.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.fabric.utilities.rank_zero import rank_zero_only
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold, StratifiedKFold

from transferlab.errors import DataError
from transferlab.io import atomic_write


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
    if labels.ndim == 2:
        return multilabel_holdout(labels, groups, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
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


def group_rows(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(one 0/1 row per group: the union of its images' labels, each image's group number)."""
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    units = np.zeros((inverse.max() + 1 if len(inverse) else 0, labels.shape[1]), dtype=np.int64)
    np.maximum.at(units, inverse, labels)
    return units, inverse


def multilabel_holdout(labels: np.ndarray, groups: np.ndarray | None, *, val_fraction: float, test_fraction: float,
                       seed: int) -> np.ndarray:
    """'train' / 'val' / 'test' per image of a multi-label set (0/1 rows): iterative stratification (Sechidis,
    Tsoumakas, Vlahavas 2011; iterstrat's MultilabelStratifiedShuffleSplit) over groups, each group with the
    union of its images' labels, so a group stays on one side."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    units, inverse = group_rows(labels, groups)
    unit_split = np.full(len(units), "train", dtype=object)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if len(units) < needed:
        raise DataError(f"{len(units)} image(s) (or groups): a train/val/test split needs at least {needed}; add images, "
                        "or set data.val_fraction / data.test_fraction to 0")
    rest = np.arange(len(units))
    for name, fraction, of in (("test", test_fraction, 1.0), ("val", val_fraction, 1.0 - test_fraction)):
        if fraction <= 0:
            continue
        share = min(max(fraction / of, 1 / len(rest)), (len(rest) - 1) / len(rest))
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=share, random_state=seed)
        keep, held = next(splitter.split(np.zeros(len(rest)), units[rest]))
        unit_split[rest[held]] = name
        rest = rest[keep]
    return unit_split[inverse].astype(str)


def multilabel_folds(labels: np.ndarray, groups: np.ndarray | None, *, folds: int, repeats: int, seed: int
                     ) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(repeat, fold, train, test) by iterative stratification (iterstrat's MultilabelStratifiedKFold) over
    groups, reshuffled per repeat."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    units, inverse = group_rows(labels, groups)
    if len(units) < folds:
        raise DataError(f"{len(units)} image(s) (or groups), fewer than --folds {folds}: use fewer folds or add images")
    out = []
    for repeat in range(repeats):
        splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + repeat)
        for fold, (_, test_units) in enumerate(splitter.split(np.zeros(len(units)), units)):
            test = np.flatnonzero(np.isin(inverse, test_units))
            out.append((repeat, fold, np.setdiff1d(np.arange(len(labels)), test), test))
    return out


def check_folds(labels: np.ndarray, folds: int, classes: list[str] | None = None) -> None:
    """Clear errors for fold counts that cannot work with these classes."""
    if folds < 2:
        raise DataError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if np.asarray(labels).ndim == 2:
        return  # multi-label: any label may be rare; iterative stratification spreads what there is
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
    if labels.ndim == 2:
        return multilabel_folds(labels, groups, folds=folds, repeats=repeats, seed=seed)
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
    """split.csv: path, label and one column per entry of `columns` (split, or repeat and fold), written
    atomically (a run resumes from any point: it must never find half a split)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", *columns])
    for row in zip(paths, labels, *columns.values()):
        writer.writerow(row)
    text = buffer.getvalue().encode("utf-8")
    atomic_write(Path(path), lambda handle: handle.write(text), durable=True)


def read_split_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@dataclass(frozen=True)
class Part:
    """One split of a run's images (train: the run itself; cv: a fold): its parts by position in the
    data set, the folder it is written in, and where it sits among the folds."""

    name: str
    indices: dict[str, np.ndarray]  # "train" / "val" / "test"
    folder: Path
    repeat: int = 0
    fold: int = 0


class Splitter:
    """Makes, writes and reads the splits of a run, as scikit-learn's `split()` yields folds: `train` one
    stratified hold-out (train / val / test), `cv` K stratified folds (R times), each with an inner
    validation split that picks its checkpoints. Groups (a manifest's group column, byte-identical copies)
    never straddle. A new run writes split.csv (and each fold's folds/<name>/split.csv); a resumed run
    reads them back, so it keeps the split it started with."""

    def __init__(self, kind: str, config):
        self.kind, self.config = kind, config

    def describe(self, dataset) -> dict:
        """What the record says about the split (method, fractions or folds, seed, grouping)."""
        data, grouped = self.config.data, len(np.unique(dataset.groups)) < len(dataset)
        multi = dataset.labels.ndim == 2
        if self.kind == "train":
            return {"method": "iterative stratification (hold-out)" if multi else "stratified hold-out",
                    "val_fraction": data.val_fraction,
                    "test_fraction": data.test_fraction, "seed": self.config.seed, "grouped": grouped}
        cv = self.config.cv
        method = "MultilabelStratifiedKFold" if multi else "StratifiedGroupKFold" if grouped else \
            "RepeatedStratifiedKFold" if cv.repeats > 1 else "StratifiedKFold"
        return {"method": method, "folds": cv.folds, "repeats": cv.repeats, "seed": self.config.seed,
                "inner_val_fraction": data.val_fraction, "grouped": grouped}

    def split(self, dataset, run_dir: Path, *, fresh: bool) -> list[Part]:
        """The run's parts: made and written when `fresh`, read back from run_dir when resumed."""
        run_dir = Path(run_dir)
        if self.kind == "train":
            parts = self.holdout(dataset, run_dir) if fresh else read_column(dataset, run_dir / "split.csv", "split")
            return [Part("run", {name: np.flatnonzero(parts == name) for name in ("train", "val", "test")}, run_dir)]
        return [self.fold(dataset, run_dir, repeat, fold, test) for repeat, fold, test in self.folds(dataset, run_dir,
                                                                                                       fresh)]

    def holdout(self, dataset, run_dir: Path) -> np.ndarray:
        data = self.config.data
        parts = holdout_split(dataset.labels, dataset.groups, val_fraction=data.val_fraction,
                              test_fraction=data.test_fraction, seed=self.config.seed, classes=dataset.classes)
        write_split_csv(run_dir / "split.csv", dataset.paths, dataset.label_text(), {"split": list(parts)})
        return parts

    def folds(self, dataset, run_dir: Path, fresh: bool) -> list[tuple[int, int, np.ndarray]]:
        """(repeat, fold, test positions) of every fold; split.csv holds the fold each image is tested in
        (one column per repeat)."""
        cv, repeats = self.config.cv, self.config.cv.repeats
        columns = ["fold"] if repeats == 1 else [f"fold_r{r + 1}" for r in range(repeats)]
        if fresh:
            made = stratified_folds(dataset.labels, dataset.groups, folds=cv.folds, repeats=repeats,
                                    seed=self.config.seed, classes=dataset.classes)
            assigned = {column: [0] * len(dataset) for column in columns}
            for repeat, fold, _, test in made:
                for i in test:
                    assigned[columns[repeat]][i] = fold + 1
            write_split_csv(run_dir / "split.csv", dataset.paths, dataset.label_text(), assigned)
            return [(repeat, fold, test) for repeat, fold, _, test in made]
        out = []
        for repeat, column in enumerate(columns):
            numbers = read_column(dataset, run_dir / "split.csv", column).astype(np.int64)
            out += [(repeat, k - 1, np.flatnonzero(numbers == k)) for k in range(1, cv.folds + 1)]
        return out

    def fold(self, dataset, run_dir: Path, repeat: int, fold: int, test: np.ndarray) -> Part:
        """A cv fold: its training part cut into train and an inner validation split (seeded per fold),
        its held-out part, and its folder, whose split.csv records the three (read back when there)."""
        name = f"r{repeat + 1}-fold{fold + 1}" if self.config.cv.repeats > 1 else f"fold{fold + 1}"
        folder = run_dir / "folds" / name
        train = np.setdiff1d(np.arange(len(dataset)), test)
        if (folder / "split.csv").is_file():
            part = read_column(dataset, folder / "split.csv", "part", rows=np.concatenate([train, test]))
            order = np.concatenate([train, test])
            return Part(name, {k: np.sort(order[part == k]) for k in ("train", "val", "test")}, folder, repeat, fold)
        val_fraction = self.config.data.val_fraction
        inner = (holdout_split(dataset.labels[train], dataset.groups[train], val_fraction=val_fraction,
                               test_fraction=0.0, seed=self.config.seed + 1000 * repeat + fold,
                               classes=dataset.classes)
                 if val_fraction > 0 else np.array(["train"] * len(train)))
        indices = {"train": train[inner == "train"], "val": train[inner == "val"], "test": test}
        order = np.concatenate(list(indices.values()))
        folder.mkdir(parents=True, exist_ok=True)
        write_split_csv(folder / "split.csv", [dataset.paths[i] for i in order],
                        dataset.label_text(order),
                        {"part": [k for k, v in indices.items() for _ in v]})
        return Part(name, indices, folder, repeat, fold)


def read_column(dataset, path: Path, column: str, rows: np.ndarray | None = None) -> np.ndarray:
    """`column` of split.csv at `path` for the images at `rows` (default: all) of `dataset`, by path;
    a missing, damaged or foreign file is a RunError saying what to do."""
    from transferlab.errors import RunError

    rows = np.arange(len(dataset)) if rows is None else rows
    if not path.is_file():
        raise RunError(f"{path} is missing: a resumed run must keep its split; restore the file, or start a new run")
    try:
        by_path = {row["path"]: row[column] for row in read_split_csv(path)}
    except (KeyError, ValueError, UnicodeDecodeError):
        raise RunError(f"{path} is damaged (not a path,label,{column} table): restore it, or start a new run") from None
    missing = [dataset.paths[i] for i in rows if dataset.paths[i] not in by_path]
    if missing or len(by_path) != len(rows):
        raise RunError(f"the data changed since {path.parent} started ({len(missing)} images not in its split.csv): "
                       "resume with the same data, or start a new run")
    return np.array([by_path[dataset.paths[i]] for i in rows])
