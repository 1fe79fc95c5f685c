"""The data audit: likely label errors, near-duplicates (and leakage across a run's splits), outliers, and
what an unfamiliar input is, from the evidence a run already has.

- Likely label errors: held-out probabilities (the search's out-of-fold predictions of its chosen ensemble;
  else the final model's validation and test predictions; `transferlab audit`: a cross-fitted probe on the
  backbone's features) through cleanlab's `find_label_issues`, ranked by self-confidence (the probability the
  model gives the label it was given).
- Near-duplicates: data/near.py on the decoded images; a group with members in more than one of a run's splits
  is leakage (`data.dedupe=near` keeps each group in one split instead).
- Outliers: cleanlab's `OutOfDistribution` on the backbone's pooled features (the mean distance to the k
  nearest images; a lower score is more unlike the rest).
- Unfamiliar inputs (`Familiarity`): a served image's mean cosine distance to its k nearest training images'
  features, flagged past the threshold that flags `audit.false_alarm` of held-out training images.
"""

from __future__ import annotations

import functools

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.tasks import Task

AUDIT_VERSION = 1
REFERENCE_CAP = 5000  # training images a Familiarity keeps (seeded sample): its kNN costs one product each


def label_issues(labels: np.ndarray, probs: np.ndarray, task: Task, rows: np.ndarray, paths: list[str],
                 classes: list[str], limit: int, on: str) -> dict:
    """cleanlab's likely label errors among `rows` (whose held-out `probs` these are), ranked by self-confidence."""
    from cleanlab.filter import find_label_issues

    y = labels[rows]
    multi = y.ndim == 2
    given = [list(np.flatnonzero(r)) for r in y] if multi else y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            flagged = find_label_issues(given, probs, return_indices_ranked_by="self_confidence", multi_label=multi,
                                        n_jobs=1)
        except (ValueError, IndexError, ZeroDivisionError) as exc:  # too few images of a class to estimate noise
            return {"on": on, "images": int(len(rows)), "count": None, "items": [],
                    "note": f"cleanlab could not estimate label noise here ({' '.join(str(exc).split())[:160]})"}
        scores = quality(given, probs, multi)
    decided = task.decide(probs)
    items = []
    for k in flagged[:limit]:
        row = int(rows[k])
        if multi:
            entry = {"given": [classes[c] for c in given[k]], "suggested": [classes[c] for c in np.flatnonzero(decided[k])]}
        else:
            entry = {"given": classes[int(y[k])], "suggested": classes[int(decided[k])],
                     "suggested_probability": round(float(probs[k, decided[k]]), 4)}
        items.append({"index": row, "path": paths[row], **entry, "score": round(float(scores[k]), 4)})
    return {"on": on, "images": int(len(rows)), "count": int(len(flagged)),
            "share": round(len(flagged) / max(1, len(rows)), 4), "items": items,
            "method": "cleanlab.filter.find_label_issues (prune_by_noise_rate), ranked by self-confidence: the "
                      "probability given to the label the image has (lower: more likely wrong)"}


def quality(given, probs: np.ndarray, multi: bool) -> np.ndarray:
    if multi:
        from cleanlab.multilabel_classification.rank import get_label_quality_scores

        return get_label_quality_scores(given, probs)
    from cleanlab.rank import get_label_quality_scores

    return get_label_quality_scores(np.asarray(given), probs, method="self_confidence")


def duplicates(pairs: list[tuple[int, int, float]], paths: list[str], label_text: list[str],
               parts: np.ndarray | None, similarity: float) -> dict:
    """The near-duplicate groups of `pairs` with each member's label and split; a group across splits is leakage."""
    from transferlab.data.near import groups_of

    members: dict[int, set[int]] = {}
    if pairs:
        ids = groups_of(len(paths), pairs)
        for i, j, _ in pairs:
            members.setdefault(int(ids[i]), set()).update((i, j))
    best = {}
    for i, j, s in pairs:
        best[i], best[j] = max(best.get(i, 0.0), s), max(best.get(j, 0.0), s)
    groups = []
    for rows in members.values():
        rows = sorted(rows)
        splits = sorted({str(parts[r]) for r in rows}) if parts is not None else []
        labels = sorted({label_text[r] for r in rows})
        groups.append({"members": [{"index": r, "path": paths[r], "label": label_text[r],
                                    **({"split": str(parts[r])} if parts is not None else {}),
                                    "similarity": round(best[r], 4)} for r in rows],
                       "labels_differ": len(labels) > 1, "leak": len(splits) > 1})
    groups.sort(key=lambda g: (not g["leak"], not g["labels_differ"], g["members"][0]["path"]))
    leaks = [g for g in groups if g["leak"]]
    return {"pairs": [{"a": paths[i], "b": paths[j], "similarity": round(s, 4)} for i, j, s in pairs],
            "groups": groups, "images": sum(len(g["members"]) for g in groups),
            "leakage": {"groups": len(leaks), "images": sum(len(g["members"]) for g in leaks)} if parts is not None
            else None, "similarity": similarity,
            "method": "blurred grey pixels correlated, best over small crops, verified for candidates from "
                      "thumbnails' nearest neighbours and perceptual hashes (imagehash pHash)"}


