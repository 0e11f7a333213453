"""Dataset layouts, integrity checks, fingerprint and folds on tiny hand-built datasets (no training).

Also a small factory (``write_volume``, ``make_layout``) that the training tests reuse.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.datasets import (
    check_dataset,
    detect_format,
    discover,
    fold_splits,
    kfold_splits,
    load_dataset,
    select_split,
)
from medpipe.errors import ConfigError, DatasetError
from tests.conftest import make_affine, save_nifti

runner = CliRunner()
SHAPE = (12, 10, 8)
SPACING = (1.0, 1.0, 2.0)


def write_volume(path: Path, data: np.ndarray, affine: np.ndarray | None = None, dtype: type = np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_nifti(path, data, make_affine(spacing=SPACING) if affine is None else affine, dtype)


def phantom(seed: int, labels: tuple[int, ...] = (1, 2, 3)) -> tuple[np.ndarray, np.ndarray]:
    """An image (one channel, values 100 + 50*label + noise) and a label map with nested boxes."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:10, 2:8, 1:7] = labels[0]
    if len(labels) > 1:
        lab[3:9, 3:7, 2:6] = labels[1]
    if len(labels) > 2:
        lab[5:7, 4:6, 3:5] = labels[2]
    img = 100.0 + 50.0 * (lab > 0) + lab * 10.0 + rng.normal(0, 1, SHAPE)
    return img.astype(np.float32), lab


