"""BAD-INPUTS cases on datasets, evaluation and NIfTI headers, each built from scratch: L6 (a label flipped
against its image is named, with an overlay PNG), S5 override (--allow-duplicates, recorded), evaluate's input
grid tolerance relative to the voxel size, N1 (qform/sform disagreement reported and recorded), S4 (a channel
on another grid), S3 (a label header that disagrees: error and overlay)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.datasets import check_dataset
from medpipe.errors import GeometryError
from medpipe.evaluation.evaluate import evaluate
from medpipe.io.nifti import inspect_nifti
from tests.conftest import make_affine, save_nifti
from tests.datasets.test_layouts import make_layout

runner = CliRunner()
LABELS = {0: "background", 1: "kidney"}


def _kits_case(root: Path, i: int, flip: bool = False) -> None:
    """A CT-like case: air, body at 40 HU, an off-centre 'kidney' at 160 HU (label 1)."""
    rng = np.random.default_rng(i)
    img = np.full((16, 12, 8), -1000.0, np.float32)
    img[1:15, 1:11, :] = 40.0
    lab = np.zeros(img.shape, np.uint8)
    lab[2:6, 3:8, 2:6] = 1
    img[lab == 1] = 160.0
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    aff = make_affine(spacing=(0.8, 0.8, 2.5))
    (root / f"case_{i:05d}").mkdir(parents=True)
    save_nifti(root / f"case_{i:05d}" / "imaging.nii.gz", img, aff)
    save_nifti(root / f"case_{i:05d}" / "segmentation.nii.gz", np.flip(lab, 0) if flip else lab, aff, np.uint8)


def test_a_label_flipped_against_its_image_is_named_with_an_overlay(tmp_path: Path) -> None:
    root = tmp_path / "kits"
    for i in range(5):
        _kits_case(root, i, flip=(i == 3))
    report = check_dataset(root, "kits", labels=LABELS, qc_dir=tmp_path / "qc")
    found = [w for w in report.warnings if w.check == "plausibility"]
    assert [w.case_id for w in found] == ["case_00003"], report.issues
    assert "median intensity under label 1 is 39.9, the dataset's is 160" in found[0].message
    png = tmp_path / "qc" / "case_00003_label1.png"
    assert str(png) in found[0].message and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = runner.invoke(app, ["dataset", "check", str(root), "--format", "kits", "-o", str(tmp_path / "fp.json")])
    assert res.exit_code == 0 and "case_00003" in res.output
    assert (tmp_path / "fp-qc" / "case_00003_label1.png").is_file()


def test_duplicates_are_errors_unless_allowed_and_the_override_is_recorded(tmp_path: Path) -> None:
    root = make_layout(tmp_path / "kits", "kits", n=3)
    shutil.copytree(root / "case_00000", root / "case_00009")
    res = runner.invoke(app, ["dataset", "check", str(root), "--format", "kits"])
    assert res.exit_code == 1 and "allow-duplicates" in res.output
    fp = tmp_path / "fp.json"
    res = runner.invoke(app, ["dataset", "check", str(root), "--format", "kits", "--allow-duplicates", "-o", str(fp)])
    assert res.exit_code == 0, res.output
    saved = json.loads(fp.read_text())
    assert saved["overrides"] == ["allow_duplicates"]
    (dup,) = [i for i in saved["issues"] if i["check"] == "duplicate"]
    assert dup["severity"] == "warning" and dup["case"] == "case_00009"


def _pair(tmp_path: Path, shift_mm: float) -> tuple[Path, Path]:
    """A reference and a prediction on a 0.59 x 0.59 x 3.3 mm grid whose origins differ by ``shift_mm``."""
    lab = np.zeros((20, 20, 6), np.uint8)
    lab[5:15, 5:15, 1:5] = 1
    aff = make_affine(spacing=(0.59, 0.59, 3.3), origin=(10.0, -20.0, 5.0))
    moved = aff.copy()
    moved[0, 3] += shift_mm
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    return (save_nifti(tmp_path / "pred" / "s.nii.gz", lab, moved, np.uint8),
            save_nifti(tmp_path / "ref" / "s.nii.gz", lab, aff, np.uint8))


def test_evaluate_accepts_float32_header_noise_and_records_it(tmp_path: Path) -> None:
    _pair(tmp_path, 0.00064)
    result = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "report", labels=LABELS)
    assert result.rows[0].dice == pytest.approx(1.0)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["settings"]["grid_differences_mm"] == {"s": pytest.approx(0.00064, abs=1e-6)}


def test_evaluate_still_refuses_a_real_shift_with_the_numbers(tmp_path: Path) -> None:
    _pair(tmp_path, 0.05)  # 8 % of the smallest spacing
    with pytest.raises(GeometryError, match=r"affine differs by up to 0.05 mm.*0.0059 mm"):
        evaluate(tmp_path / "pred", tmp_path / "ref", labels=LABELS)


def test_qform_sform_disagreement_is_reported_in_info_and_the_sidecar_record(tmp_path: Path) -> None:
    from medpipe.inference.inputs import InputCase, load_case

    s = make_affine(spacing=(1.0, 1.0, 2.0))
    q = s.copy()
    q[:3, 3] += (10.0, 0.0, 0.0)
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.float32), s)
    img.set_qform(q, code=1)
    img.set_sform(s, code=1)
    path = tmp_path / "img.nii.gz"
    nib.save(img, path)
    info = inspect_nifti(path)
    assert info.transform == "sform" and "disagree by up to 10 mm" in info.transform_note
    np.testing.assert_allclose(info.affine, s)
    res = runner.invoke(app, ["info", "--json", str(path)])
    assert res.exit_code == 0 and "qform and sform disagree by up to 10 mm; the sform is used" in res.output
    case = load_case(InputCase("img", (path,)), 1)
    assert case.provenance.to_json()["spatial_transform"] == {"used": "sform", "warning": info.transform_note}


def test_a_channel_on_another_grid_is_refused_naming_the_channel_file(tmp_path: Path) -> None:
    """S4: a BraTS case whose T2 file has 1.5 mm voxels where the other channels have 1 mm."""
    from medpipe.inference.inputs import InputCase, load_case

    root = make_layout(tmp_path / "brats", "brats2023", n=3)
    cid = "BraTS-GLI-00001-000"
    t2w = root / cid / f"{cid}-t2w.nii.gz"
    img = nib.load(t2w)
    save_nifti(t2w, np.asanyarray(img.dataobj), make_affine(spacing=(1.5, 1.5, 2.0)))
    report = check_dataset(root, "brats2023")
    (err,) = report.errors
    assert err.case_id == cid and err.check == "grid" and err.path == str(t2w)
    assert f"channel grid disagrees with {cid}-t1n.nii.gz" in err.message and "spacing" in err.message
    channels = tuple(root / cid / f"{cid}-{ch}.nii.gz" for ch in ("t1n", "t1c", "t2w", "t2f"))
    with pytest.raises(GeometryError, match=r"t2w.nii.gz: channel grid .*spacing \(1.5, 1.5, 2.0\) mm"):  # infer
        load_case(InputCase(cid, channels), 4)


def test_a_label_whose_affine_disagrees_is_an_error_with_an_overlay(tmp_path: Path) -> None:
    """S3: the label's header has its x axis flipped (same shape): an error with both values and an overlay PNG of
    the label drawn voxel for voxel over the image."""
    root = tmp_path / "kits"
    for i in range(3):
        _kits_case(root, i)
    seg = root / "case_00001" / "segmentation.nii.gz"
    flipped = make_affine(spacing=(0.8, 0.8, 2.5), flips=(-1, 1, 1))
    save_nifti(seg, np.asanyarray(nib.load(seg).dataobj), flipped, np.uint8)
    report = check_dataset(root, "kits", labels=LABELS, qc_dir=tmp_path / "qc")
    (err,) = report.errors
    assert err.case_id == "case_00001" and err.check == "grid" and "label grid disagrees with the image" in err.message
    png = tmp_path / "qc" / "case_00001_grid.png"
    assert f"overlay (voxel for voxel): {png}" in err.message and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "qc" / "case_00000_grid.png").exists()
    (plain,) = check_dataset(root, "kits", labels=LABELS).errors  # no --qc-dir: the error alone
    assert plain.message == err.message.split("; overlay")[0]
