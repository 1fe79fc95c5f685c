"""Near-duplicates: images that are copies of each other after a resize, a re-encode, a small crop or a
change to grey, from the decoded images a run already holds.

Pooled features and perceptual hashes alone cannot tell a copy of a small image (a 28 px garment) from
another item of its kind: distinct items sit closer than a copy and its original (ARCHITECTURE.md).
So candidates come from two cheap signals, and each candidate pair is then verified on pixels:

1. candidates: each image's nearest neighbours by the correlation of a blurred 32 px grey thumbnail, and
   pairs whose perceptual hashes (imagehash's pHash) are within a few bits;
2. verification: the correlation of the two images' blurred grey pixels at 40 px, best over small crops of
   either (3-7% off the sides, nine placements each): a copy correlates at 0.995 or more; distinct items of
   one kind below (measured on Fashion-MNIST and LFW with planted copies: benchmarks/bench_audit.py).

Pairs at or above `similarity` are joined into groups (union-find).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

THUMB = 32  # the candidates' thumbnail side
SIDE = 40  # the verification's side
BLUR = 1.0  # Gaussian blur (pixels at SIDE) before either comparison: resampling and JPEG noise are fine detail
CROPS = (0.03, 0.05, 0.07)  # the share cropped off, in each of nine placements
HASH_BITS = 6  # pHash pairs within this many of 64 bits are candidates too
CHUNK = 2048
PROJECT_ABOVE, PROJECTED = 5000, 64  # above this many images, neighbours are found on the thumbnails' top components


def unit_rows(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float32)
    a -= a.mean(axis=1, keepdims=True)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-6)


def grey(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("L")


def blurred(image, side: int) -> np.ndarray:
    """The image at `side` x `side`, blurred by BLUR pixels of SIDE (so by the same share of the picture)."""
    from PIL import Image, ImageFilter

    return np.asarray(image.resize((side, side), Image.BICUBIC).filter(ImageFilter.GaussianBlur(BLUR * side / SIDE)),
                      dtype=np.float32)


FINE = 4 * SIDE  # the blurred picture the views are sampled from: a quarter of a view's pixel apart


def grids() -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of FINE-pixel indices of each view (the whole picture first, then the crops), SIDE each."""
    boxes = [(0.0, 0.0, 0.0)] + [(f, ox, oy) for f in CROPS for ox in (0.0, 0.5, 1.0) for oy in (0.0, 0.5, 1.0)]
    centres = (np.arange(SIDE) + 0.5) / SIDE
    rows, columns = [], []
    for f, ox, oy in boxes:
        rows.append(np.clip(((f * oy + (1 - f) * centres) * FINE).astype(np.int64), 0, FINE - 1))
        columns.append(np.clip(((f * ox + (1 - f) * centres) * FINE).astype(np.int64), 0, FINE - 1))
    return np.stack(rows), np.stack(columns)


def views(fine: np.ndarray, count: int | None = None) -> np.ndarray:
    """(N, V, SIDE * SIDE) unit rows: each picture whole, then with 3-7% cropped in nine placements (the first
    `count` of them), sampled from its blurred FINE picture (N, FINE, FINE)."""
    rows, columns = grids()
    rows, columns = rows[:count], columns[:count]
    sampled = fine[:, rows[:, :, None], columns[:, None, :]]  # (N, V, SIDE, SIDE)
    n, v = sampled.shape[:2]
    return unit_rows(sampled.reshape(n * v, -1)).reshape(n, v, -1)


def fine_pictures(pictures: list) -> np.ndarray:
    return np.stack([blurred(p, FINE) for p in pictures])


