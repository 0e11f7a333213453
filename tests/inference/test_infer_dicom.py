"""`medpipe infer` on DICOM folders: masks on the DICOM volume's grid (world coordinates), several series,
patient data never reaching outputs, and the real JPEG 2000 CT against its label map."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.config import config_from_dict
from medpipe.models.checkpoint import save_checkpoint
from medpipe.models.factory import build_model
from tests.conftest import SHARED_DATA
from tests.dicom_factory import LPS_TO_RAS, oblique_iop, write_series

runner = CliRunner()
SENTINEL = "ZZPHISENTINEL"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (random) tiny CT model: geometry does not depend on the weights."""
    cfg = config_from_dict({
        "labels": {0: "background", 1: "organ"},
        "transforms": {"spacing_mm": [1.0, 1.0, 2.0], "crop_foreground": False, "hu_window": [-1000.0, 1000.0]},
        "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
        "inference": {"roi_size_vox": [96, 96, 16], "sw_batch_size": 2, "overlap": 0.0},
    })
    path = tmp_path_factory.mktemp("model") / "best.pt"
    save_checkpoint(path, build_model(cfg), cfg)
    return path


def _world(affine: np.ndarray, ijk: tuple[int, int, int]) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, float) + affine[:3, 3]


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "oblique"])
def test_mask_lands_on_the_dicom_grid(tmp_path: Path, checkpoint: Path, orientation: str) -> None:
    series = write_series(tmp_path / "dcm", orientation=oblique_iop() if orientation == "oblique" else orientation,
                          instance_order="shuffled", intercept=-1024.0)
    res = runner.invoke(app, ["infer", str(checkpoint), str(tmp_path / "dcm"), "-o", str(tmp_path / "out"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    masks = list((tmp_path / "out").glob("*.nii.gz"))
    assert len(masks) == 1 and masks[0].name.startswith("series3")
    img = nib.load(str(masks[0]))
    assert img.shape == (16, 12, 8) and img.get_data_dtype() == np.uint8
    # voxel (0, 0, 0) is the first slice's ImagePositionPatient, and the last voxel the last slice's far corner
    first_ras = LPS_TO_RAS[:3, :3] @ series.positions[0]
    assert np.allclose(_world(img.affine, (0, 0, 0)), first_ras, atol=1e-3)
    last_ras = LPS_TO_RAS[:3, :3] @ series.positions[-1]
    assert np.allclose(_world(img.affine, (0, 0, 7)), last_ras, atol=1e-3)
    side = json.loads(masks[0].with_suffix("").with_suffix(".json").read_text())
    assert side["input"]["format"] == "dicom" and side["source_grid"]["shape"] == [16, 12, 8]


def test_several_series_need_a_choice(tmp_path: Path, checkpoint: Path) -> None:
    write_series(tmp_path / "dcm", series_number=3, description="first", intercept=-1024.0)
    write_series(tmp_path / "dcm", series_number=4, description="second", seed=1, intercept=-1024.0)
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(checkpoint), str(tmp_path / "dcm"), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--series" in " ".join(res.output.split())
    assert not list(out.glob("*.nii.gz"))
    res = runner.invoke(app, ["infer", str(checkpoint), str(tmp_path / "dcm"), "-o", str(out), "--series", "4",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.glob("*.nii.gz")] == ["series4_second.nii.gz"]


def test_patient_data_never_reaches_outputs(tmp_path: Path, checkpoint: Path) -> None:
    folder = tmp_path / f"{SENTINEL}_MRN_12345" / "study"
    write_series(folder, patient_name=f"{SENTINEL}^John", patient_id=f"{SENTINEL}-ID", intercept=-1024.0)
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(checkpoint), str(folder), "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for path in out.iterdir():
        assert SENTINEL not in path.name
        assert SENTINEL.encode() not in path.read_bytes(), path.name
    assert SENTINEL not in res.output.replace(str(folder), "")  # only the path the user typed may be echoed


@pytest.mark.realdata
def test_real_jpeg2000_ct_mask_matches_label_map_in_world(tmp_path: Path, checkpoint: Path) -> None:
    root = SHARED_DATA / "dicom" / "ct-abdomen-jpeg2000"
    if not root.is_dir():
        pytest.skip("shared data not present")
    res = runner.invoke(app, ["infer", str(checkpoint), str(root / "series"), "-o", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    mask = nib.load(str(next(tmp_path.glob("*.nii.gz"))))
    ref = nib.load(str(root / "labels.nii.gz"))
    assert mask.shape == ref.shape
    # the label map stores rows in the other order (as dcm2niix does): the same voxel centres in the world
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, ref.shape[1] - 1
    assert np.allclose(ref.affine @ flip, mask.affine, atol=1e-3)
