"""Remaining BAD-INPUTS cases that had no test of their own: F8 (odd path names), F10 (same basename twice),
F11 (archives are never unpacked), N11 (NIfTI-2, Analyze, descrip), L4 (labels above 255), L5 (one-hot 4D
labels), S7 (inconsistent label maps)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.datasets import discover
from medpipe.errors import DatasetError, InputError
from medpipe.inference.batch import _check_collisions
from medpipe.inference.inputs import InputCase, collect_inputs, load_case
from medpipe.io.nifti import load_label, load_nifti, mask_image
from tests.conftest import make_affine, save_nifti


@pytest.mark.parametrize("name", ["case 1; echo pwned", "$(touch x)", "-rf", "ünïcødé"])
def test_odd_path_names_are_just_names(tmp_path: Path, name: str) -> None:
    folder = tmp_path / name
    folder.mkdir()
    path = save_nifti(folder / f"{name}.nii.gz", np.ones((4, 4, 4), np.float32), make_affine())
    data, _ = load_nifti(path)
    assert data.shape == (4, 4, 4) and not (tmp_path / "x").exists()


def test_same_basename_in_two_folders_is_an_output_name_collision(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        save_nifti(tmp_path / sub / "scan.nii.gz", np.ones((4, 4, 4), np.float32), make_affine())
    cases = collect_inputs([tmp_path / "a", tmp_path / "b"], ("CT",))
    with pytest.raises(InputError, match=r"b/scan.nii.gz: output name collision: 'scan' also comes from .*a/scan"):
        _check_collisions(cases)


def test_an_archive_is_refused_and_never_unpacked(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / "scans.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../evil.nii.gz", b"x" * 100)
        z.writestr("/abs.nii.gz", b"x")
    with pytest.raises(InputError, match=r"scans\.zip: not a readable NIfTI image"):
        load_case(InputCase("scans", (archive,)), 1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["scans.zip", "work"]


def test_nifti2_is_read_analyze_is_refused_and_descrip_never_reaches_masks(tmp_path: Path) -> None:
    data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    n2 = nib.Nifti2Image(data, make_affine(spacing=(1.0, 1.0, 2.0)))
    n2.header["descrip"] = b"ZZPHISENTINEL"
    n2.set_qform(n2.affine, code=1)
    nib.save(n2, str(tmp_path / "n2.nii.gz"))
    loaded, info = load_nifti(tmp_path / "n2.nii.gz")
    np.testing.assert_array_equal(loaded, data)
    assert info.spacing_mm == pytest.approx((1.0, 1.0, 2.0))
    assert b"ZZPHISENTINEL" not in mask_image(np.zeros((4, 4, 4), np.uint8), info.affine).header.binaryblock
    nib.save(nib.AnalyzeImage(data, np.eye(4)), str(tmp_path / "an.img"))  # an Analyze .hdr/.img pair
    with pytest.raises(InputError, match=r"an.img: expected a NIfTI image, found \w*AnalyzeImage"):
        load_nifti(tmp_path / "an.img")


def test_labels_above_255_are_written_as_uint16(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), np.int32)
    labels[1, 1, 1] = 300
    img = mask_image(labels, make_affine())
    assert img.get_data_dtype() == np.uint16
    nib.save(img, str(tmp_path / "m.nii.gz"))
    assert int(np.asanyarray(nib.load(tmp_path / "m.nii.gz").dataobj).max()) == 300


def test_a_one_hot_4d_label_is_refused(tmp_path: Path) -> None:
    onehot = np.zeros((4, 4, 4, 3), np.float32)
    onehot[..., 0] = 1
    path = save_nifti(tmp_path / "seg.nii.gz", onehot, make_affine())
    with pytest.raises(InputError, match=r"seg.nii.gz: 4D image \(shape \(4, 4, 4, 3\)\), expected a 3D volume"):
        load_label(path)


@pytest.mark.parametrize(("labels", "message"), [
    ({"1": "kidney"}, "label map has no background"),
    ({"0": "background", "1": "kidney", "2": "Kidney"}, "names \\['kidney'\\] more than once"),
])
def test_an_inconsistent_label_map_is_refused(tmp_path: Path, labels: dict[str, str], message: str) -> None:
    root = tmp_path / "Task01"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    save_nifti(root / "imagesTr" / "a.nii.gz", np.ones((4, 4, 4), np.float32), make_affine())
    save_nifti(root / "labelsTr" / "a.nii.gz", np.zeros((4, 4, 4), np.uint8), make_affine())
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "modality": {"0": "CT"}, "numTraining": 1,
                                                   "training": [{"image": "./imagesTr/a.nii.gz",
                                                                 "label": "./labelsTr/a.nii.gz"}]}))
    with pytest.raises(DatasetError, match=message):
        discover(root, "msd")
