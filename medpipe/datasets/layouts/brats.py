"""BraTS: ``brats2021`` ``<case>/<case>_t1|_t1ce|_t2|_flair|_seg.nii.gz`` (labels {1, 2, 4}); ``brats2023`` (also 2024+)
``<case>/<case>-t1n|-t1c|-t2w|-t2f|-seg.nii.gz`` (labels {1, 2, 3})."""

from __future__ import annotations

from pathlib import Path

from medpipe.datasets.layouts.base import Case, Dataset, Found, find, subdirs, visible_nifti
from medpipe.io.nifti import case_id_from_path
from medpipe.labels import BRATS2021_LABELS, BRATS2023_LABELS

BRATS2023_CHANNELS = ("t1n", "t1c", "t2w", "t2f")
BRATS2021_CHANNELS = ("t1", "t1ce", "t2", "flair")


def _looks_like(root: Path, fmt: str) -> bool:
    channels, sep = (BRATS2023_CHANNELS, "-") if fmt == "brats2023" else (BRATS2021_CHANNELS, "_")
    for sub in subdirs(root) if root.is_dir() else []:
        names = {case_id_from_path(p) for p in visible_nifti(sub)}
        if any(f"{sub.name}{sep}{c}" in names for c in (*channels, "seg")):
            return True
    return False


def looks_like_2023(root: Path) -> bool:
    return _looks_like(root, "brats2023")


def looks_like_2021(root: Path) -> bool:
    return _looks_like(root, "brats2021")


def discover(root: Path, fmt: str) -> Dataset:
    channels = BRATS2023_CHANNELS if fmt == "brats2023" else BRATS2021_CHANNELS
    sep = "-" if fmt == "brats2023" else "_"
    f = Found()
    for sub in subdirs(root):
        found = [find(sub, f"{sub.name}{sep}{c}") for c in channels]
        label = find(sub, f"{sub.name}{sep}seg")
        missing = [c for c, p in zip(channels, found, strict=True) if p is None]
        if len(missing) == len(channels) and label is None:
            f.warn("layout", sub.name, sub, f"folder holds no {fmt} files; ignored")
            continue
        if missing:
            f.error("channels", sub.name, sub, f"{len(channels) - len(missing)} of {len(channels)} modalities: "
                    f"missing {', '.join(f'{sub.name}{sep}{c}.nii.gz' for c in missing)}")
            continue
        if label is None:
            f.error("missing", sub.name, sub, f"no {sub.name}{sep}seg.nii.gz (label missing)")
        f.cases.append(Case(sub.name, tuple(p for p in found if p is not None), label))
    labels = BRATS2023_LABELS if fmt == "brats2023" else BRATS2021_LABELS
    return Dataset(root, fmt, tuple(f.cases), channels, dict(labels), issues=tuple(f.issues))


def discover_2023(root: Path) -> Dataset:
    return discover(root, "brats2023")


def discover_2021(root: Path) -> Dataset:
    return discover(root, "brats2021")
