"""Case-level classes for ``task: classification``: from a CSV of ``case,label`` (``data.class_csv``) or derived
from each case's segmentation (``data.class_from_label``: class 1 when the label covers ``min_voxels`` voxels).

Class indices follow the config's ``classes`` list (index 0 first). The CSV needs a header naming a case column
(``case`` or ``case_id``) and a label column (``label`` or ``class``); a label is a class name or its index.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np

from medpipe.config import PipelineConfig
from medpipe.datasets.layouts import Case, Dataset, discover, load_dataset
from medpipe.datasets.layouts.base import raise_for
from medpipe.errors import DatasetError, InputError

CASE_COLUMNS = ("case", "case_id")
LABEL_COLUMNS = ("label", "class")


def class_index(value: str, classes: Sequence[str], where: str, path: Path) -> int:
    """The class index of ``value``: a class name, or an index into ``classes``."""
    text = value.strip()
    if text in classes:
        return list(classes).index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
        return int(text)
    raise DatasetError(f"{where}: label {value!r} is not a class", path=path,
                       hint="use a name of the config's classes (" + ", ".join(classes) + ") or its index 0-"
                            f"{len(classes) - 1}")


def read_class_csv(path: Path, classes: Sequence[str]) -> dict[str, int]:
    """``{case id: class index}`` from a ``case,label`` CSV; repeated cases and unknown labels are errors."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
            header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"unreadable class CSV ({err})", path=path) from err
    if not rows:
        raise DatasetError("class CSV has no rows", path=path, hint="write a header 'case,label' and one row per case")
    original = list(rows[0].keys())
    case_col = next((original[i] for i, h in enumerate(header) if h in CASE_COLUMNS), None)
    label_col = next((original[i] for i, h in enumerate(header) if h in LABEL_COLUMNS), None)
    if case_col is None or label_col is None:
        raise DatasetError(f"class CSV header {original} lacks a case column ({' or '.join(CASE_COLUMNS)}) and a "
                           f"label column ({' or '.join(LABEL_COLUMNS)})", path=path,
                           hint="the first line should read: case,label")
    out: dict[str, int] = {}
    for i, row in enumerate(rows, start=2):
        case = (row.get(case_col) or "").strip()
        if not case:
            raise DatasetError(f"line {i}: no case id", path=path)
        if case in out:
            raise DatasetError(f"line {i}: case {case!r} is listed twice", path=path)
        out[case] = class_index(row.get(label_col) or "", classes, f"line {i} (case {case})", path)
    return out


def class_from_segmentation(label_path: Path, label: int, min_voxels: int) -> int:
    """1 when ``label`` covers at least ``min_voxels`` voxels of the label file (its own grid), else 0."""
    try:
        img = cast(nib.Nifti1Image, nib.load(str(label_path)))
        data = np.asarray(img.dataobj)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(f"cannot read label file ({err})", path=label_path) from err
    return int(int(np.count_nonzero(np.rint(data) == label)) >= min_voxels)


def case_classes(cfg: PipelineConfig, cases: Sequence[Case]) -> dict[str, int]:
    """``{case id: class index}`` of ``cases`` from ``data.class_csv`` or ``data.class_from_label``; a case the
    CSV does not list, or (derived) a case without a segmentation, is an error naming it."""
    d = cfg.data
    if d.class_csv:
        table = read_class_csv(Path(d.class_csv), cfg.classes)
        missing = [c.case_id for c in cases if c.case_id not in table]
        if missing:
            raise DatasetError(f"{len(missing)} cases have no row in the class CSV: {', '.join(missing[:8])}"
                               + (" ..." if len(missing) > 8 else ""), path=d.class_csv,
                               hint="add a row 'case,label' for each (case ids as the dataset layout names them)")
        return {c.case_id: table[c.case_id] for c in cases}
    unlabelled = [c.case_id for c in cases if c.label is None]
    if unlabelled:
        raise DatasetError(f"data.class_from_label needs a segmentation for every case; none for "
                           f"{', '.join(unlabelled[:8])}", path=d.root)
    rule = d.class_from_label
    return {c.case_id: class_from_segmentation(cast(Path, c.label), rule.label, rule.min_voxels) for c in cases}


def load_task_dataset(cfg: PipelineConfig, root: str | Path | None = None) -> Dataset:
    """The dataset of ``cfg`` (``root`` overrides ``data.root``). With ``task: classification`` and a class CSV,
    cases need no segmentation: a layout's "label missing" errors are dropped for cases found with their images."""
    where = root if root is not None else cfg.data.root
    if not (cfg.is_classification and cfg.data.class_csv):
        return load_dataset(where, cfg.data.format)
    ds = discover(where, cfg.data.format)
    unlabelled = {c.case_id for c in ds.cases if c.label is None}
    raise_for([i for i in ds.issues if not (i.check == "missing" and i.case_id in unlabelled)],
              "in the dataset layout", ds.root)
    return ds
