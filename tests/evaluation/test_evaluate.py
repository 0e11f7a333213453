"""``medpipe.evaluation.evaluate``: case matching, bad inputs, grids, outputs, presets, and real label maps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medpipe
from medpipe.cli.options import parse_labels, parse_tolerances
from medpipe.errors import ConfigError, GeometryError, InputError
from medpipe.evaluation.evaluate import evaluate, score_arrays
from medpipe.evaluation.result import EvaluationSummary
from tests.conftest import SHARED_DATA, make_affine

AFFINE = make_affine(spacing=(0.8, 0.8, 2.0), origin=(-10.0, 5.0, 20.0))


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _pair(shift: int = 1) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((24, 20, 12), np.int16)
    ref[6:14, 5:13, 3:8] = 1
    ref[16:20, 14:18, 4:7] = 2
    pred = np.roll(ref, shift, axis=0)
    return ref, pred


def _folders(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    for i in range(n):
        ref, pred = _pair(i)
        _save(tmp_path / "ref" / f"case_{i}.nii.gz", ref)
        _save(tmp_path / "pred" / f"case_{i}.nii.gz", pred)
    return tmp_path / "pred", tmp_path / "ref"


def test_folders_are_matched_and_all_outputs_written(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path)
    _save(tmp_path / "ref" / "case_9.nii.gz", _pair()[0])  # a reference without prediction: reported
    seen: list[str] = []
    result = medpipe.evaluate(pred, ref, tmp_path / "out", labels={0: "bg", 1: "liver", 2: "spleen"},
                              progress=lambda i, n, case: seen.append(case))
    assert result.cases == ("case_0", "case_1", "case_2") and seen == list(result.cases)
    assert result.missing_predictions == ("case_9",)
    with open(tmp_path / "out" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {"case", "label", "label_name", "dice", "hd95_mm", "assd_mm", "nsd"} <= set(rows[0])
    assert (rows[0]["case"], rows[0]["label"], rows[0]["label_name"], rows[0]["dice"]) == ("case_0", "1", "liver",
                                                                                            "1.000000")
    row = next(r for r in result.rows if r.case == "case_2" and r.label == 1)
    assert row.hd_mm == pytest.approx(1.6)  # shifted by 2 voxels of 0.8 mm
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert EvaluationSummary.from_json(summary).to_json() == summary  # the record round-trips its JSON
    assert summary["missing_predictions"] == ["case_9"]
    assert summary["labels"]["1"]["metrics"]["dice"]["n"] == 3
    assert summary["labels"]["1"]["empty"] == {"none": 3, "both": 0, "ref": 0, "pred": 0}
    text = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in text
    assert "src=\"http" not in text and "href=\"http" not in text and "<script" not in text  # opens offline
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "report.html", "summary.json"]


def test_medpipe_evaluate_is_the_function_after_the_module_import() -> None:
    import medpipe.evaluation.evaluate as module

    assert medpipe.evaluate is module.evaluate is evaluate


def test_library_call_without_out_dir_writes_nothing(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path, 1)
    result = evaluate(pred / "case_0.nii.gz", ref / "case_0.nii.gz")
    assert result.paths == {} and result.rows[0].dice == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred", "ref"]


def test_labels_none_scores_every_label_and_fills_absent_ones(tmp_path: Path) -> None:
    ref, pred = _pair()
    _save(tmp_path / "r" / "a.nii.gz", ref)
    _save(tmp_path / "p" / "a.nii.gz", pred)
    only1 = np.where(ref == 1, 1, 0).astype(np.int16)
    _save(tmp_path / "r" / "b.nii.gz", only1)
    _save(tmp_path / "p" / "b.nii.gz", only1)
    result = evaluate(tmp_path / "p", tmp_path / "r")
    assert [(r.case, r.label, r.empty) for r in result.rows] == [
        ("a", 1, "none"), ("a", 2, "none"), ("b", 1, "none"), ("b", 2, "both")]
    assert result.empty_counts[2] == {"none": 1, "both": 1, "ref": 0, "pred": 0}


def test_prediction_without_reference_is_an_error_naming_it(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path, 2)
    _save(pred / "extra.nii.gz", _pair()[0])
    with pytest.raises(InputError, match="extra") as err:
        evaluate(pred, ref, tmp_path / "out")
    assert "extra.nii.gz" in str(err.value)
    assert not (tmp_path / "out" / "metrics.csv").exists()


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path, 1)
    bad = _save(tmp_path / "nan" / "case_0.nii.gz", np.full((24, 20, 12), np.nan, np.float32))
    with pytest.raises(InputError, match="NaN") as err:
        evaluate(bad, ref / "case_0.nii.gz")
    assert str(bad) in str(err.value)
    text = tmp_path / "text" / "case_0.nii.gz"
    text.parent.mkdir()
    text.write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"case_0\.nii\.gz"):
        evaluate(text, ref / "case_0.nii.gz")
    with pytest.raises(InputError, match="not found"):
        evaluate(tmp_path / "missing.nii.gz", ref / "case_0.nii.gz")
    with pytest.raises(InputError, match=r"label values \[2\]") as err:
        evaluate(pred / "case_0.nii.gz", ref / "case_0.nii.gz", labels={0: "bg", 1: "liver"})
    assert "case_0.nii.gz" in str(err.value)
    with pytest.raises(InputError, match="both be files or both be folders"):
        evaluate(pred, ref / "case_0.nii.gz")


def test_grids_must_agree_unless_resampling_is_asked(tmp_path: Path) -> None:
    ref, _ = _pair(0)
    _save(tmp_path / "ref.nii.gz", ref)
    moved = AFFINE.copy()
    moved[0, 3] += 0.8  # one voxel further along x
    _save(tmp_path / "pred.nii.gz", np.roll(ref, -1, axis=0), moved)
    with pytest.raises(GeometryError, match="does not match") as err:
        evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz")
    assert "pred.nii.gz" in str(err.value)
    result = evaluate(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", resample=True)
    assert result.resampled == ("pred",)
    assert [r.dice for r in result.rows] == [1.0, 1.0]  # the same voxels in world space


def test_score_arrays_is_the_validation_fast_path() -> None:
    ref, pred = _pair()
    rows = score_arrays(pred.astype(np.int64), ref.astype(np.int32), (0.8, 0.8, 2.0), {1: "a", 2: "b"})
    assert [r.label for r in rows] == [1, 2] and all(r.dice is not None and r.hd95_mm is None for r in rows)
    assert rows[0].dice == pytest.approx(2 * (7 * 8 * 5) / (2 * 8 * 8 * 5))


def test_voxel_convention_and_tolerances(tmp_path: Path) -> None:
    pred, ref = _folders(tmp_path, 2)
    result = evaluate(pred, ref, surface="voxel", nsd_tolerance_mm={1: 0.5, 2: 5.0}, labels={1: "a", 2: "b"})
    assert result.settings.nsd_tolerance_mm == {1: 0.5, 2: 5.0}
    shifted = [r for r in result.rows if r.case == "case_1"]
    assert shifted[0].nsd < 1.0 and shifted[1].nsd == 1.0  # type: ignore[operator]
    with pytest.raises(ConfigError):
        evaluate(pred, ref, surface="mesh")


def test_parsers() -> None:
    assert parse_labels("1=liver, 2:spleen") == {1: "liver", 2: "spleen"}
    assert parse_tolerances("2.5") == 2.5 and parse_tolerances("1=1,2=2.5") == {1: 1.0, 2: 2.5}
    for bad in ("liver", "x=1"):
        with pytest.raises(ConfigError):
            parse_labels(bad)
    for bad in ("-1", "abc", "1=nan"):
        with pytest.raises(ConfigError):
            parse_tolerances(bad)


BRATS = SHARED_DATA / "nifti" / "brats-tcga-du-7294"
CT = SHARED_DATA / "nifti" / "ct-abdomen-3mm"


@pytest.mark.realdata
@pytest.mark.skipif(not BRATS.is_dir(), reason="shared BraTS data absent")
def test_five_brats_algorithms_scored_against_the_fusion(tmp_path: Path) -> None:
    result = evaluate(BRATS / "segmentation", _fusion_refs(tmp_path), tmp_path / "o",
                      preset="brats", image=BRATS / "raw_bet" / "TCGA-DU-7294_fla_bet.nii.gz")
    assert len(result.cases) == 5 and {r.label_name for r in result.rows} == {"WT", "TC", "ET"}
    wt = [r for r in result.rows if r.label_name == "WT"]
    assert all(0.85 < r.dice <= 1.0 for r in wt)  # type: ignore[operator]
    assert all(r.hd95_mm is not None and r.hd95_mm < 20 for r in wt)
    assert all(r.lesions is not None for r in result.rows)
    assert (tmp_path / "o" / "lesions.csv").is_file() and not result.overlays  # one image, five cases: no overlay


def _fusion_refs(tmp_path: Path) -> Path:
    """The fused segmentation as the reference of every algorithm (same case names)."""
    import shutil

    for f in sorted((BRATS / "segmentation").glob("*.nii.gz")):
        (tmp_path / "refs").mkdir(exist_ok=True)
        shutil.copy(BRATS / "fusion" / "mav.nii.gz", tmp_path / "refs" / f.name)
    return tmp_path / "refs"


@pytest.mark.realdata
@pytest.mark.skipif(not BRATS.is_dir(), reason="shared BraTS data absent")
def test_brats_pair_is_symmetric_and_agrees_with_monai() -> None:
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_hausdorff_distance

    a, b = BRATS / "segmentation" / "isen-20.nii.gz", BRATS / "segmentation" / "scan-20.nii.gz"
    ab = evaluate(a, b, preset="brats", surface="voxel", lesions=False)
    ba = evaluate(b, a, preset="brats", surface="voxel", lesions=False)
    for x, y in zip(ab.rows, ba.rows, strict=True):
        assert x.dice == pytest.approx(y.dice) and x.hd95_mm == pytest.approx(y.hd95_mm)
    ra, rb = (np.asarray(nib.load(str(p)).dataobj) for p in (a, b))
    wt_a, wt_b = (torch.from_numpy(np.isin(m, (1, 2, 4)))[None, None].float() for m in (ra, rb))
    monai = compute_hausdorff_distance(wt_a, wt_b, include_background=True, percentile=95, spacing=(1.0, 1.0, 1.0))
    assert ab.rows[0].hd95_mm == pytest.approx(monai.item(), rel=1e-5)


@pytest.mark.realdata
@pytest.mark.skipif(not CT.is_dir(), reason="shared CT data absent")
def test_totalsegmentator_labels_against_a_shifted_copy(tmp_path: Path) -> None:
    img = nib.load(str(CT / "labels.nii.gz"))
    labels = np.asarray(img.dataobj)
    shifted = np.zeros_like(labels)
    shifted[..., 1:] = labels[..., :-1]  # one 3 mm slice up, nothing wraps around
    _save(tmp_path / "labels.nii.gz", shifted.astype(np.int16), img.affine)
    same = evaluate(CT / "labels.nii.gz", CT / "labels.nii.gz")
    assert all(r.dice == 1.0 and r.hd95_mm == 0.0 for r in same.rows) and len(same.rows) >= 3
    moved = evaluate(tmp_path / "labels.nii.gz", CT / "labels.nii.gz", image=CT / "image.nii.gz")
    kidney = next(r for r in moved.rows if r.label == 2 and r.empty == "none")
    assert 0.5 < kidney.dice < 1.0 and kidney.hd_mm == pytest.approx(3.0)  # type: ignore[operator]
    # HD can exceed one slice where a structure is cut by the grid border; HD95 is one slice everywhere
    assert all(r.hd95_mm == pytest.approx(3.0) for r in moved.rows if r.empty == "none")
    assert all(math.isnan(r.hd95_mm) for r in moved.rows if r.empty != "none")  # type: ignore[arg-type]
    assert "labels" in moved.overlays