def outliers(features: np.ndarray, rows: np.ndarray, paths: list[str], label_text: list[str], k: int, top: int,
             seed: int = 0) -> dict:
    """The `top` images of `rows` most unlike the rest: cleanlab's OutOfDistribution scores on their features, with
    the neighbours among a seeded sample of REFERENCE_CAP images (SampledNeighbors): every image against all others
    cost 3 minutes at 60,000 images (cleanlab's default kNN) or 52 s (a plain product); against 5,000, seconds."""
    from cleanlab.outlier import OutOfDistribution

    if len(rows) <= k + 1:
        return {"images": int(len(rows)), "items": [], "note": f"too few images for {k} neighbours"}
    features = np.asarray(features, np.float32)
    knn = sampled_neighbours()(n_neighbors=k, metric="cosine").fit_sample(features, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = OutOfDistribution(params={"knn": knn, "k": k}).score(features=features)
    order = np.argsort(scores, kind="stable")[:top]
    return {"images": int(len(rows)), "k": k, "reference": int(len(knn.rows)),
            "items": [{"index": int(rows[o]), "path": paths[rows[o]], "label": label_text[rows[o]],
                       "score": round(float(scores[o]), 4)} for o in order],
            "method": "cleanlab.outlier.OutOfDistribution on the backbone's pooled features: exp(-mean cosine "
                      f"distance to the k nearest of {len(knn.rows):,} images); lower is more unlike the rest"}


@functools.cache
def sampled_neighbours():
    """The kNN class cleanlab's OutOfDistribution reads (its `knn` parameter takes a fitted NearestNeighbors, or a
    subclass for faster neighbours): cosine distances of each query to its nearest among a seeded sample of at most
    REFERENCE_CAP of the fitted rows, an image never its own neighbour (nearest_of: torch's top-k)."""
    from sklearn.neighbors import NearestNeighbors

    class SampledNeighbours(NearestNeighbors):
        def fit_sample(self, features: np.ndarray, seed: int):
            n = len(features)
            self.rows = (np.sort(np.random.default_rng(seed).choice(n, REFERENCE_CAP, replace=False))
                         if n > REFERENCE_CAP else np.arange(n))
            self.reference, self.fitted, self.memo = unit(features[self.rows]), features, None
            self.n_samples_fit_ = len(self.rows)
            return self

        def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
            k = n_neighbors or self.n_neighbors
            if self.memo is None or self.memo[0] is not X or self.memo[1] != k:  # cleanlab asks twice
                itself = X is None or X is self.fitted  # the fitted rows: none is its own neighbour
                found = nearest_of(self.reference, unit(self.fitted if X is None else X), k,
                                   self.rows if itself else None)
                self.memo = (X, k, found)
            return self.memo[2] if return_distance else self.memo[2][1]

    return SampledNeighbours


def nearest_of(reference: np.ndarray, queries: np.ndarray, k: int, rows: np.ndarray | None = None):
    """(cosine distances, reference positions) of each unit query row's k nearest unit reference rows, nearest
    first; with `rows` (the queries are the whole set and the reference its rows `rows`), a query is never its own
    neighbour. By blocks, with torch's top-k (a partition of each block was several times slower)."""
    import torch

    k = int(min(k, len(reference) - (rows is not None)))
    ref = torch.from_numpy(np.ascontiguousarray(reference, np.float32))
    own = None
    if rows is not None:
        own = np.full(len(queries), -1, np.int64)
        own[rows] = np.arange(len(rows))
    distances, positions = np.empty((len(queries), k), np.float32), np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 2048):
        block = torch.from_numpy(np.ascontiguousarray(queries[start:start + 2048], np.float32)) @ ref.T
        if own is not None:
            mine = own[start:start + 2048]
            hit = np.flatnonzero(mine >= 0)
            block[torch.from_numpy(hit), torch.from_numpy(mine[hit])] = -torch.inf
        top = block.topk(k, dim=1)
        distances[start:start + 2048] = np.clip(1.0 - top.values.numpy(), 0.0, 2.0)
        positions[start:start + 2048] = top.indices.numpy()
    return distances, positions


