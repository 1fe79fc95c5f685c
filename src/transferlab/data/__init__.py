"""Data: sources, validation, the decode-once cache and stratified splits."""

from transferlab.data.dataset import ImageDataset, load_dataset
from transferlab.data.splits import holdout_split, stratified_folds, write_split_csv
from transferlab.data.sources import open_source

__all__ = ["ImageDataset", "load_dataset", "holdout_split", "stratified_folds", "write_split_csv", "open_source"]
