"""DICOM SEG writing benchmark: a 117-segment mask of a 512x512x300 CT series, written by ``medpipe.io.dicom.seg``.

Builds a synthetic 512x512x300 axial CT series (headers as a scanner writes them; pixel data one constant value,
since a SEG never reads source pixels) and a TotalSegmentator-like label map of 117 labels: a body cylinder cut
into 13 slabs along z and 9 sectors in-plane, each label a block of about 23 slices. Then times, alternately
``--repeat`` times, the whole ``write_seg`` (headers re-read, highdicom geometry, SEG built, written atomically):

* BINARY (native, empty frames omitted); highdicom's ``workers`` only parallelise frame compression, which a
  native BINARY SEG does not have, so it runs with ``workers=0``;
* LABELMAP (RLE lossless) with ``workers=0`` and ``workers=N`` (``--workers``: frames compressed in N processes).

The goal is <= 40 s for the BINARY SEG on 2 cores; the table gives best and median seconds and the ratio to the
goal. Usage::

    .venv/bin/python benchmarks/seg_write.py [--slices 300] [--size 512] [--repeat 2] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medpipe.io.dicom.seg import Algorithm, write_seg
from medpipe.io.geometry import Grid
from medpipe.labels import label_table

GOAL_S = 40.0


def build_series(folder: Path, size: int, n_slices: int) -> tuple[list[Path], Grid]:
    """Write ``n_slices`` axial CT files of ``size`` x ``size`` (0.8 mm pixels, 1.5 mm slices), slice order."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = np.full((size, size), -1000, np.int16).tobytes()
    files = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{k:05d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Mark", "BENCH", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20260101", "120000", "1", "", "")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-204.8, -204.8, -200.0 + 1.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 1.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = pixels
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    affine = np.diag([-0.8, -0.8, 1.5, 1.0])  # RAS+: LPS x and y negated
    affine[:3, 3] = [204.8, 204.8, -200.0]
    return files, Grid((size, size, n_slices), affine)


def label_map(shape: tuple[int, int, int], n_slabs: int = 13, n_sectors: int = 9) -> np.ndarray:
    """(I, J, K) uint8 labels 1..n_slabs*n_sectors: a body cylinder cut into z slabs and in-plane sectors."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    ci, cj = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    body = ((i - ci) / (0.42 * shape[0])) ** 2 + ((j - cj) / (0.32 * shape[1])) ** 2 < 1
    sector = (((np.arctan2(j - cj, i - ci) + np.pi) / (2 * np.pi)) * n_sectors).astype(int) % n_sectors
    out = np.zeros(shape, np.uint8)
    slab = np.minimum(np.arange(shape[2]) * n_slabs // shape[2], n_slabs - 1)
    for k in range(shape[2]):
        out[:, :, k] = np.where(body, 1 + slab[k] * n_sectors + sector, 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Setting workers != 0")  # highdicom: no effect on native BINARY
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        files, grid = build_series(root / "series", args.size, args.slices)
        labels = label_map(grid.shape)
        n = int(labels.max())
        table = label_table({0: "background", **{v: f"structure {v}" for v in range(1, n + 1)}})
        print(f"series {args.size}x{args.size}x{args.slices}, {n} segments, built in {time.perf_counter() - t0:.1f} s")
        algo = Algorithm("bench", "0" * 64)
        # BINARY is native (uncompressed): highdicom's workers only compress frames, so they change nothing there
        runs: dict[tuple[str, int], list[float]] = {("binary", 0): [], ("labelmap", 0): [],
                                                    ("labelmap", args.workers): []}
        info: dict[tuple[str, int], dict] = {}
        for _ in range(args.repeat):
            for kind, workers in runs:
                out = root / f"{kind}-{workers}.seg.dcm"
                start, cpu = time.perf_counter(), time.process_time()
                rec = write_seg(out, labels, grid, files, table, algo, seg_type=kind,  # type: ignore[arg-type]
                                workers=workers)
                runs[(kind, workers)].append(time.perf_counter() - start)
                info[(kind, workers)] = {"frames": rec.frames, "mb": round(out.stat().st_size / 1e6, 1),
                                         "cpu_s": round(time.process_time() - cpu, 1)}
                out.unlink()
    rows = []
    print(f"\n| SEG type | highdicom workers | frames | file MB | best s | median s | main-process CPU s | "
          f"best / {GOAL_S:.0f} s goal |")
    print("|---|---|---|---|---|---|---|---|")
    for (kind, workers), times in runs.items():
        best, median = min(times), statistics.median(times)
        rows.append({"type": kind, "workers": workers, **info[(kind, workers)], "best_s": round(best, 2),
                     "median_s": round(median, 2)})
        row = info[(kind, workers)]
        print(f"| {kind} | {workers} | {row['frames']} | {row['mb']} | {best:.1f} | {median:.1f} | {row['cpu_s']} | "
              f"{best / GOAL_S:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"slices": args.slices, "size": args.size, "segments": n, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
