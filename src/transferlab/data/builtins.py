"""Built-in data sets, as plain sources: scikit-learn's digits (always offline) and Fashion-MNIST
(IDX files from $TRANSFERLAB_DATA, Debian's dataset-fashion-mnist, or torchvision's download)."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from transferlab.data.items import Item, Source, cache_root
from transferlab.errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt or top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def builtin_source(name: str) -> Source:
    """The Source of `builtin:NAME`, a name check_spec has accepted (sources.BUILTINS)."""
    return digits() if name == "digits" else fashion_mnist("test" if name == "fashion-mnist:test" else "train")


def digits() -> Source:
    """scikit-learn's 1,797 8x8 digits, always offline."""
    from sklearn.datasets import load_digits

    data = load_digits()
    arrays = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels -> 0..255 grey levels
    labels = [str(int(t)) for t in data.target]
    items = [Item(path=f"digits/{i:04d}", label=labels[i], index=i) for i in range(len(labels))]
    return Source(spec="builtin:digits", kind="builtin", items=items, arrays=arrays,
                  classes=[str(d) for d in range(10)])


def fashion_mnist(split: str = "train") -> Source:
    """The official Fashion-MNIST train (60,000) or test (10,000) split, 28x28 grey."""
    images, targets = load_fashion_mnist(split)
    items = [Item(path=f"fashion-mnist/{split}/{i:05d}", label=FASHION_MNIST_CLASSES[int(t)], index=i)
             for i, t in enumerate(targets)]
    return Source(spec=f"builtin:fashion-mnist{':test' if split == 'test' else ''}", kind="builtin",
                  items=items, arrays=images, classes=list(FASHION_MNIST_CLASSES))


def fashion_mnist_dirs() -> list[Path]:
    """Folders searched for Fashion-MNIST IDX files, in order."""
    dirs = []
    if os.environ.get("TRANSFERLAB_DATA"):
        env = Path(os.environ["TRANSFERLAB_DATA"]).expanduser()
        dirs += [env, env / "fashion-mnist", env / "FashionMNIST" / "raw"]
    dirs += [DEBIAN_FASHION_MNIST, cache_root() / "datasets" / "FashionMNIST" / "raw"]
    return dirs


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels of the official train or test split."""
    prefix = "train" if split == "train" else "t10k"
    for folder in fashion_mnist_dirs():
        image_file = find_idx(folder, f"{prefix}-images-idx3-ubyte")
        label_file = find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if image_file and label_file:
            return read_idx(image_file), read_idx(label_file)
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(cache_root() / "datasets"), train=split == "train", download=True)
    except Exception as exc:  # offline, or the mirror is down
        searched = ", ".join(str(d) for d in fashion_mnist_dirs())
        raise DataError(
            f"Fashion-MNIST not found (searched {searched}) and the download failed ({type(exc).__name__}): "
            "run `apt-get install dataset-fashion-mnist`, or set TRANSFERLAB_DATA to a folder with the IDX files"
        ) from None
    return load_fashion_mnist(split)


def fashion_mnist_or_digits() -> tuple[str, str | None]:
    """builtin:fashion-mnist when its files can be had, else builtin:digits and a line saying why."""
    try:
        load_fashion_mnist("train")
        return "builtin:fashion-mnist", None
    except DataError as exc:
        return "builtin:digits", f"{exc}; using builtin:digits instead"


def find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes, as in the MNIST family."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes: replace it with the original download")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
