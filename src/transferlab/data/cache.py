"""The decode-once image store: decoded, oriented, RGB, resized uint8 pixels that every epoch and
every fold reads instead of the original files.

- `MemoryStore`: one (N, H, W, 3) array, for sets that fit `data.memory_limit_mb`.
- `DiskStore`: one .npy per image under the cache folder, keyed by the file's content hash and
  the resize settings, so a renamed or re-listed file is still a hit and a changed file or new
  size is a miss. Files are written atomically; the folder is trimmed to `data.disk_limit_gb`,
  least recently used first.
- `DecodingStore`: no cache at all, decodes on every read (for comparison, or no spare disk).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from transferlab.io import atomic_write
from transferlab.preprocess import ResizeSpec

CACHE_VERSION = 1  # bump when decoding changes what pixels a file gives


class ImageStore:
    """Read access to decoded images by position: `store[i]` is (H, W, 3) uint8."""

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def take(self, indices) -> np.ndarray:
        """Images at `indices` stacked as (len(indices), H, W, 3) uint8."""
        return np.stack([self[int(i)] for i in indices]) if len(indices) else np.empty((0, 0, 0, 3), np.uint8)


class MemoryStore(ImageStore):
    def __init__(self, array: np.ndarray):
        self.array = array

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.array[index]

    def take(self, indices) -> np.ndarray:
        return self.array[np.asarray(indices, dtype=np.int64)]


class DiskStore(ImageStore):
    def __init__(self, files: list[Path]):
        self.files = [str(f) for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.load(self.files[index])


class DecodingStore(ImageStore):
    """Decodes the original file (or array) on every access: the no-cache baseline."""

    def __init__(self, files: list[Path | None], arrays: list[np.ndarray | None], spec: ResizeSpec, limits):
        self.files, self.arrays, self.spec, self.limits = files, arrays, spec, limits

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        from transferlab.data.decode import decode_array, decode_file

        if self.files[index] is None:
            return decode_array(self.arrays[index], self.spec)[0]
        return decode_file(self.files[index], self.spec, self.limits)[0]


class DiskCache:
    """A folder of decoded images keyed by content hash + resize settings."""

    def __init__(self, root: Path, spec: ResizeSpec):
        self.root = Path(root)
        self.spec_key = f"v{CACHE_VERSION}-{spec.key()}"

    def entry(self, content_hash: str) -> Path:
        return self.root / "decoded" / self.spec_key / content_hash[:2] / f"{content_hash}.npy"

    def get(self, content_hash: str) -> dict | None:
        """The metadata of a cached image, or None on a miss."""
        path = self.entry(content_hash)
        meta_path = path.with_suffix(".json")
        if not (path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            os.utime(path)  # recency for trimming
            return meta
        except (OSError, ValueError):
            return None

    def put(self, content_hash: str, pixels: np.ndarray, meta: dict) -> None:
        path = self.entry(content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: np.save(handle, pixels, allow_pickle=False))
        atomic_write(path.with_suffix(".json"), lambda handle: handle.write(json.dumps(meta).encode()))


ABANDONED_S = 600  # an export folder with no file in it this long was abandoned; a younger one is being written


def idle(folder: Path) -> float:
    """Seconds since anything in `folder` (itself or a folder in it) last changed."""
    import time

    try:
        return time.time() - max(p.stat().st_mtime for p in (folder, *folder.rglob("*")))
    except (OSError, ValueError):
        return 0.0


def walk(folder: Path, deep: bool = True):
    """(path, stat) of every file under `folder` (in it only, unless `deep`), by os.scandir: a cache of 60,000
    images is walked in a fraction of a second (pathlib's rglob and stat took 3 s on every load). Files that
    vanish meanwhile (another process trimming) are passed over."""
    stack = [str(folder)]
    while stack:
        try:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if deep:
                                stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            yield entry.path, entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
        except OSError:
            continue


def trim_cache(root: Path, limit_bytes: int, keep: set[Path] = frozenset(),
               deletable: tuple[str, ...] = ("decoded", "features", "engines")) -> int:
    """Delete the least recently used entries of the cache folder `root` (decoded images, features,
    engine exports) until all of it fits `limit_bytes` (data.disk_limit_gb); only entries of the
    `deletable` kinds and not in `keep` go (what the caller may be reading stays). Bytes freed."""
    import shutil

    root, keep = Path(os.path.abspath(root)), {os.path.abspath(k) for k in keep}  # paths compared as strings
    entries = []  # (last use, bytes, kind, the files of one entry, its folder if it is one)
    images, metas = {}, {}  # an image's .npy and its .json are one entry, by the path without the suffix
    for path, stat in walk(root / "decoded"):
        if path.endswith(".npy"):
            images[path[:-4]] = (path, stat)
        elif path.endswith(".json"):
            metas[path[:-5]] = (path, stat)
    groups = [("decoded", [image, metas[stem]] if stem in metas else [image], None) for stem, image in images.items()]
    groups += [("features", [(path, stat)], None) for path, stat in walk(root / "features", deep=False)
               if path.endswith(".npy")]
    engines = root / "engines"
    for folder in (engines.iterdir() if engines.is_dir() else ()):
        if folder.is_dir():
            groups.append(("engines", list(walk(folder)), folder))
    for kind, found, folder in groups:
        files = [path for path, _ in found]
        if found:
            entries.append((max(s.st_mtime for _, s in found), sum(s.st_size for _, s in found), kind, files, folder))
        elif folder is not None and kind in deletable and idle(folder) > ABANDONED_S:
            shutil.rmtree(folder, ignore_errors=True)  # an export folder left empty (not one being written)
    total, freed = sum(entry[1] for entry in entries), 0
    for _, size, kind, files, folder in sorted(entries, key=lambda e: e[0]):
        if total - freed <= limit_bytes:
            break
        if kind in deletable and not keep.intersection(files):
            for victim in files:
                try:
                    os.unlink(victim)
                except FileNotFoundError:
                    pass
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            freed += size
    return freed