@dataclass
class Familiarity:
    """Is an input like the training images? Their L2-normalised features (a seeded sample), k, and the
    threshold on the mean cosine distance to the k nearest past which an input is `unfamiliar`."""

    reference: np.ndarray  # (R, D) float32, unit rows
    k: int
    threshold: float
    record: dict  # size, normalization, how the threshold was set, what it flags on the test split

    @staticmethod
    def fit(train: np.ndarray, held: np.ndarray | None, *, k: int, false_alarm: float, seed: int,
            size: int, normalize: tuple) -> Familiarity:
        """From training features and held-out ones (the validation split; none: the training images themselves,
        each against the others): the threshold flags `false_alarm` of the held-out images."""
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(train), REFERENCE_CAP, replace=False)) if len(train) > REFERENCE_CAP else None
        reference = unit(train if keep is None else train[keep])
        k = int(min(k, len(reference) - 1))
        if held is not None and len(held) >= 50:
            scores, on = knn_distance(reference, unit(held), k), f"validation split ({len(held):,} images)"
        else:
            scores, on = knn_distance(reference, reference, k, itself=True), \
                f"the training images, each against the others ({len(reference):,})"
        threshold = float(np.quantile(scores, 1 - false_alarm))
        return Familiarity(reference, k, threshold,
                           {"size": size, "normalize": [list(map(float, v)) for v in normalize], "k": k,
                            "threshold": round(threshold, 6), "false_alarm": false_alarm, "set_on": on,
                            "reference_images": int(len(reference)),
                            "score": "mean cosine distance of the input's pooled features (the pretrained backbone "
                                     "at size) to its k nearest training images'"})

    def scores(self, features: np.ndarray) -> np.ndarray:
        return knn_distance(self.reference, unit(features), self.k)

    def flags(self, features: np.ndarray) -> list[dict]:
        return [{"unfamiliar": bool(s > self.threshold), "unfamiliarity": round(float(s), 6)}
                for s in self.scores(features)]

    def save(self, folder: Path) -> None:
        from transferlab.io import atomic_write, write_json

        atomic_write(folder / "familiar.npy",
                     lambda handle: np.save(handle, self.reference.astype(np.float16), allow_pickle=False))
        write_json(folder / "familiar.json", self.record | {"version": AUDIT_VERSION})

    @staticmethod
    def load(folder: Path) -> Familiarity | None:
        import json

        if not (folder / "familiar.json").is_file():
            return None
        record = json.loads((folder / "familiar.json").read_text(encoding="utf-8"))
        reference = np.load(folder / "familiar.npy", allow_pickle=False).astype(np.float32)
        return Familiarity(reference, int(record["k"]), float(record["threshold"]), record)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def knn_distance(reference: np.ndarray, queries: np.ndarray, k: int, *, itself: bool = False) -> np.ndarray:
    """Per query row, the mean cosine distance to its k nearest reference rows (`itself`: the queries are the
    reference, and each row's own match is left out)."""
    rows = np.arange(len(reference)) if itself else None
    return nearest_of(reference, queries, k, rows)[0].astype(np.float64).mean(axis=1)


def summary_lines(audit: dict) -> list[str]:
    """The audit in a few console lines."""
    lines = []
    issues = audit.get("label_issues") or {}
    if issues.get("count") is not None:
        lines.append(f"likely label errors: {issues['count']:,} of {issues['images']:,} images ({issues['share']:.1%}; "
                     f"on {issues['on']})" + "".join(f"\n  {i['path']}: labelled {fmt_label(i['given'])}, looks like "
                                                     f"{fmt_label(i['suggested'])} (score {i['score']:.3f})"
                                                     for i in issues["items"][:5]))
    elif issues:
        lines.append(f"likely label errors: not estimated ({issues.get('note')})")
    dup = audit.get("duplicates") or {}
    if dup:
        leak = dup.get("leakage")
        lines.append(f"near-duplicates: {len(dup['groups']):,} groups, {dup['images']:,} images"
                     + (f"; {leak['groups']:,} groups straddle splits (leakage: {leak['images']:,} images)" if leak
                        else "")
                     + "".join(f"\n  {' = '.join(m['path'] + (' [' + m['split'] + ']' if 'split' in m else '') for m in g['members'])}"
                               for g in dup["groups"][:5]))
    out = audit.get("outliers") or {}
    if out.get("items"):
        lines.append(f"outliers (most unlike the rest of {out['images']:,} images): "
                     + ", ".join(f"{i['path']} ({i['score']:.3f})" for i in out["items"][:5]))
    return lines