def nearest(signatures: np.ndarray, k: int) -> np.ndarray:
    """(N, k) each row's k most correlated other rows (by blocks: N x N is never held; torch's top-k, which is
    many times faster than a partition of each block, at 60,000 rows)."""
    import torch

    n, k = len(signatures), min(k, len(signatures) - 1)
    out = np.zeros((n, max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    every = torch.from_numpy(np.ascontiguousarray(signatures, dtype=np.float32))
    for start in range(0, n, CHUNK):
        block = every[start:start + CHUNK] @ every.T
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = -torch.inf
        out[start:start + CHUNK] = block.topk(k, dim=1).indices.numpy()
    return out


def hash_pairs(hashes: np.ndarray, bits: int, k: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of 64-bit perceptual hashes within `bits` bits of each other: each image with its `k` nearest
    (many small images of one kind share most of their bits: all such pairs would be millions)."""
    import torch

    pairs: set[tuple[int, int]] = set()
    n, k = len(hashes), min(k, len(hashes) - 1)
    for start in range(0, n, CHUNK):
        block = torch.from_numpy(np.bitwise_count(hashes[start:start + CHUNK, None] ^ hashes[None, :]).astype(np.float32))
        block[torch.arange(len(block)), torch.arange(start, start + len(block))] = 99
        distance, nearest_k = block.topk(k, dim=1, largest=False)
        for i, j in zip(*np.nonzero(distance.numpy() <= bits)):
            a, b = start + int(i), int(nearest_k[i, j])
            pairs.add((min(a, b), max(a, b)))
    return pairs


def phash(image) -> int:
    import imagehash

    return int(str(imagehash.phash(image)), 16)


def near_pairs(images: Sequence[np.ndarray], *, similarity: float = 0.995, neighbours: int = 5,
               progress: Callable[[int, int], None] | None = None) -> list[tuple[int, int, float]]:
    """(i, j, similarity) of every pair of `images` (decoded HxWx3 uint8, any sizes) verified as copies."""
    n = len(images)
    if n < 2:
        return []
    pictures = [grey(images[i]) for i in range(n)]
    thumbs = unit_rows(np.stack([blurred(p, THUMB) for p in pictures]))
    if n > PROJECT_ABOVE:  # N x N products on 1,024 values cost minutes at 60,000 images; on 64, seconds
        from sklearn.decomposition import PCA

        thumbs = unit_rows(PCA(PROJECTED, random_state=0).fit_transform(thumbs))
    candidates = {(min(i, int(j)), max(i, int(j))) for i, row in enumerate(nearest(thumbs, neighbours)) for j in row}
    candidates |= hash_pairs(np.array([phash(p) for p in pictures], dtype=np.uint64), HASH_BITS, neighbours)
    pairs = np.array(sorted(candidates), dtype=np.int64).reshape(-1, 2)
    whole = np.concatenate([views(fine_pictures(pictures[k:k + VIEW_CHUNK]), 1)[:, 0] for k in range(0, n, VIEW_CHUNK)])
    best = np.einsum("pd,pd->p", whole[pairs[:, 0]], whole[pairs[:, 1]])
    # each side of each pair: the crops of `mine` against the whole picture of `other`, grouped by `mine`
    mine_of, other_of = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
    pair_of = np.concatenate([np.arange(len(pairs))] * 2)
    order = np.argsort(mine_of, kind="stable")
    mine_of, other_of, pair_of = mine_of[order], other_of[order], pair_of[order]
    firsts = np.searchsorted(mine_of, np.arange(n + 1))  # image i's sides: firsts[i]:firsts[i + 1]
    for start in range(0, n, VIEW_CHUNK):  # by blocks of images: their crops are computed once
        stop = min(n, start + VIEW_CHUNK)
        crops = views(fine_pictures(pictures[start:stop]))
        for i in range(start, stop):
            sides = slice(firsts[i], firsts[i + 1])
            if sides.start < sides.stop:  # its crops against each partner's whole picture: the best view
                scores = (crops[i - start] @ whole[other_of[sides]].T).max(axis=0)
                np.maximum.at(best, pair_of[sides], scores)
        if progress is not None:
            progress(stop, n)
    return sorted(((int(i), int(j), float(v)) for (i, j), v in zip(pairs, best) if v >= similarity),
                  key=lambda t: -t[2])


VIEW_CHUNK = 256


def groups_of(n: int, pairs: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Group ids (N,) joining every pair (union-find); an image in no pair is its own group."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in pairs:
        parent[find(i)] = find(j)
    _, ids = np.unique([find(i) for i in range(n)], return_inverse=True)
    return ids.astype(np.int64)
