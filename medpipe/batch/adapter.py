"""The one place where the batch runner touches inference: open a predictor, and the three stages a case goes
through in a worker's pipelined loop (read + preprocess, the network, export + write), the same stages as
``medpipe infer``'s pipelined loop (:mod:`medpipe.inference.pipeline`).

Everything else in ``medpipe.batch`` is about the ledger and the processes; if the predictor or its stages change
(ensembles, TTA, more output formats), only these functions follow.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpipe.batch.records import BatchCase, Claim
from medpipe.errors import InputError, MedpipeError
from medpipe.io.dicom.options import DicomOptions


@dataclass(frozen=True)
class ModelIdentity:
    """What a finished case's sidecar must name to count as done, and what the inputs must provide."""

    checkpoint: str
    model_sha256: str
    config_hash: str
    channels: tuple[str, ...]


def open_predictor(model: Path, options: dict[str, Any], device: str | None = None) -> Any:
    """A loaded :class:`medpipe.inference.predictor.Predictor` for ``model`` (run folder, checkpoint, package or
    folder of ``fold_*/`` runs; ``options['models']`` adds more to ensemble with; an nnU-Net package gets its own
    predictor) with the batch's inference options (``folds``, ``tta``, ``engine``, ``overlap``,
    ``sw_batch_size``, ``min_lesion_ml``), as ``medpipe infer`` opens it; ``device`` overrides
    ``options['device']`` (the submitter reads the identity on the CPU)."""
    from medpipe.inference.nnunet_package import predictor_for

    runs = [Path(model), *(Path(m) for m in options.get("models") or ())]
    seg = predictor_for(runs, device or options.get("device", "auto"), options.get("overlap"),
                        options.get("sw_batch_size"), options.get("engine") or "torch", folds=options.get("folds"),
                        tta=options.get("tta"))
    if options.get("min_lesion_ml") is not None:  # part of the config, so of its hash (as in `medpipe infer`)
        seg.cfg = seg.cfg.with_overrides(inference={"min_lesion_ml": float(options["min_lesion_ml"])})
    return seg


def identity(predictor: Any) -> ModelIdentity:
    return ModelIdentity(str(predictor.checkpoint), predictor.model_sha256, predictor.cfg.digest(),
                         tuple(predictor.cfg.channels))


def dicom_options(options: dict[str, Any]) -> DicomOptions:
    """The batch spec's DICOM reading options (JSON in the ledger) as the reader's record."""
    d = options.get("dicom_options") or {}
    series = d.get("series")
    return DicomOptions(series=series if isinstance(series, int | str) else None,
                        allow_tilt=bool(d.get("allow_tilt", False)), allow_uneven=bool(d.get("allow_uneven", False)))


@dataclass
class Job:
    """One claimed case on its way through a worker's pipeline: read -> network -> write. ``error`` ends it as
    failed (the later stages pass it on untouched); ``opened`` is the inference stage's case in flight."""

    claim: Claim
    case: BatchCase
    folder: Path
    opened: Any = None
    error: str = ""
    lost: bool = False  # the claim was taken over (its lease lapsed): the result is dropped


def _case_options(options: dict[str, Any]) -> Any:
    from medpipe.inference.batch import CaseOptions

    return CaseOptions(True, dicom_options(options), bool(options.get("allow_non_hu", False)),
                       bool(options.get("save_probabilities", False)), bool(options.get("save_uncertainty", False)),
                       tuple(options.get("formats") or ("nifti",)), options.get("seg_type") or "binary")


def _guard(job: Job, step: Callable[[], Any], stage: str) -> Job:
    """Run one stage of a case: a MedpipeError or running out of memory fails that case (the error is kept), a
    bug is raised (the worker dies; the launcher sees it)."""
    from medpipe.inference.batch import OOM_HINT
    from medpipe.io.memory import is_out_of_memory, out_of_memory_message

    if job.error:
        return job
    try:
        job.opened = step()
    except MedpipeError as err:
        job.error = str(err)
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        job.error = f"{out_of_memory_message(err, stage)} ({OOM_HINT})"
    return job


