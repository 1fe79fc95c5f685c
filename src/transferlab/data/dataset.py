"""Load a data source once: validate every image, decode it into the cache, find duplicates.

`load_dataset` is the one entry point: it lists the source, keeps a seeded per-class subset
if asked, decodes every image once (in parallel, with a progress bar), and returns an
`ImageDataset` whose `images` store every later step reads. Files that cannot be used are
in `skipped` with the reason; nothing is dropped without a line saying why.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferlab.config import Config
from transferlab.data.cache import DecodingStore, DiskCache, DiskStore, ImageStore, MemoryStore, trim_cache
from transferlab.data.decode import BadImage, Limits, content_hash, decode_array, decode_file, read_file
from transferlab.data.items import Item, Source, cache_root
from transferlab.data.sources import open_source
from transferlab.errors import DataError
from transferlab.preprocess import ResizeSpec, channel_stats, resize_spec
from transferlab.tasks import SINGLE, Task


@dataclass
class ImageDataset:
    """Decoded, validated images with their labels, and the record of what was left out."""

    source: str
    classes: list[str]
    paths: list[str]
    labels: np.ndarray  # int64 index into classes (N,); a multi-label set's 0/1 rows (N, K)
    groups: np.ndarray  # int64: images sharing a group never straddle a split or fold
    images: ImageStore
    records: list[dict]  # per image: format, mode, width, height, bytes, sha256
    spec: ResizeSpec
    cache: str  # memory | disk | none
    skipped: list[dict] = field(default_factory=list)
    ignored: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    task: Task = SINGLE  # the label space (tasks.py): what the labels mean

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def counts(self) -> dict[str, int]:
        """Images per class (a multi-label set's: images that have each label)."""
        return dict(zip(self.classes, count_labels(self.labels, len(self.classes))))

    def label_text(self, rows=None) -> list[str]:
        """Each image's label as split.csv and predictions.csv write it (a multi-label image's names joined by ;)."""
        labels = self.labels if rows is None else self.labels[rows]
        if labels.ndim == 2:
            return [";".join(c for c, on in zip(self.classes, row) if on) for row in labels]
        return [self.classes[i] for i in labels]

    def require_classes(self, minimum: int = 2) -> None:
        """Raise a clear error when the set cannot train a classifier."""
        if len(self) == 0:
            raise DataError(f"{self.source} has no usable images ({len(self.skipped)} skipped): "
                            "run `transferlab inspect` on it to see why")
        if len(self.classes) < (1 if self.labels.ndim == 2 else minimum):  # multi-label: a label can be alone
            raise DataError(
                f"{self.source} has {len(self.classes)} class ({', '.join(self.classes)}): a classifier needs "
                f"at least {minimum}; add a folder per class"
            )

    def summary(self, parts: dict[str, np.ndarray] | None = None, normalization: dict | None = None) -> dict:
        """Health and statistics of the set (what inspect shows); with the `parts` of a run (splits
        or folds), what dataset.json records: counts per part, the normalization, and a check that
        no duplicate group straddles two parts."""
        counts = self.counts
        present = [n for n in counts.values() if n]
        widths = np.array([r["width"] for r in self.records])
        heights = np.array([r["height"] for r in self.records])
        sizes = Counter(f"{r['width']}x{r['height']}" for r in self.records)
        summary = {
            "source": self.source,
            "n_images": len(self),
            "n_classes": len(self.classes),
            "classes": self.classes,
            "counts": counts,
            "imbalance_ratio": round(max(present) / min(present), 3) if present else None,
            "image_size": {
                "width": stats_of(widths), "height": stats_of(heights),
                "most_common": [{"size": s, "count": n} for s, n in sizes.most_common(5)],
                "all": [[int(k.split("x")[0]), int(k.split("x")[1]), n] for k, n in sizes.most_common(2000)],
            },
            "modes": dict(Counter(r["mode"] for r in self.records).most_common()),
            "formats": dict(Counter(r["format"] for r in self.records).most_common()),
            "oriented_by_exif": sum(1 for r in self.records if "orientation" in r),
            "cached_as": {"size": self.spec.size, "resize_mode": self.spec.mode,
                          "interpolation": self.spec.interpolation, "cache": self.cache,
                          "bytes_per_image": self.spec.size ** 2 * 3 if self.cache != "none" else 0},
            "skipped": self.skipped,
            "ignored": self.ignored,
            "duplicates": self.duplicates,
            "empty_classes": self.empty_classes,
            "warnings": self.warnings,
        }
        if len(self):
            mean, std = channel_stats(self.images)
            summary["channel_mean"], summary["channel_std"] = mean, std
        if self.labels.ndim == 2:
            summary |= {"task": self.task.name, "labels_per_image": labels_per_image(self.labels),
                        "co_occurring": co_occurring(self.labels, self.classes)}
        if normalization is not None:
            summary["normalization"] = normalization
        if parts is not None:
            summary["split_counts"] = {name: dict(zip(self.classes, count_labels(self.labels[idx], len(self.classes))))
                                       for name, idx in parts.items()}
            home: dict[int, str] = {}
            straddling = {g for name, idx in parts.items() for g in self.groups[idx].tolist()
                          if home.setdefault(g, name) != name}
            summary["duplicates_across_splits"] = len(straddling)
        return summary


def count_labels(labels: np.ndarray, k: int) -> list[int]:
    """Images per class: of class indices (N,), or of 0/1 rows (N, K) (images with each label)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return [int(n) for n in labels.sum(axis=0)] if len(labels) else [0] * k
    return [int(n) for n in np.bincount(labels, minlength=k)]


def labels_per_image(labels: np.ndarray) -> dict:
    """How many labels multi-label images have: images per count, and the mean."""
    per = labels.sum(axis=1)
    return {"mean": round(float(per.mean()), 3) if len(per) else None,
            "images": {str(int(n)): int((per == n).sum()) for n in np.unique(per)}}


def co_occurring(labels: np.ndarray, classes: list[str], top: int = 10) -> list[dict]:
    """The most frequent pairs of labels on one image, with how many images have both."""
    both = labels.T.astype(np.int64) @ labels.astype(np.int64)
    pairs = [(int(both[a, b]), a, b) for a in range(len(classes)) for b in range(a + 1, len(classes)) if both[a, b]]
    return [{"labels": [classes[a], classes[b]], "images": n} for n, a, b in sorted(pairs, key=lambda p: -p[0])[:top]]


def stats_of(values: np.ndarray) -> dict | None:
    if len(values) == 0:
        return None
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def load_dataset(spec: str, config: Config, *, progress: bool = True, compact: bool = False) -> ImageDataset:
    """Validate, decode once and cache every image of DATA `spec` under `config`. With `compact`
    (a new run, inspect), images that are all smaller than preprocess.size are stored at their own
    longest side instead: never more pixels than the sources have (the model resizes them in its graph)."""
    source = open_source(spec, group_column=config.data.group_column, delimiter=config.data.label_delimiter)
    items = subset_items(source.items, config.data.subset, config.seed) if config.data.subset else source.items
    resize = resize_spec(config)
    side = longest_side(source, items, resize.size) if compact else None
    if side is not None:
        resize = dataclasses.replace(resize, size=max(side, config.data.min_side))
    cache_mode = choose_cache(config, len(items), resize.size)
    disk = DiskCache(Path(config.data.cache_dir).expanduser() if config.data.cache_dir else cache_root(), resize)
    if cache_mode == "disk":
        check_disk(disk.root, len(items) * (resize.size ** 2 * 3 + 128), config.data.disk_limit_gb)
    outcomes = decode_all(source, items, resize, config, cache_mode, disk, progress=progress)

    kept = [i for i, o in enumerate(outcomes) if o["ok"]]
    skipped = list(source.skipped) + [
        {"path": items[i].path, "reason": o["reason"]} for i, o in enumerate(outcomes) if not o["ok"]
    ]
    task = task_for(config, source, items)
    names = [names_of(items[i], task) for i in kept]
    present = {name for these in names for name in these}
    # a built-in set's own class order, a manifest's 0/1 columns in theirs, else alphabetical
    order = source.classes or source.label_columns
    classes = [c for c in order if c in present] if order else sorted(present)
    index = {c: k for k, c in enumerate(classes)}
    if task.name == "multi-label":
        labels = np.zeros((len(kept), len(classes)), dtype=np.int64)
        for row, these in enumerate(names):
            labels[row, [index[n] for n in these]] = 1
    else:
        labels = np.array([index[these[0]] for these in names], dtype=np.int64)
    records = [dict(outcomes[i]["meta"], sha256=outcomes[i]["hash"]) for i in kept]
    paths = [items[i].path for i in kept]

    files = [disk.entry(outcomes[i]["hash"]) for i in kept] if cache_mode == "disk" else []
    # the cache folder keeps to its budget: trimmed after this load wrote to it (feature and engine writes trim
    # too); a load that only read it leaves it no larger, and walking 60,000 entries on every command costs seconds
    if any(o.get("written") for o in outcomes):
        trim_cache(disk.root, int(config.data.disk_limit_gb * 1e9), keep=set(files))
    if cache_mode == "memory":
        array = outcomes.pixels if len(kept) == len(items) else outcomes.pixels[kept]
        store: ImageStore = MemoryStore(array)
    elif cache_mode == "disk":
        store = DiskStore(files)
    else:
        store = DecodingStore([items[i].file for i in kept],
                              [source.arrays[items[i].index] if items[i].file is None else None for i in kept],
                              resize, Limits.of(config.data))

    warnings = list(source.warnings)
    lost = sorted({name for it in items for name in names_of(it, task)} - present)
    empty_classes = list(source.empty_classes) + lost
    warnings += [f"class '{c}' has no usable images (all skipped): it is left out" for c in lost]
    duplicates = find_duplicates(paths, [items[i].label for i in kept], [r["sha256"] for r in records])
    for dup in duplicates:
        if dup["conflict"]:
            warnings.append(f"identical files with different labels ({', '.join(dup['labels'])}): "
                            f"{', '.join(dup['paths'])}; fix the labels or remove one")
    groups = split_groups([items[i].group for i in kept], [r["sha256"] for r in records])
    return ImageDataset(
        source=source.spec, classes=classes, paths=paths, labels=labels, groups=groups, images=store,
        records=records, spec=resize, cache=cache_mode, skipped=skipped, ignored=source.ignored,
        warnings=warnings, duplicates=duplicates, empty_classes=empty_classes, task=task,
    )


def task_for(config: Config, source: Source, items: list[Item]) -> Task:
    """The label space of a set: multi-label when task.name says so, or when a manifest that names a set of
    labels per image (a labels column, 0/1 columns) has an image with more or less than one."""
    from transferlab.tasks import MultiLabel, SingleLabel

    wanted = config.task.name
    several = source.multilabel and any(len(item.labels or ()) != 1 for item in items)
    if wanted in ("multi-label", "multilabel") or (wanted == "auto" and several):
        return MultiLabel(fixed=config.task.threshold)
    if several:
        example = next(item for item in items if len(item.labels or ()) != 1)
        raise DataError(f"{source.spec}: {example.path} has {len(example.labels or ())} labels, but --task "
                        "single-label takes one per image: drop --task, or give each image one label")
    return SingleLabel()  # its own: a run's calibration sets its temperature


def names_of(item: Item, task: Task) -> tuple[str, ...]:
    """An item's class names: its set of labels (multi-label), or its one label."""
    if item.labels is not None:
        return item.labels
    return (item.label,)


def longest_side(source: Source, items: list[Item], limit: int) -> int | None:
    """The longest side of any image of `items` when all are below `limit` pixels, else None. File
    headers only; the first image that reaches `limit` ends the look (photos: one header)."""
    from PIL import Image

    side = 0
    for item in items:
        try:
            if item.file is None:
                height, width = source.arrays[item.index].shape[:2]
            elif os.path.isfile(item.file):  # a regular file (or a link to one): no FIFO or device is opened
                with Image.open(item.file) as image:
                    width, height = image.size
            else:
                continue
        except Exception:  # noqa: BLE001 - an unreadable file is the decode pass's to report
            continue
        side = max(side, width, height)
        if side >= limit:
            return None
    return side or None


def subset_items(items: list[Item], per_class: int, seed: int) -> list[Item]:
    """At most `per_class` items of each class, chosen with `seed`, in their original order."""
    if per_class < 1:
        raise DataError(f"data.subset={per_class} must be at least 1 image per class")
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_class[item.label].append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        chosen += members if len(members) <= per_class else list(rng.choice(members, per_class, replace=False))
    return [items[i] for i in sorted(chosen)]


def check_disk(root: Path, needed: int, limit_gb: float) -> None:
    """Refuse, before anything is written, a decoded cache that could not fit data.disk_limit_gb or
    the free space of its disk."""
    import shutil

    from transferlab.console import size_text

    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed > limit_gb * 1e9 or needed > free:
        raise DataError(f"the decoded images need {size_text(needed)} in {root}, more than "
                        + (f"data.disk_limit_gb={limit_gb:g} ({size_text(limit_gb * 1e9)})" if needed > limit_gb * 1e9
                           else f"the {size_text(free)} free there")
                        + ": raise data.disk_limit_gb, point data.cache_dir (or TRANSFERLAB_CACHE) at a larger disk, "
                          "lower --size, or decode on every read with --set data.cache=none")


def choose_cache(config: Config, n_items: int, size: int) -> str:
    mode = config.data.cache
    if mode != "auto":
        return mode
    needed_mb = n_items * size * size * 3 / 2**20
    return "memory" if needed_mb <= config.data.memory_limit_mb else "disk"


# --- the decode pass -------------------------------------------------------------------------

_WORK: dict = {}


def _init_worker(source: Source, resize: ResizeSpec, config: Config, cache_mode: str, disk: DiskCache) -> None:
    _WORK["args"] = (source, resize, config, cache_mode, disk)


def _decode_one(item: Item) -> dict:
    source, resize, config, cache_mode, disk = _WORK["args"]
    limits = Limits.of(config.data)
    digest = None
    try:
        if item.file is None:
            array = source.arrays[item.index]
            data = None
            digest = content_hash(array.tobytes() + str(array.shape).encode())
        else:
            data = read_file(item.file, limits.max_bytes)
            digest = content_hash(data)
        if cache_mode == "disk":
            meta = disk.get(digest)
            if meta is not None and meta["width"] * meta["height"] <= limits.max_pixels \
                    and min(meta["width"], meta["height"]) >= limits.min_side:
                return {"ok": True, "hash": digest, "meta": meta}
        if item.file is None:
            pixels, meta = decode_array(array, resize)
        else:
            pixels, meta = decode_file(item.file, resize, limits, data=data)
    except BadImage as exc:
        return {"ok": False, "hash": digest, "reason": str(exc)}
    if cache_mode == "disk":
        disk.put(digest, pixels, meta)
        return {"ok": True, "hash": digest, "meta": meta, "written": True}
    return {"ok": True, "hash": digest, "meta": meta, "pixels": pixels if cache_mode == "memory" else None}


class Outcomes(list):
    """Per-item decode outcomes; with the memory cache, `pixels` holds every image in item order."""

    pixels: np.ndarray | None = None


def decode_all(source: Source, items: list[Item], resize: ResizeSpec, config: Config, cache_mode: str,
               disk: DiskCache, *, progress: bool) -> Outcomes:
    """Decode every item once, in worker processes when there are many; outcomes in item order."""
    from transferlab.console import progress_bar

    workers = config.data.decode_workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(items) // 64 or 1))
    args = (source, resize, config, cache_mode, disk)
    outcomes = Outcomes([None] * len(items))
    if cache_mode == "memory":
        outcomes.pixels = np.empty((len(items), resize.size, resize.size, 3), dtype=np.uint8)

    def record(i: int, outcome: dict) -> None:
        pixels = outcome.pop("pixels", None)
        if pixels is not None and outcomes.pixels is not None:
            outcomes.pixels[i] = pixels
        outcomes[i] = outcome

    label = f"Decoding {len(items):,} images"
    with progress_bar(label, total=len(items), enabled=progress) as advance:
        if workers == 1:
            _init_worker(*args)
            for i, item in enumerate(items):
                record(i, _decode_one(item))
                advance(1)
        else:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with context.Pool(workers, initializer=_init_worker, initargs=args) as pool:
                chunk = max(1, min(64, len(items) // (workers * 8)))
                for i, outcome in enumerate(pool.imap(_decode_one, items, chunksize=chunk)):
                    record(i, outcome)
                    advance(1)
    return outcomes


def find_duplicates(paths: list[str], labels: list[str], hashes: list[str]) -> list[dict]:
    """Byte-identical images: within one class (reported) or across classes (a label conflict)."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(hashes):
        by_hash[digest].append(i)
    found = []
    for digest, members in by_hash.items():
        if len(members) > 1:
            member_labels = sorted({labels[i] for i in members})
            found.append({"sha256": digest, "paths": [paths[i] for i in members], "labels": member_labels,
                          "conflict": len(member_labels) > 1})
    return sorted(found, key=lambda d: d["paths"][0])


def split_groups(user_groups: list[str | None], hashes: list[str]) -> np.ndarray:
    """Group ids joining images of one user group and byte-identical copies (union-find)."""
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[tuple[str, str], int] = {}
    for i, (group, digest) in enumerate(zip(user_groups, hashes)):
        for key in ((("group", group) if group is not None else None), ("hash", digest)):
            if key is None:
                continue
            if key in first_of:
                parent[find(i)] = find(first_of[key])
            else:
                first_of[key] = i
    roots = [find(i) for i in range(len(hashes))]
    _, ids = np.unique(np.array(roots, dtype=np.int64), return_inverse=True)
    return ids.astype(np.int64)
