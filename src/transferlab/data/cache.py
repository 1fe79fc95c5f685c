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
import secrets
from pathlib import Path

import numpy as np

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

    def put(self, content_hash: str, pixels: np.ndarray, meta: dict) -> Path:
        path = self.entry(content_hash)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: np.save(handle, pixels, allow_pickle=False))
        atomic_write(path.with_suffix(".json"), lambda handle: handle.write(json.dumps(meta).encode()))
        return path

    def trim(self, limit_bytes: int, keep: set[Path]) -> int:
        """Delete least recently used entries not in `keep` until the cache fits; bytes freed."""
        entries = []
        total = 0
        for path in (self.root / "decoded").rglob("*.npy"):
            try:
                stat = path.stat()
            except OSError:
                continue
            total += stat.st_size
            entries.append((stat.st_mtime, stat.st_size, path))
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= limit_bytes:
                break
            if path in keep:
                continue
            for victim in (path, path.with_suffix(".json")):
                victim.unlink(missing_ok=True)
            freed += size
        return freed


def atomic_write(path: Path, write, *, durable: bool = False) -> None:
    """Write through a temporary file in the same folder and rename, so readers never see half a
    file (and a full disk leaves the previous version intact); `durable` also syncs it to disk
    first (run state, checkpoints, models). The temporary file is created with mode 0o666 and the
    process umask applies, like any file the user's tools write."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
