"""KiTS19/21/23: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``; labels 1 kidney, 2 tumor, 3 cyst (KiTS21+;
KiTS19 simply has no 3)."""

from __future__ import annotations

from pathlib import Path

from medpipe.datasets.layouts.base import Case, Dataset, Found, find, subdirs
from medpipe.labels import KITS_LABELS


def looks_like(root: Path) -> bool:
    """A sub-folder holds ``imaging.nii.gz``."""
    return root.is_dir() and any(find(sub, "imaging") is not None for sub in subdirs(root))


def discover(root: Path) -> Dataset:
    f = Found()
    for sub in subdirs(root):
        image = find(sub, "imaging")
        if image is None:
            if sub.name.startswith("case_"):
                f.error("missing", sub.name, sub, "no imaging.nii.gz")
            continue
        label = find(sub, "segmentation")
        if label is None:
            f.error("missing", sub.name, sub, "no segmentation.nii.gz (label missing)")
        f.cases.append(Case(sub.name, (image,), label))
    return Dataset(root, "kits", tuple(f.cases), ("CT",), dict(KITS_LABELS), issues=tuple(f.issues))
