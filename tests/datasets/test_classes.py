"""Case classes for ``task: classification``: from a CSV, from a segmentation, and the classification phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medpipe.config import config_from_dict
from medpipe.datasets.classes import case_classes, class_from_segmentation, load_task_dataset, read_class_csv
from medpipe.datasets.layouts import Case
from medpipe.datasets.synthetic import CLS_CLASSES, make_cls_case
from medpipe.datasets.synthetic.cls import has_tumor
from medpipe.errors import DatasetError
from tests.conftest import REPO, make_affine, save_nifti

SAMPLE = REPO / "sample_data" / "cls"


def cfg_for(root: Path, **data: Any) -> Any:
    return config_from_dict({"task": "classification", "classes": list(CLS_CLASSES),
                             "labels": {0: "background", 1: "kidney", 2: "tumor"}, "model": {"arch": "resnet18"},
                             "data": {"root": str(root), "format": "kits", **data}})


def test_class_csv_takes_names_and_indices(tmp_path: Path) -> None:
    p = tmp_path / "labels.csv"
    p.write_text("case,label,site\na,tumor,x\nb,0,y\nc, no_tumor ,z\n")
    assert read_class_csv(p, CLS_CLASSES) == {"a": 1, "b": 0, "c": 0}
    p.write_text("Case_ID,Class\na,1\n")
    assert read_class_csv(p, CLS_CLASSES) == {"a": 1}


@pytest.mark.parametrize(("text", "match"), [
    ("case,label\na,tumor\na,tumor\n", "line 3: case 'a' is listed twice"),
    ("case,label\na,cancer\n", "line 2 \\(case a\\): label 'cancer' is not a class"),
    ("case,label\na,2\n", "label '2' is not a class"),
    ("id,diagnosis\na,tumor\n", "lacks a case column"),
    ("", "no rows"),
])
def test_class_csv_errors_name_the_line(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "labels.csv"
    p.write_text(text)
    with pytest.raises(DatasetError, match=match):
        read_class_csv(p, CLS_CLASSES)


def test_class_from_segmentation_counts_voxels_of_the_label(tmp_path: Path) -> None:
    lab = np.zeros((6, 6, 4), np.uint8)
    lab[1:3, 1:3, 1:3] = 2  # 8 voxels of label 2
    lab[4, 4, 3] = 1
    path = save_nifti(tmp_path / "seg.nii.gz", lab, make_affine())
    assert class_from_segmentation(path, 2, 8) == 1
    assert class_from_segmentation(path, 2, 9) == 0
    assert class_from_segmentation(path, 3, 1) == 0


def test_sample_classes_from_csv_and_from_segmentation_agree() -> None:
    derived = cfg_for(SAMPLE, class_from_label={"label": 2, "min_voxels": 10})
    listed = cfg_for(SAMPLE, class_csv=str(SAMPLE / "labels.csv"))
    cases = list(load_task_dataset(derived).cases)
    assert len(cases) == 200
    a, b = case_classes(derived, cases), case_classes(listed, cases)
    assert a == b == {c.case_id: int(has_tumor(int(c.case_id[4:]))) for c in cases}
    assert sum(a.values()) == 100


def test_a_case_missing_from_the_csv_is_named(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("case,label\ncls_00000,tumor\n")
    cfg = cfg_for(SAMPLE, class_csv=str(tmp_path / "labels.csv"))
    cases = [Case("cls_00000", (Path("x"),), None), Case("cls_00001", (Path("y"),), None)]
    with pytest.raises(DatasetError, match="1 cases have no row in the class CSV: cls_00001"):
        case_classes(cfg, cases)
    with pytest.raises(DatasetError, match="needs a segmentation for every case; none for cls_00000"):
        case_classes(cfg_for(SAMPLE, class_from_label={"label": 2}), cases)


def test_a_class_csv_dataset_needs_no_segmentations(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for i in range(2):
        (root / f"case_{i:05d}").mkdir(parents=True)
        save_nifti(root / f"case_{i:05d}" / "imaging.nii.gz", np.zeros((4, 4, 4), np.int16), make_affine())
    (tmp_path / "labels.csv").write_text("case,label\ncase_00000,tumor\ncase_00001,no_tumor\n")
    ds = load_task_dataset(cfg_for(root, class_csv=str(tmp_path / "labels.csv")))
    assert [c.label for c in ds.cases] == [None, None]
    with pytest.raises(DatasetError, match="label missing"):
        load_task_dataset(cfg_for(root, class_from_label={"label": 2}))


def test_phantom_classes_and_confounders() -> None:
    cases = [make_cls_case(0, i) for i in range(8)]
    assert [c.tumor for c in cases] == [has_tumor(i) for i in range(8)] == [True, False, False, True] * 2
    for c in cases:
        assert bool((c.labels == 2).sum() >= 10) == c.tumor and (c.labels == 1).any()
        assert c.hu.shape[:2] == (32, 32) and c.hu.shape[2] == round(80 / c.slice_mm)
    assert {c.slice_mm for c in cases} > {5.0} and any(c.n_cysts for c in cases if not c.tumor)
    # the class is not in the global intensity: mean body HU overlaps between the classes
    mean = {t: [float(c.hu[c.hu > -500].mean()) for c in cases if c.tumor == t] for t in (True, False)}
    assert min(mean[True]) < max(mean[False]) and min(mean[False]) < max(mean[True])


def test_committed_cls_set_is_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total <= 3_000_000
