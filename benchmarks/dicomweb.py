"""DICOMweb benchmark: ``medpipe push``/``pull`` against plain dicomweb-client calls, on a local Orthanc.

Starts Orthanc with the DICOMweb plugin on 127.0.0.1 (tests/services/orthanc.py; Debian packages ``orthanc``
and ``orthanc-dicomweb``), writes a synthetic CT series (``--slices`` x 512 x 512, int16, Explicit VR Little
Endian, tests/dicom_factory.py) and times, alternately, ``--repeat`` times:

* push: ``medpipe.io.dicomweb.push`` (header pre-check of every file, batches of <= 50 files / 64 MiB,
  per-instance confirmation) vs ``DICOMwebClient.store_instances`` with every data set in one request;
* pull: ``medpipe.io.dicomweb.pull`` (QIDO series + instances, one WADO-RS request per instance, atomic
  write per file) vs ``DICOMwebClient.retrieve_series`` (one multipart request) + ``dcmwrite`` of each part.

Both pulls must give the same pixel data. Best and median seconds are printed with the ratio of the bests.
Usage::

    .venv/bin/python benchmarks/dicomweb.py [--slices 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medpipe.io.dicomweb import DicomwebOptions, pull, push  # noqa: E402
from medpipe.io.dicomweb.auth import ENV_PASSWORD, ENV_USER  # noqa: E402
from tests.dicom_factory import write_series  # noqa: E402
from tests.services.orthanc import PASSWORD, USER, start_orthanc  # noqa: E402


def _baseline_client(url: str) -> object:
    from dicomweb_client import DICOMwebClient

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(url, session=session)
    client.set_http_retry_params(retry=False)
    return client


def _time(fn: Callable[[int], None], i: int) -> float:
    t0 = time.perf_counter()
    fn(i)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ[ENV_USER], os.environ[ENV_PASSWORD] = USER, PASSWORD
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = start_orthanc(tmp)
        try:
            series = write_series(tmp / "src", n_slices=args.slices, rows=512, columns=512, intercept=-1024.0,
                                  values=lambda k: np.full((512, 512), k, np.int16) + np.arange(512, dtype=np.int16))
            study = str(pydicom.dcmread(series.files[0]).StudyInstanceUID)
            mib = sum(f.stat().st_size for f in series.files) / 2**20
            client = _baseline_client(server.dicomweb)
            opts = DicomwebOptions(retries=0)

            def medpipe_push(i: int) -> None:
                assert push(server.dicomweb, [tmp / "src"], options=opts).ok

            def baseline_push(i: int) -> None:
                client.store_instances([pydicom.dcmread(f) for f in series.files])  # type: ignore[attr-defined]

            def medpipe_pull(i: int) -> None:
                pull(server.dicomweb, study, series.series_uid, out_dir=tmp / f"mp{i}", options=opts)

            def baseline_pull(i: int) -> None:
                out = tmp / f"base{i}"
                out.mkdir()
                for ds in client.retrieve_series(study, series.series_uid):  # type: ignore[attr-defined]
                    ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)

            times: dict[str, list[float]] = {k: [] for k in ("mp_push", "base_push", "mp_pull", "base_pull")}
            for i in range(args.repeat):
                times["base_push"].append(_time(baseline_push, i))
                times["mp_push"].append(_time(medpipe_push, i))
                times["base_pull"].append(_time(baseline_pull, i))
                times["mp_pull"].append(_time(medpipe_pull, i))
            a = sorted((tmp / "mp0" / series.series_uid).glob("*.dcm"))
            b = {p.name: p for p in (tmp / "base0").glob("*.dcm")}
            assert len(a) == args.slices and all(
                np.array_equal(pydicom.dcmread(p).pixel_array, pydicom.dcmread(b[p.name]).pixel_array) for p in a)
        finally:
            server.stop()
    print(f"{args.slices} slices x 512 x 512 int16 ({mib:.0f} MiB), Orthanc 127.0.0.1, best / median of "
          f"{args.repeat} (s)")
    print("| step | dicomweb-client, one request (s) | medpipe (s) | ratio (baseline / medpipe) |")
    print("|---|---|---|---|")
    for step in ("push", "pull"):
        base, mine = times[f"base_{step}"], times[f"mp_{step}"]
        print(f"| {step} | {min(base):.2f} / {statistics.median(base):.2f} | {min(mine):.2f} / "
              f"{statistics.median(mine):.2f} | {min(base) / min(mine):.2f} |")


if __name__ == "__main__":
    main()