def fmt_label(value) -> str:
    return ("[" + ", ".join(value) + "]") if isinstance(value, list) else str(value)


def near_of(dataset, config, *, progress: bool = False) -> list[tuple[int, int, float]]:
    """The near-duplicate pairs of `dataset`'s decoded images, found once per dataset (data.dedupe=near and
    the audit share them)."""
    found = getattr(dataset, "near_pairs", None)
    if found is None or found[0] != config.audit.similarity:
        from transferlab.data.near import near_pairs

        show = None
        if progress:
            from transferlab.console import info

            def show(done: int, total: int) -> None:
                if done == total or done % 5000 == 1:
                    info(f"near-duplicates: {done:,} of {total:,} candidate images checked")

        images = dataset.images
        pairs = near_pairs([images[i] for i in range(len(dataset))], similarity=config.audit.similarity,
                           progress=show)
        dataset.near_pairs = found = (config.audit.similarity, pairs)
    return found[1]


def keep_near_together(dataset, config, *, progress: bool = False) -> int:
    """data.dedupe=near: every near-duplicate group joins one split group (as byte-identical copies do).
    Returns how many images changed group."""
    from transferlab.data.near import groups_of

    pairs = near_of(dataset, config, progress=progress)
    if not pairs:
        return 0
    n_groups = int(dataset.groups.max()) + 1
    merged = groups_of(n_groups, [(int(dataset.groups[i]), int(dataset.groups[j]), s) for i, j, s in pairs])
    before = dataset.groups.copy()
    dataset.groups = merged[dataset.groups]
    return int((np.bincount(dataset.groups)[dataset.groups] != np.bincount(before)[before]).sum())


def parts_of(n: int, indices: dict) -> np.ndarray:
    parts = np.full(n, "unused", dtype=object)
    for name, rows in indices.items():
        parts[np.asarray(rows, dtype=np.int64)] = name
    return parts


def audit_size(result, ctx) -> int:
    """The size the audit's features are read at: that of the heaviest ensemble member on the pretrained backbone
    (its features are in the store already), else the run's."""
    heads = [(w, m.ctx.size) for w, m in result.members if m.stages[m.selected].kind == "head"]
    return max(heads)[1] if heads else ctx.size


def audit_run(result, ctx, held_out: Path, predictions, *, progress: bool = False) -> tuple[dict, Familiarity]:
    """A train run's audit (audit.json) and its Familiarity (model/), from what the run has: the search's
    held-out predictions (`held_out`, when it searched) or the final model's validation and test ones, the
    feature store, the decoded images."""
    dataset, config = ctx.dataset, ctx.config
    task = dataset.task
    if held_out.is_file():
        saved = np.load(held_out, allow_pickle=False)
        rows, probs = saved["rows"], task.calibrate(saved["probs"])
        on = f"out-of-fold predictions of the search's chosen ensemble ({len(rows):,} images)"
        test = ctx.indices.get("test", np.zeros(0, np.int64))
        if len(test) and predictions.probs:  # the test split, held out from the final model too
            where = [k for k, part in enumerate(predictions.part) if part == "test"]
            rows = np.concatenate([rows, test])
            probs = np.concatenate([probs, np.concatenate(predictions.probs)[where]])
            on += f" and the final model's test predictions ({len(test):,})"
    else:
        parts = [p for p in ("val", "test") if len(ctx.indices.get(p, ())) > 0]
        rows = np.concatenate([ctx.indices[p] for p in parts]) if parts else np.zeros(0, np.int64)
        probs = np.concatenate(predictions.probs) if parts else np.zeros((0, len(dataset.classes)))
        on = f"the final model's {' and '.join(parts) or 'no'} predictions ({len(rows):,} held-out images)"
    size = audit_size(result, ctx)
    normalize = (ctx.normalizer.mean, ctx.normalizer.std)
    features = ctx.features.get(None, size=size, normalize=normalize, taps=0).numpy()
    split = parts_of(len(dataset), ctx.indices)
    audit = findings(dataset, config, rows=rows, probs=probs, on=on, features=features, split=split,
                     progress=progress)
    val = ctx.indices.get("val")
    familiarity = Familiarity.fit(features[ctx.indices["train"]],
                                  features[val] if val is not None and len(val) else None,
                                  k=config.audit.neighbours, false_alarm=config.audit.false_alarm, seed=config.seed,
                                  size=size, normalize=normalize)
    test = ctx.indices.get("test")
    if test is not None and len(test):
        familiarity.record["flagged_test"] = round(float((familiarity.scores(features[test]) >
                                                          familiarity.threshold).mean()), 4)
    audit["unfamiliar"] = familiarity.record
    return audit, familiarity


