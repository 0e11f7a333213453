"""Datasets: layouts (MSD, nnU-Net raw, BraTS 2021/2023, KiTS, CSV/JSON lists) -> cases; integrity checks and
fingerprint; splits and cross-validation folds."""

from medpipe.datasets.check import CheckReport, check_dataset, preflight, save_fingerprint
from medpipe.datasets.fingerprint import CaseFacts, data_identity
from medpipe.datasets.layouts import (
    BRATS2021_CHANNELS,
    BRATS2023_CHANNELS,
    FORMATS,
    Case,
    Dataset,
    Issue,
    detect_format,
    discover,
    load_dataset,
)
from medpipe.datasets.splits import fold_splits, kfold_splits, select_split, split_cases

__all__ = [
    "BRATS2021_CHANNELS",
    "BRATS2023_CHANNELS",
    "FORMATS",
    "Case",
    "CaseFacts",
    "CheckReport",
    "Dataset",
    "Issue",
    "check_dataset",
    "data_identity",
    "detect_format",
    "discover",
    "fold_splits",
    "kfold_splits",
    "load_dataset",
    "preflight",
    "save_fingerprint",
    "select_split",
    "split_cases",
]
