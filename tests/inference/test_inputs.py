"""Case ids of inference inputs."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medpipe.inference.inputs import collect_inputs


def _write(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(path))
    return path


def test_nnunet_channel_suffix_is_dropped_from_one_channel_case_ids(tmp_path: Path) -> None:
    for name in ("caseA_0000", "caseB_0000", "case_00007"):
        _write(tmp_path / f"{name}.nii.gz")
    ids = sorted(c.case_id for c in collect_inputs([tmp_path], ("ct",)))
    # nnU-Net's imagesTs naming gives masks named like labelsTs; a 5-digit KiTS id is not a channel suffix
    assert ids == ["caseA", "caseB", "case_00007"]


def test_channel_suffix_kept_where_dropping_it_would_merge_two_cases(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "x.nii.gz"), _write(tmp_path / "x_0000.nii.gz")
    ids = {c.files[0].name: c.case_id for c in collect_inputs([a, b], ("ct",))}
    assert ids == {"x.nii.gz": "x", "x_0000.nii.gz": "x_0000"}
