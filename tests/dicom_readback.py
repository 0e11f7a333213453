"""Independent readers for the DICOM objects medpipe writes, used by the tests as oracles.

* :func:`seg_points_pydicom`: pydicom alone (no highdicom): every foreground pixel of a SEG with its position in
  RAS+ millimetres, from the frames' ImagePositionPatient, the shared orientation and pixel spacing.
* :func:`seg_points_highdicom`: highdicom's own reading (``segread`` + ``get_volume``).
* :func:`rtstruct_masks`: contours rasterised back onto a grid with OpenCV (boundary pixels included).
* :func:`dciodvfy_errors`: the "Error" lines of dicom3tools' validator (None when it is not installed);
  :func:`seg_files` and :func:`seg_dciodvfy_errors` apply it to every SEG under a folder (tests/conftest.py does
  that for every test's ``tmp_path``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
#: dciodvfy (Debian's dicom3tools 1.00~20220618) predates the Label Map Segmentation IOD (DICOM Sup 243, 2024): it
#: does not know the SOP class and reads the LABELMAP background segment 0 as a numbering error (Sup 243 lets
#: LABELMAP segment numbers start anywhere). For LABELMAP SEGs these two lines are dropped, nothing else.
LABELMAP_UNKNOWN_TO_DCIODVFY = ("Information Object Not found", "SegmentNumber not monotonically increasing")


def _item(ds: pydicom.Dataset, f: int, keyword: str) -> pydicom.Dataset:
    per_frame = ds.PerFrameFunctionalGroupsSequence[f]
    if keyword in per_frame:
        return per_frame[keyword][0]
    return ds.SharedFunctionalGroupsSequence[0][keyword][0]


def seg_points_pydicom(path: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(RAS points (N, 3), label names (N,), per-frame records) of every foreground pixel of a SEG file."""
    ds = pydicom.dcmread(path)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    n_frames = int(ds.NumberOfFrames)
    pixels = ds.pixel_array.reshape(n_frames, int(ds.Rows), int(ds.Columns))
    labelmap = ds.SegmentationType == "LABELMAP"
    points, labels, frames = [], [], []
    for f in range(n_frames):
        ipp = np.asarray(_item(ds, f, "PlanePositionSequence").ImagePositionPatient, float)
        iop = np.asarray(_item(ds, f, "PlaneOrientationSequence").ImageOrientationPatient, float)
        dr, dc = (float(v) for v in _item(ds, f, "PixelMeasuresSequence").PixelSpacing)
        per_frame = ds.PerFrameFunctionalGroupsSequence[f]
        refs = [str(src.ReferencedSOPInstanceUID) for d in per_frame.get("DerivationImageSequence", [])
                for src in d.SourceImageSequence]
        frames.append({"ipp": ipp, "refs": refs})
        rows, cols = np.nonzero(pixels[f])
        if rows.size == 0:
            continue
        lps = ipp + np.outer(cols * dc, iop[:3]) + np.outer(rows * dr, iop[3:])
        points.append(lps * LPS_TO_RAS)
        if labelmap:
            labels.append(np.asarray([names[int(v)] for v in pixels[f][rows, cols]]))
        else:
            number = int(_item(ds, f, "SegmentIdentificationSequence").ReferencedSegmentNumber)
            labels.append(np.full(rows.size, names[number], dtype=object))
    if not points:
        return np.zeros((0, 3)), np.zeros(0, dtype=object), frames
    return np.concatenate(points), np.concatenate(labels), frames


def seg_points_highdicom(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(RAS points (N, 3), label names (N,)) of every foreground voxel, read by highdicom."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    names = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    volume = seg.get_volume(combine_segments=True)
    idx = np.argwhere(volume.array > 0)
    if idx.size == 0:
        return np.zeros((0, 3)), np.zeros(0, dtype=object)
    lps = volume.map_indices_to_reference(idx)
    values = volume.array[tuple(idx.T)]
    return lps * LPS_TO_RAS, np.asarray([names[int(v)] for v in values])


def assert_points_on_mask(points: np.ndarray, names: np.ndarray, mask_path: Path, label_names: dict[int, str],
                          atol_vox: float = 1e-3) -> None:
    """Every point lies on a voxel centre of the NIfTI mask with the same label, and nothing else is foreground."""
    img = nib.load(str(mask_path))
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    ijk = points @ inv[:3, :3].T + inv[:3, 3]
    rounded = np.rint(ijk)
    assert np.abs(ijk - rounded).max(initial=0.0) < atol_vox, "SEG pixels are not on the mask's voxel centres"
    idx = rounded.astype(int)
    assert np.all((idx >= 0) & (idx < data.shape)), "SEG pixels outside the mask grid"
    got = data[tuple(idx.T)]
    expected = np.asarray([label_names[int(v)] for v in got], dtype=object) if got.size else got
    assert np.array_equal(expected.astype(str), names.astype(str)), "SEG labels differ from the mask"
    assert len(points) == int(np.count_nonzero(data)), "the mask has foreground the SEG does not"


def rtstruct_masks(path: Path, shape: tuple[int, int, int], affine_ras: np.ndarray) -> dict[str, np.ndarray]:
    """ROI name -> boolean mask (I, J, K) on the grid: each contour filled (boundary included), XOR per slice."""
    import cv2

    ds = pydicom.dcmread(path)
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    inv = np.linalg.inv(affine_ras)
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, dtype=bool)
        for contour in roi.get("ContourSequence", []):
            ras = np.asarray(contour.ContourData, float).reshape(-1, 3) * LPS_TO_RAS
            ijk = ras @ inv[:3, :3].T + inv[:3, 3]
            k = np.rint(ijk[:, 2])
            assert np.abs(ijk[:, 2] - k).max() < 1e-3 and len(set(k.tolist())) == 1, "contour off a slice plane"
            plane = np.zeros((shape[1], shape[0]), np.uint8)  # OpenCV: rows = j, columns = i
            cv2.fillPoly(plane, [np.rint(ijk[:, :2]).astype(np.int32)], 1)
            mask[:, :, int(k[0])] ^= plane.T.astype(bool)
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def dciodvfy_errors(path: Path) -> list[str] | None:
    """dciodvfy's "Error" lines for a file (None when dicom3tools is not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        return None
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def seg_files(root: Path, manufacturer: str | None = "medpipe") -> list[Path]:
    """Every DICOM SEG (BINARY or LABELMAP) file under ``root``: ``*.dcm`` whose file meta names a SEG SOP class,
    made by ``manufacturer`` (medpipe's writer and the tests' own SEG builder say "medpipe"; None: any)."""
    from highdicom.seg import SOP_CLASS_UIDS
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    found = []
    for path in sorted(root.rglob("*.dcm")):
        try:
            if str(read_file_meta_info(path).get("MediaStorageSOPClassUID", "")) not in SOP_CLASS_UIDS:
                continue
            made_by = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"]).get("Manufacturer")
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if manufacturer is None or made_by == manufacturer:
            found.append(path)
    return found


def seg_dciodvfy_errors(path: Path) -> list[str] | None:
    """dciodvfy's "Error" lines for a SEG file, less the two a LABELMAP SEG gets from a validator that predates
    its IOD (None when dicom3tools is not installed)."""
    errors = dciodvfy_errors(path)
    if errors is None:
        return None
    if pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SegmentationType"]).get(
            "SegmentationType") == "LABELMAP":
        errors = [e for e in errors if not any(k in e for k in LABELMAP_UNKNOWN_TO_DCIODVFY)]
    return errors
