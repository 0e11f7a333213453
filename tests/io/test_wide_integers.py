"""N12: integer values wider than float32's 24-bit mantissa survive DICOM reading and conversion exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from medpipe.io.dicom.convert import convert_dicom
from tests.dicom_factory import COLUMNS, ROWS, write_series


def _as_int32(ds, k: int) -> None:
    values = (16_777_217 + 3 * np.arange(ROWS * COLUMNS, dtype=np.int64).reshape(ROWS, COLUMNS) + 1000 * k)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 1
    ds.PixelData = values.astype("<i4").tobytes()
    ds.RescaleSlope, ds.RescaleIntercept = 1.0, 0.0


def test_int32_values_above_2_pow_24_are_kept_exactly(tmp_path):
    series = write_series(tmp_path / "in", edit=_as_int32)
    (out,) = convert_dicom(series.folder, tmp_path / "out").written
    assert out.dtype == "int32"
    data = np.asanyarray(nib.load(out.nifti).dataobj)
    assert data.dtype == np.int32
    # expected in (I, J, K) = (columns, rows, slices), slice k in position order
    expected = np.stack([16_777_217 + 3 * np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS) + 1000 * k
                         for k in range(data.shape[2])]).transpose(2, 1, 0)
    np.testing.assert_array_equal(data, expected)
    assert int(data.min()) == 16_777_217  # float32 would have made it 16777216
