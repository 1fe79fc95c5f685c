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


def unit_rows(a: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float32)
    a -= a.mean(axis=1, keepdims=True)
    return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-6)


def grey(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("L")


def blurred(image, side: int, box=None) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(image.resize((side, side), Image.BICUBIC, box=box).filter(ImageFilter.GaussianBlur(BLUR)),
                      dtype=np.float32)


def crops(image) -> np.ndarray:
    """(27, SIDE * SIDE): the image's blurred views with a little cropped off, in nine placements per share."""
    w, h = image.size
    views = [blurred(image, SIDE, (w * f * ox, h * f * oy, w - w * f * (1 - ox), h - h * f * (1 - oy)))
             for f in CROPS for ox in (0.0, 0.5, 1.0) for oy in (0.0, 0.5, 1.0)]
    return unit_rows(np.stack(views))


def nearest(signatures: np.ndarray, k: int) -> np.ndarray:
    """(N, k) each row's k most correlated other rows (by blocks: N x N is never held)."""
    n, k = len(signatures), min(k, len(signatures) - 1)
    out = np.zeros((n, max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    for start in range(0, n, CHUNK):
        block = signatures[start:start + CHUNK] @ signatures.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        out[start:start + CHUNK] = np.argpartition(-block, k - 1, axis=1)[:, :k]
    return out


def hash_pairs(hashes: np.ndarray, bits: int) -> set[tuple[int, int]]:
    """Pairs (i < j) of 64-bit perceptual hashes within `bits` bits of each other."""
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(hashes), CHUNK):
        block = np.bitwise_count(hashes[start:start + CHUNK, None] ^ hashes[None, :])
        for i, j in zip(*np.nonzero(block <= bits)):
            if start + i < j:
                pairs.add((int(start + i), int(j)))
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
    bases = unit_rows(np.stack([blurred(p, SIDE) for p in pictures]))
    candidates = {(min(i, int(j)), max(i, int(j))) for i, row in enumerate(nearest(thumbs, neighbours)) for j in row}
    candidates |= hash_pairs(np.array([phash(p) for p in pictures], dtype=np.uint64), HASH_BITS)
    partners: dict[int, list[int]] = {}
    for i, j in candidates:
        partners.setdefault(i, []).append(j)
        partners.setdefault(j, []).append(i)
    best = {pair: float(bases[pair[0]] @ bases[pair[1]]) for pair in candidates}
    for done, (i, others) in enumerate(partners.items()):  # each image's crops against its partners' whole views
        scores = (crops(pictures[i]) @ bases[others].T).max(axis=0)
        for j, score in zip(others, scores):
            pair = (min(i, j), max(i, j))
            best[pair] = max(best[pair], float(score))
        if progress is not None and (done % 500 == 0 or done == len(partners) - 1):
            progress(done + 1, len(partners))
    return sorted(((i, j, s) for (i, j), s in best.items() if s >= similarity), key=lambda t: -t[2])


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
