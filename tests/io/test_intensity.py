"""The one CT-HU plausibility rule (BAD-INPUTS N8): real CT passes; normalised, 8-bit rescaled, intercept-less and
non-CT inputs are refused with the reason."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpipe.io.intensity import check_ct_hu

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "kits" / "case_00000" / "imaging.nii.gz"
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "nifti" / "ct-abdomen-3mm" / "image.nii.gz"


def _hu(path: Path) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


@pytest.mark.parametrize("path", [SAMPLE, pytest.param(REAL, marks=pytest.mark.realdata)], ids=["sample", "real"])
def test_ct_in_hu_passes(path: Path) -> None:
    check = check_ct_hu(_hu(path))
    assert check.looks_like_hu and check.problem is None
    assert check.minimum <= -500


@pytest.mark.parametrize(
    ("transform", "fragment"),
    [
        (lambda hu: (hu - hu.mean()) / hu.std(), "normalised"),  # z-scored: spans ~ 5 units
        (lambda hu: (hu - hu.min()) / (hu.max() - hu.min()), "normalised"),  # min-max 0..1
        (lambda hu: np.round(255 * (hu - hu.min()) / (hu.max() - hu.min())).astype(np.uint8), "0..255"),
        (lambda hu: hu + 1024.0, "rescale intercept"),  # stored values of a Siemens CT, intercept lost
    ],
    ids=["zscore", "minmax", "uint8", "no-intercept"],
)
def test_non_hu_inputs_are_refused_with_the_reason(transform, fragment: str) -> None:
    check = check_ct_hu(transform(_hu(SAMPLE)))
    assert not check.looks_like_hu
    assert check.problem is not None and fragment in check.problem


def test_a_header_that_says_mr_is_named_as_mr() -> None:
    check = check_ct_hu(_hu(SAMPLE), modality="MR")
    assert not check.looks_like_hu and check.problem is not None and "modality MR" in check.problem
    assert check_ct_hu(_hu(SAMPLE), modality="CT").looks_like_hu


def test_the_record_keeps_its_json_keys() -> None:
    assert set(check_ct_hu(_hu(SAMPLE)).to_json()) == {"p1", "p99", "min", "max", "looks_like_hu", "problem"}
