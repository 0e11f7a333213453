"""Every record that goes to disk round-trips through its JSON form unchanged (to_json -> from_json -> to_json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medpipe.inference.inputs import InputProvenance
from medpipe.inference.sidecar import (
    SIDECAR_FORMAT,
    InferenceSidecar,
    ModelRef,
    SegmentDetails,
    SlidingWindowSettings,
    read_sidecar,
)
from medpipe.io.dicom.provenance import (
    DetiltRepair,
    DicomProvenance,
    EqualiseRepair,
    ScanSummary,
    SeriesSource,
    ValueSummary,
)
from medpipe.io.geometry import Grid
from medpipe.io.intensity import HuCheck

AFFINE = np.array([[0.0, -0.8, 0.1, 10.0], [0.7, 0.0, 0.0, -20.0], [0.0, 0.05, 2.5, 33.0], [0, 0, 0, 1.0]])


def _dicom() -> DicomProvenance:
    return DicomProvenance(
        source=SeriesSource("1.2.3", 3, "3-2", "t1 sag", "MR", 20, {"echo": "2"}, ("Explicit VR Little Endian",)),
        scan=ScanSummary(22, {"not DICOM": 2}, ("4",)),
        decisions=("sorted by position",), checks={"even slice spacing": "ok"},
        repairs=(DetiltRepair("tilt 14 deg", "shift", ((0.0, 1.5), (-2.0, 0.0)), (64, 64), (66, 64), -1024.0, 14.0),
                 EqualiseRepair("uneven", "linear", "smallest gap", 10, 14, {"min": 1.0, "median": 2.0, "max": 4.0},
                                1.5)),
        values=ValueSummary("slope 1, intercept -1024", 0, -1024.0, 3071.0), warnings=("w",),
        geometry=Grid((64, 66, 14), AFFINE),
    )


def _sidecar(provenance: InputProvenance) -> InferenceSidecar:
    return InferenceSidecar(
        case="case_1", mask="case_1.nii.gz", input_sha256="ab" * 32, model=ModelRef("best.pt", "cd" * 32, "unet3d"),
        config_hash="0123456789abcdef", labels={0: "background", 1: "kidney"}, source_grid=Grid((4, 5, 6), AFFINE),
        device="cpu", sliding_window=SlidingWindowSettings((48, 48, 32), 0.5, 4, "gaussian"), input=provenance,
        details=SegmentDetails((40, 41, 12), (1.6, 1.6, 2.5), "cpu", 0.1, 0.2, 0.3), seconds_total=0.7,
        versions={"medpipe": "0.1.0"}, intensity_check=HuCheck(-1000.0, 300.0, -1024.0, 1500.0, True),
    )


def test_dicom_provenance_round_trips() -> None:
    prov = _dicom()
    again = DicomProvenance.from_json(json.loads(json.dumps(prov.to_json())))
    assert again.to_json() == prov.to_json()
    assert [r.kind for r in again.repairs] == ["detilt", "equalise"]


def test_inference_sidecar_round_trips_for_nifti_and_dicom(tmp_path: Path) -> None:
    for prov in (InputProvenance(), InputProvenance("dicom", _dicom())):
        side = _sidecar(prov)
        path = tmp_path / "case_1.json"
        path.write_text(json.dumps(side.to_json()))
        again = read_sidecar(path)
        assert again is not None and again.to_json() == side.to_json()
        assert side.to_json()["format"] == SIDECAR_FORMAT
        assert again.input.modality == (None if prov.dicom is None else "MR")


def test_a_sidecar_of_another_format_is_not_taken_as_done(tmp_path: Path) -> None:
    path = tmp_path / "case_1.json"
    path.write_text(json.dumps({**_sidecar(InputProvenance()).to_json(), "format": "medpipe-inference-sidecar/99"}))
    assert read_sidecar(path) is None
    path.write_text("{not json")
    assert read_sidecar(path) is None


def test_dataset_fingerprint_round_trips_through_its_file(tmp_path: Path) -> None:
    from medpipe.datasets import check_dataset, save_fingerprint
    from medpipe.datasets.fingerprint import FINGERPRINT_FORMAT, Fingerprint
    from tests.datasets.test_layouts import make_layout

    report = check_dataset(make_layout(tmp_path / "k", "kits", n=3))
    doc = json.loads(save_fingerprint(report, tmp_path / "fp.json").read_text())
    assert doc["format"] == FINGERPRINT_FORMAT
    again = Fingerprint.from_json(doc, tmp_path / "fp.json")
    assert again == report.fingerprint and again.to_json() == report.fingerprint.to_json()
