"""DICOM loading benchmark: medpipe vs SimpleITK (in-process) and medpipe convert vs dcm2niix (processes).

Builds a >= 200-slice CT series from the real JPEG 2000 abdominal CT in ../shared/data (20 slices of 512x512
repeated along z at 2 mm with fresh UIDs), once as stored (JPEG 2000 lossless) and once decoded to Explicit
VR Little Endian, then times, on the same warm files and in one run:

* in-process: ``medpipe.io.dicom.read_dicom_volume`` (every check on) vs SimpleITK's ImageSeriesReader
  (GDCM file sorting + read + array);
* whole processes writing NIfTI + JSON sidecar: ``medpipe convert`` (the console script; for ``.nii``, which
  the CLI does not offer, ``python -c "convert_dicom(..., compress=False)"``) vs ``dcm2niix`` (PyPI), both
  uncompressed (.nii) and gzip level 1 (nibabel's default; ``dcm2niix -z y -1``).

It checks that medpipe's volume equals SimpleITK's voxel for voxel (and the affine within 1e-4 mm) on the
uncompressed series. Contenders run alternately ``--repeat`` times; the best and the median are reported
(the best is the fairest figure on a shared CPU). Usage::

    .venv/bin/python benchmarks/dicom_load.py [--slices 200] [--repeat 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "dicom" / "ct-abdomen-jpeg2000" / "series"
BIN = Path(sys.executable).parent


def build_series(out: Path, n_slices: int, decompress: bool) -> Path:
    """``n_slices`` files: the source slices repeated along the normal at 2 mm, fresh UIDs, neutral patient."""
    sources = sorted(SOURCE.iterdir())
    datasets = [pydicom.dcmread(p) for p in sources]
    if decompress:
        for ds in datasets:
            ds.decompress()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=["bench", str(n_slices), str(decompress)])
    z0 = float(datasets[0].ImagePositionPatient[2])
    for k in range(n_slices):
        ds = datasets[k % len(datasets)]
        ds.PatientName, ds.PatientID = "Benchmark^Series", "BENCH"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber, ds.SeriesDescription = 1, "bench CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z0 + 2.0 * k]
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"{k:04d}.dcm")
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(pair: dict[str, Callable[[], object]], repeat: int) -> dict[str, tuple[float, float]]:
    """Run the contenders alternately ``repeat`` times (fair under a shared, noisy CPU): (best, median) each."""
    times: dict[str, list[float]] = {name: [] for name in pair}
    for _ in range(repeat):
        for name, fn in pair.items():
            times[name].append(timed(fn))
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def medpipe_load(folder: Path) -> object:
    from medpipe.io.dicom import read_dicom_volume

    return read_dicom_volume(folder)


def sitk_load(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def run_process(cmd: list[str], out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({done.returncode}): {done.stderr[-2000:]}")


def medpipe_cmd(folder: Path, out: Path, gz: bool) -> list[str]:
    script = BIN / "medpipe"
    if script.exists():
        cmd = [str(script), "convert", str(folder), "-o", str(out)]
        return cmd if gz else [sys.executable, "-c", _convert_py(folder, out, gz)]
    return [sys.executable, "-c", _convert_py(folder, out, gz)]


def _convert_py(folder: Path, out: Path, gz: bool) -> str:
    call = f"convert_dicom({str(folder)!r}, {str(out)!r}, compress={gz})"
    return f"from medpipe.io.dicom.convert import convert_dicom; {call}"


def dcm2niix_cmd(folder: Path, out: Path, gz: bool) -> list[str]:
    exe = shutil.which("dcm2niix", path=str(BIN)) or shutil.which("dcm2niix") or "dcm2niix"
    return [exe, "-z", "y" if gz else "n", *(["-1"] if gz else []), "-f", "%s", "-o", str(out), str(folder)]


def bench(folder: Path, work: Path, repeat: int, label: str) -> dict[str, list[float]]:
    for f in folder.iterdir():  # warm the page cache so every tool reads the same warm files
        f.read_bytes()
    medpipe_load(folder)  # warm imports and decoder plugins
    sitk_load(folder)
    rows: list[tuple[str, str, dict[str, Callable[[], object]]]] = [
        (
            "load in-process",
            "SimpleITK",
            {"medpipe": lambda: medpipe_load(folder), "SimpleITK": lambda: sitk_load(folder)},
        )
    ]
    for gz in (False, True):
        mine, theirs = medpipe_cmd(folder, work / "m", gz), dcm2niix_cmd(folder, work / "d", gz)
        pair: dict[str, Callable[[], object]] = {
            "medpipe": functools.partial(run_process, mine, work / "m"),
            "dcm2niix": functools.partial(run_process, theirs, work / "d"),
        }
        rows.append((f"convert to {'.nii.gz (level 1)' if gz else '.nii'}", "dcm2niix", pair))
    print(f"\n{label}   (seconds: best / median of {repeat}; ratio of bests)")
    result: dict[str, list[float]] = {}
    for what, other, pair in rows:
        t = interleaved(pair, repeat)
        (mb, mm), (ob, om) = t["medpipe"], t[other]
        print(f"  {what:<28} medpipe {mb:6.3f} / {mm:6.3f}   {other:<9} {ob:6.3f} / {om:6.3f}   ratio {mb / ob:.2f}")
        result[f"{what} medpipe"] = [mb, mm]
        result[f"{what} {other}"] = [ob, om]
    return result


def check_equal(folder: Path) -> str:
    from medpipe.io.dicom import read_dicom_volume

    vol = read_dicom_volume(folder)
    arr, affine = sitk_load(folder)
    if not np.array_equal(vol.array, arr.T):
        raise SystemExit("voxel mismatch between medpipe and SimpleITK")
    diff = float(np.max(np.abs(vol.affine - affine)))
    if diff > 1e-4:
        raise SystemExit(f"affine mismatch between medpipe and SimpleITK: {diff:.3g} mm")
    return f"voxels equal to SimpleITK ({vol.array.shape}), affine within {diff:.1e} mm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the timings here")
    args = parser.parse_args()
    if not SOURCE.exists():
        raise SystemExit(f"source series not found: {SOURCE}")
    with tempfile.TemporaryDirectory(prefix="medpipe-bench-") as tmp:
        work = Path(tmp)
        raw = build_series(work / "raw", args.slices, decompress=True)
        j2k = build_series(work / "j2k", args.slices, decompress=False)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"{args.slices} slices of 512x512 CT; {os.cpu_count()} CPUs (load average {load:.1f} at start)")
        print(check_equal(raw))
        results = {
            "uncompressed": bench(raw, work, args.repeat, "Explicit VR Little Endian"),
            "jpeg2000": bench(j2k, work, args.repeat, "JPEG 2000 lossless"),
        }
    if args.json:
        args.json.write_text(json.dumps({"slices": args.slices, "cpus": os.cpu_count(), **results}, indent=2))


if __name__ == "__main__":
    main()