def read_case(predictor: Any, job: Job, options: dict[str, Any]) -> Job:
    """Read the case and preprocess it onto the network grid (the pipeline's first stage)."""
    from medpipe.inference.batch import open_case, prepare_case
    from medpipe.inference.inputs import InputCase

    if predictor.cfg.is_classification:
        job.error = f"{predictor.checkpoint}: a classifier; classify with `medpipe infer` (predictions.csv)"
        return job
    case = job.case

    def opened() -> Any:
        # a DICOMweb case is pulled into the attempt's staging folder first, then read as a local DICOM folder
        dicom_dir = pull_series(case, job.folder / PULLED, options) if case.remote is not None else (
            Path(case.dicom_dir) if case.dicom_dir else None)
        inp = InputCase(case.case_id, tuple(Path(f) for f in case.files), dicom_dir)
        return open_case(predictor, inp, job.folder, _case_options(options), None)

    job = _guard(job, opened, "reading the input")
    return _guard(job, lambda: prepare_case(predictor, job.opened), "preprocessing")


def run_network(predictor: Any, job: Job) -> Job:
    """The network over the case (the pipeline's middle stage, on the thread that owns the device)."""
    from medpipe.inference.memory import reset_peaks

    def step() -> Any:
        reset_peaks(predictor.device)
        t = time.perf_counter()
        scores = predictor.run_network(job.opened.net_img)
        return job.opened.with_scores(scores, time.perf_counter() - t)

    return _guard(job, step, "segmenting")


def write_outputs(predictor: Any, job: Job, options: dict[str, Any]) -> Job:
    """Export onto the source grid and write ``<case>.nii.gz``, the requested DICOM outputs and maps, the lesion
    table, then the sidecar ``<case>.json``, into the job's staging folder (the pipeline's last stage)."""
    from medpipe.inference.batch import write_case

    copts = _case_options(options)
    job = _guard(job, lambda: write_case(predictor, job.opened, job.folder, copts), "writing the outputs")
    shutil.rmtree(job.folder / PULLED, ignore_errors=True)  # a pulled input is not an output: never committed
    return job


#: Where a worker pulls a DICOMweb case's series: inside the attempt's private staging folder, removed before the
#: outputs are committed (and with the folder when the attempt fails or its worker dies).
PULLED = ".pulled"


def dicomweb_options(options: dict[str, Any]) -> Any:
    """The batch spec's DICOMweb options (``dicomweb``: netrc file, insecure, retries) as the client's record.
    Credentials themselves are never in the spec: each worker reads them from its environment or the netrc file."""
    from medpipe.io.dicomweb import DicomwebOptions

    d = options.get("dicomweb") or {}
    return DicomwebOptions(netrc_file=Path(d["netrc"]) if d.get("netrc") else None,
                           insecure=bool(d.get("insecure", False)), retries=int(d.get("retries", 3)))


def pull_series(case: BatchCase, folder: Path, options: dict[str, Any]) -> Path:
    """Pull a DICOMweb case's series into ``folder``; the folder of its one series. A study of several series
    without a chosen one is refused, naming the series (UIDs only)."""
    from medpipe.io.dicomweb import pull

    remote = case.remote
    if remote is None:
        raise InputError("not a DICOMweb case", path=case.case_id)
    result = pull(remote.url, remote.study_uid, remote.series_uid, out_dir=folder, options=dicomweb_options(options))
    if len(result.series) != 1:
        uids = ", ".join(s.series_uid for s in result.series)
        raise InputError(f"study {remote.study_uid} holds {len(result.series)} series ({uids}); a case is one series",
                         path=f"{result.server} (case {case.case_id})",
                         hint="name the series in the manifest (series_uid)")
    return result.series[0].folder


def check_formats(cases: list[BatchCase], options: dict[str, Any]) -> None:
    """DICOM output formats need DICOM inputs: refuse a NIfTI case before any inference (as ``medpipe infer``)."""
    from medpipe.inference.dicom_outputs import check_inputs
    from medpipe.inference.inputs import InputCase

    check_inputs([InputCase(c.case_id, tuple(Path(f) for f in c.files), Path(c.dicom_dir) if c.dicom_dir else None)
                  for c in cases if c.remote is None], tuple(options.get("formats") or ("nifti",)))