def findings(dataset, config, *, rows, probs, on, features, split=None, progress=False) -> dict:
    """The three findings on `dataset`: label issues (held-out `probs` of `rows`), near-duplicates (with each
    member's `split`), outliers (`features` of every image)."""
    text = dataset.label_text()
    every = np.arange(len(dataset))
    return {"version": AUDIT_VERSION, "images": len(dataset),
            "label_issues": label_issues(dataset.labels, probs, dataset.task, rows, dataset.paths, dataset.classes,
                                         config.audit.label_issues, on) if len(rows) else
            {"on": on, "images": 0, "count": None, "items": [], "note": "no held-out predictions"},
            "duplicates": duplicates(near_of(dataset, config, progress=progress), dataset.paths, text, split,
                                     config.audit.similarity),
            "outliers": outliers(features, every, dataset.paths, text, config.audit.neighbours,
                                 config.audit.outliers)}


def cv_audit(dataset, config, probs: np.ndarray, parts: np.ndarray, *, progress: bool = False) -> dict:
    """A cv run's audit: label issues on every image's out-of-fold predictions (the mean over repeats), near-
    duplicates with each member's test fold (a group across folds is leakage), outliers on the backbone's
    features at the run's size."""
    from transferlab.features import FeatureStore

    size = config.model.size or config.preprocess.size
    features = FeatureStore(dataset, config, progress=progress).get(None, size=size, taps=0).numpy()
    return findings(dataset, config, rows=np.arange(len(dataset)), probs=probs, features=features, split=parts,
                    on=f"the out-of-fold predictions of the cv's folds ({len(dataset):,} images)", progress=progress)


def audit_data(spec: str, config, *, progress: bool = True) -> dict:
    """`transferlab audit DATA`: decode, the pretrained backbone's features at its size, out-of-fold
    probabilities of a cross-fitted logistic probe on them (5 stratified, grouped folds), the findings."""
    from transferlab.data import load_dataset
    from transferlab.features import FeatureStore
    from transferlab.search.evidence import evidence_folds

    dataset = load_dataset(spec, config, progress=progress, compact=True)
    dataset.require_classes()
    size = config.model.size or config.preprocess.size
    store = FeatureStore(dataset, config, progress=progress)
    features = store.get(None, size=size, taps=0).numpy()
    folds = evidence_folds(dataset.labels, dataset.groups, config.seed, k=5)
    if progress:
        from transferlab.console import info

        info(f"cross-fitting the linear probe on {len(dataset):,} images ({len(folds)} folds)")
    probs, chosen = cross_fitted(features, dataset.labels, folds, dataset.task, len(dataset.classes))
    on = (f"out-of-fold predictions of the linear probe ({chosen}) on the backbone's features at {size} px "
          f"({len(folds)} folds)")
    audit = findings(dataset, config, rows=np.arange(len(dataset)), probs=probs, on=on, features=features,
                     progress=progress)
    audit["data"] = {"source": spec, "classes": dataset.classes, "size": size}
    return audit


def cross_fitted(x: np.ndarray, labels: np.ndarray, folds, task: Task, k: int) -> tuple[np.ndarray, str]:
    """(out-of-fold probabilities, which C) of the tool's own linear probe (the search's cheap candidate: L2
    logistic regression, one-vs-rest per label for multi-label) on the features, at the C of its grid whose
    out-of-fold log loss is lowest."""
    import torch

    from transferlab.strategies.linear_probe import C_GRID, out_of_fold

    probs = out_of_fold(torch.as_tensor(x), labels, k, folds, C_GRID, task=task)
    losses = [task.log_loss(p, labels) for p in probs]
    best = int(np.argmin(losses))
    return probs[best], f"C={C_GRID[best]:g}"
