"""Data: sources, validation, the decode-once cache and stratified splits.

Names are imported on first use, so `transferlab.data.sources` (and a missing-folder error)
does not wait for torch to load.
"""

from importlib import import_module

_EXPORTS = {
    "ImageDataset": "transferlab.data.dataset",
    "load_dataset": "transferlab.data.dataset",
    "holdout_split": "transferlab.data.splits",
    "stratified_folds": "transferlab.data.splits",
    "write_split_csv": "transferlab.data.splits",
    "open_source": "transferlab.data.sources",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'transferlab.data' has no attribute {name!r}")
