"""BAD-INPUTS cases on the inference side, each built from scratch: M7 / R7 (a checkpoint saved from CUDA runs
on a CPU-only host and says which device runs and why; --device cuda there is an error), N1 (a qform/sform
disagreement is said for the case, not only recorded), R8 (two CPU runs give byte-identical masks and sidecars,
timings aside)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medpipe.errors import MedpipeError
from medpipe.inference.batch import infer
from tests.conftest import make_affine, save_nifti
from tests.inference_models import save_fold_folders


def _ct(path: Path, affine: np.ndarray | None = None) -> Path:
    """A small CT-like volume in HU: air around a 40 HU body with a 200 HU block."""
    img = np.full((24, 20, 12), -1000.0, np.float32)
    img[3:21, 3:17, :] = 40.0
    img[8:14, 7:12, 3:8] = 200.0
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_nifti(path, img, make_affine(spacing=(1.5, 1.5, 2.5)) if affine is None else affine)


def _saved_on_cuda(src: Path, dst: Path) -> Path:
    """``src`` as torch.save writes it from a CUDA process: every tensor storage's location is cuda:0 (the
    pickle's location string, the only thing that differs), so a plain ``torch.load`` on a CPU-only host fails."""
    cpu, cuda = b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"  # BINUNICODE: length, then the text
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith("/data.pkl"):
                assert data.count(cpu) > 0
                data = data.replace(cpu, cuda)
            out.writestr(info.filename, data)
    return dst


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_a_checkpoint_saved_on_cuda_runs_on_the_cpu_and_says_why(tmp_path: Path) -> None:
    folds = save_fold_folders(tmp_path / "model", n_folds=1)
    ckpt = _saved_on_cuda(folds / "fold_0" / "best.pt", tmp_path / "cuda.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # what a load without map_location does here
        torch.load(ckpt, weights_only=True)
    scan = _ct(tmp_path / "in" / "scan.nii.gz")
    result = infer(ckpt, [scan], tmp_path / "out", device="auto")
    assert [c.status for c in result.cases] == ["ok"], result.cases
    assert result.notices == ("running on cpu: --device auto and no CUDA device is visible",)
    with pytest.raises(MedpipeError, match="--device cuda was requested but no CUDA device is visible"):
        infer(ckpt, [scan], tmp_path / "out2", device="cuda")  # R7: an explicit request is not downgraded


def test_a_qform_sform_disagreement_is_said_for_the_case(tmp_path: Path) -> None:
    folds = save_fold_folders(tmp_path / "model", n_folds=1)
    s = make_affine(spacing=(1.5, 1.5, 2.5))
    q = s.copy()
    q[:3, 3] += (10.0, 0.0, 0.0)
    good = _ct(tmp_path / "in" / "scan.nii.gz")
    img = nib.Nifti1Image(np.asanyarray(nib.load(good).dataobj), s)
    img.set_qform(q, code=1)
    img.set_sform(s, code=1)
    nib.save(img, tmp_path / "in" / "scan.nii.gz")
    (case,) = infer(folds / "fold_0", [tmp_path / "in"], tmp_path / "out", device="cpu").cases
    assert case.status == "ok" and case.note is not None
    assert "qform and sform disagree by up to 10 mm; the sform is used" in case.note
    side = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert side["input"]["spatial_transform"]["used"] == "sform"
    np.testing.assert_allclose(nib.load(tmp_path / "out" / "scan.nii.gz").affine, s, atol=1e-4)


def _without_timings(value: Any) -> Any:
    """The sidecar less what measures this run rather than its result (seconds, memory peaks)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items()
                if k not in ("seconds_total", "timings_s", "memory")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_two_cpu_runs_give_byte_identical_masks_and_sidecars(tmp_path: Path) -> None:
    folds = save_fold_folders(tmp_path / "model", n_folds=2)
    _ct(tmp_path / "in" / "a.nii.gz")
    _ct(tmp_path / "in" / "b.nii.gz", make_affine(spacing=(1.2, 1.7, 3.0), rot_deg=(0, 0, 17), origin=(5, -3, 2)))
    digests, sides = [], []
    for run in ("one", "two"):
        result = infer(folds, [tmp_path / "in"], tmp_path / run, device="cpu", save_probabilities=True)
        assert {c.status for c in result.cases} == {"ok"}
        files = sorted(p for p in (tmp_path / run).iterdir() if not p.name.endswith(".json"))
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
        sides.append({p.name: _without_timings(json.loads(p.read_text()))
                      for p in sorted((tmp_path / run).glob("*.json"))})
    assert len(digests[0]) >= 4 and digests[0] == digests[1]
    assert sides[0] == sides[1]