def make_layout(root: Path, fmt: str, n: int = 4, seed: int = 0) -> Path:
    """A tiny dataset of ``n`` cases in layout ``fmt``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if fmt == "brats2023":
            cid = f"BraTS-GLI-{i:05d}-000"
            img, lab = phantom(seed + i)
            for k, ch in enumerate(("t1n", "t1c", "t2w", "t2f")):
                write_volume(root / cid / f"{cid}-{ch}.nii.gz", img + k)
            write_volume(root / cid / f"{cid}-seg.nii.gz", lab, dtype=np.uint8)
        elif fmt == "brats2021":
            cid = f"BraTS2021_{i:05d}"
            img, lab = phantom(seed + i, (2, 1, 4))
            for k, ch in enumerate(("t1", "t1ce", "t2", "flair")):
                write_volume(root / cid / f"{cid}_{ch}.nii.gz", img + k)
            write_volume(root / cid / f"{cid}_seg.nii.gz", lab, dtype=np.uint8)
        elif fmt == "kits":
            img, lab = phantom(seed + i, (1, 2))
            write_volume(root / f"case_{i:05d}" / "imaging.nii.gz", img)
            write_volume(root / f"case_{i:05d}" / "segmentation.nii.gz", lab, dtype=np.uint8)
        elif fmt == "msd":
            img, lab = phantom(seed + i)
            four = np.stack([img, img * 0.5, img + 3], axis=-1)
            write_volume(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", four)
            write_volume(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", lab, dtype=np.uint8)
        elif fmt == "nnunet":
            img, lab = phantom(seed + i)
            for k in range(2):
                write_volume(root / "imagesTr" / f"case{i:03d}_{k:04d}.nii.gz", img + k)
            write_volume(root / "labelsTr" / f"case{i:03d}.nii.gz", lab, dtype=np.uint8)
    if fmt == "msd":
        meta = {"name": "tiny", "modality": {"0": "FLAIR", "1": "T1w", "2": "T2w"},
                "labels": {"0": "background", "1": "edema", "2": "non-enhancing", "3": "enhancing"},
                "numTraining": n, "training": [{"image": f"./imagesTr/BRATS_{i:03d}.nii.gz",
                                                "label": f"./labelsTr/BRATS_{i:03d}.nii.gz"} for i in range(n)]}
        (root / "dataset.json").write_text(json.dumps(meta))
    if fmt == "nnunet":
        meta = {"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                "numTraining": n, "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(meta))
    return root


# ----- layouts ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "channels", "labels"),
    [
        ("brats2023", ("t1n", "t1c", "t2w", "t2f"), {0, 1, 2, 3}),
        ("brats2021", ("t1", "t1ce", "t2", "flair"), {0, 1, 2, 4}),
        ("kits", ("CT",), {0, 1, 2, 3}),
        ("msd", ("FLAIR", "T1w", "T2w"), {0, 1, 2, 3}),
        ("nnunet", ("T2", "ADC"), {0, 1, 2, 3}),
    ],
)
def test_layouts_are_detected_and_loaded(tmp_path: Path, fmt: str, channels: tuple, labels: set) -> None:
    root = make_layout(tmp_path / fmt, fmt, n=3)
    assert detect_format(root) == fmt
    ds = load_dataset(root)
    assert ds.format == fmt and len(ds.cases) == 3 and ds.channel_names == channels
    assert set(ds.labels or {}) == labels
    assert all(c.label is not None and c.label.is_file() for c in ds.cases)
    expect_files = 1 if fmt in ("kits", "msd") else len(channels)
    assert all(len(c.images) == expect_files for c in ds.cases)
    report = check_dataset(root)
    assert not report.errors, report.errors


def test_msd_4d_images_are_checked_against_the_declared_modalities(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "msd", "msd", n=3)
    img, _ = phantom(9)
    write_volume(root / "imagesTr" / "BRATS_001.nii.gz", np.stack([img, img], axis=-1))  # 2 of 3 channels
    report = check_dataset(root)
    [err] = report.errors
    assert err.case_id == "BRATS_001" and "2 channels" in err.message and "expected 3" in err.message
    # hidden macOS companions (._*) in an MSD archive are not cases
    (root / "imagesTr" / "._BRATS_000.nii.gz").write_bytes(b"\x00" * 10)
    assert len(discover(root).cases) == 3


def test_nnunet_region_labels_become_regions(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "nn", "nnunet", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    (root / "dataset.json").write_text(json.dumps(meta))
    ds = load_dataset(root)
    assert ds.regions == {"whole": (1, 2, 3), "core": (2, 3), "enhancing": (3,)}
    assert set(ds.labels or {}) == {0, 1, 2, 3}


def test_list_layouts_csv_and_json(tmp_path: Path) -> None:
    make_layout(tmp_path / "k", "kits", n=2)
    rows = ["image,label,case_id"] + [f"k/case_{i:05d}/imaging.nii.gz,k/case_{i:05d}/segmentation.nii.gz,c{i}"
                                      for i in range(2)]
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "cases.csv")
    assert ds.format == "list" and [c.case_id for c in ds.cases] == ["c0", "c1"]
    (tmp_path / "cases.json").write_text(json.dumps({"training": [
        {"image": [f"k/case_{i:05d}/imaging.nii.gz"], "label": f"k/case_{i:05d}/segmentation.nii.gz"}
        for i in range(2)]}))
    assert len(load_dataset(tmp_path / "cases.json").cases) == 2


# ----- bad inputs -------------------------------------------------------------------------------------------
def test_missing_label_and_missing_modality_name_the_cases(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "b", "brats2023", n=4)
    (root / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz").unlink()
    (root / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2f.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    text = str(info.value)
    assert "2 problems" in text
    assert "BraTS-GLI-00001-000" in text and "label missing" in text
    assert "BraTS-GLI-00002-000" in text and "3 of 4 modalities" in text and "-t2f.nii.gz" in text


def test_label_on_another_grid_and_label_value_outside_the_map(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "k", "kits", n=4)
    _, lab = phantom(1, (1, 2))
    write_volume(root / "case_00001" / "segmentation.nii.gz", lab, make_affine(spacing=(1.0, 1.0, 2.5)), np.uint8)
    lab7 = lab.copy()
    lab7[0, 0, 0] = 7
    write_volume(root / "case_00002" / "segmentation.nii.gz", lab7, dtype=np.uint8)
    report = check_dataset(root, labels={0: "background", 1: "kidney", 2: "tumor", 3: "cyst"})
    by_case = {e.case_id: e for e in report.errors}
    assert set(by_case) == {"case_00001", "case_00002"}
    assert by_case["case_00001"].check == "grid" and "label grid disagrees" in by_case["case_00001"].message
    assert "2.5" in by_case["case_00001"].message
    assert "label values [7]" in by_case["case_00002"].message and "[0, 1, 2, 3]" in by_case["case_00002"].message


def test_nan_duplicates_and_outliers(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "k", "kits", n=5)
    img, _ = phantom(0, (1, 2))
    img[1, 1, 1] = np.nan
    write_volume(root / "case_00001" / "imaging.nii.gz", img)
    shutil.copy(root / "case_00000" / "imaging.nii.gz", root / "case_00002" / "imaging.nii.gz")
    coarse, lab = phantom(3, (1, 2))
    aff = make_affine(spacing=(1.0, 1.0, 6.0))
    write_volume(root / "case_00003" / "imaging.nii.gz", coarse, aff)
    write_volume(root / "case_00003" / "segmentation.nii.gz", lab, aff, np.uint8)
    report = check_dataset(root)
    errors = {(e.case_id, e.check) for e in report.errors}
    assert errors == {("case_00001", "finite"), ("case_00002", "duplicate")}
    assert "1 NaN" in next(e.message for e in report.errors if e.check == "finite")
    assert "case_00000" in next(e.message for e in report.errors if e.check == "duplicate")
    assert [(w.case_id, w.check) for w in report.warnings] == [("case_00003", "spacing")]


def test_empty_dataset_and_unreadable_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty folder"):
        load_dataset(tmp_path / "empty")
    root = make_layout(tmp_path / "msd", "msd", n=2)
    (root / "dataset.json").write_text('{"labels": {"0": "background",')
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert "dataset.json" in str(info.value) and "unreadable JSON" in str(info.value)
    (root / "dataset.json").write_text(json.dumps({"labels": {"1": "a"}, "training": []}))
    with pytest.raises(DatasetError, match="no background"):
        load_dataset(root)


def test_msd_count_differs_from_declared(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "msd", "msd", n=2)
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="numTraining is 3 but 'training' lists 2"):
        load_dataset(root)


# ----- fingerprint ------------------------------------------------------------------------------------------
def test_fingerprint_known_answers(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "k", "kits", n=3)
    fp = check_dataset(root).fingerprint.to_json()
    assert fp["spacing_mm"]["median"] == [1.0, 1.0, 2.0] and fp["shape_vox"]["median"] == list(SHAPE)
    _, lab = phantom(0, (1, 2))
    n1, n2 = int((lab == 1).sum()), int((lab == 2).sum())
    assert fp["classes"]["1"]["voxels"] == 3 * n1 and fp["classes"]["2"]["voxels"] == 3 * n2
    assert fp["classes"]["3"]["voxels"] == 0 and fp["classes"]["2"]["cases_present"] == 3
    ct = fp["intensity_foreground"]["CT"]  # foreground = label > 0: 160 (label 1) and 170 (label 2), noise 1
    assert 155 < ct["p0_5"] < 160 < ct["p50_0"] < 171 < ct["p99_5"] < 175
    assert fp["modality"] == "CT" and len(fp["identity"]) == 16


def test_identity_changes_when_one_voxel_changes(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "k", "kits", n=2)
    before = check_dataset(root, read_images=False).fingerprint.identity
    img, _ = phantom(0, (1, 2))
    img[0, 0, 0] += 1.0
    write_volume(root / "case_00000" / "imaging.nii.gz", img)
    assert check_dataset(root, read_images=False).fingerprint.identity != before


# ----- splits -----------------------------------------------------------------------------------------------
def test_kfold_splits_partition_the_cases(tmp_path: Path) -> None:
    ids = [f"c{i}" for i in range(11)]
    folds = kfold_splits(ids, 5, seed=0)
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == sorted(ids) and len(vals) == len(set(vals))
    assert all(set(f["train"]) | set(f["val"]) == set(ids) and not set(f["train"]) & set(f["val"]) for f in folds)
    assert kfold_splits(list(reversed(ids)), 5, seed=0) == folds  # order of discovery does not matter
    with pytest.raises(DatasetError, match="at least 5"):
        kfold_splits(ids[:3], 5, seed=0)


def test_splits_file_is_written_then_read_and_checked(tmp_path: Path) -> None:
    ds = load_dataset(make_layout(tmp_path / "k", "kits", n=5))
    path = tmp_path / "splits.json"
    folds = fold_splits(ds.cases, 5, 0, path)
    assert json.loads(path.read_text())["folds"] == folds
    custom = [{"train": [c.case_id for c in ds.cases[1:]], "val": [ds.cases[0].case_id]}] * 5
    path.write_text(json.dumps({"folds": custom}))
    with pytest.raises(DatasetError, match="more than one fold"):
        fold_splits(ds.cases, 5, 0, path)
    path.write_text(json.dumps({"folds": folds[:3]}))
    with pytest.raises(DatasetError, match="holds 3 folds"):
        fold_splits(ds.cases, 5, 0, path)
    with pytest.raises(ConfigError, match="fold 9 does not exist"):
        select_split(ds.cases, fold=9, n_folds=5, val_fraction=0.2, seed=0)
    train, val, _ = select_split(ds.cases, fold=2, n_folds=5, val_fraction=0.2, seed=0)
    assert [c.case_id for c in val] == kfold_splits([c.case_id for c in ds.cases], 5, 0)[2]["val"] and len(train) == 4


# ----- CLI --------------------------------------------------------------------------------------------------
def test_cli_dataset_check_reports_and_exits(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "b", "brats2023", n=3)
    res = runner.invoke(app, ["dataset", "check", str(root), "-o", str(tmp_path / "fp.json")])
    assert res.exit_code == 0, res.output
    fp = json.loads((tmp_path / "fp.json").read_text())
    assert fp["dataset"]["layout"] == "brats2023" and fp["n_errors"] == 0 and len(fp["cases"]) == 3
    _, lab = phantom(0)
    lab[0, 0, 0] = 7
    write_volume(root / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz", lab, dtype=np.uint8)
    res = runner.invoke(app, ["dataset", "check", str(root)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = " ".join(res.output.split())
    assert "BraTS-GLI-00000-000" in text and "[7]" in text and "1 errors" in text


def test_cli_train_fold_out_of_range_is_a_clean_error(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "k", "kits", n=5)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"labels: {{0: background, 1: kidney, 2: tumor}}\ndata:\n  root: {root}\n")
    res = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "run"), "--fold", "9"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--fold 9" in res.output and "5 folds" in res.output and not (tmp_path / "run").exists()
