"""Inference over many inputs: cases -> predictor -> masks on the source grid (+ JSON sidecars).

Batch semantics: one bad case never stops the others (it is reported as failed); a case whose mask and sidecar
already exist for the same input, model and config is skipped, so an interrupted batch resumes where it stopped.
:func:`run_case` is the state-free unit (one case, one predictor, one output folder) that batch runners build on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import InputError, MedpipeError
from medpipe.inference.export import write_mask
from medpipe.inference.inputs import InputCase, collect_inputs, ct_intensity_check, load_case
from medpipe.inference.memory import peaks, reset_peaks
from medpipe.inference.outputs import extra_outputs, write_extras
from medpipe.inference.predictor import Predictor
from medpipe.inference.sidecar import already_done, build_sidecar
from medpipe.io.atomic import ensure_writable_dir, write_json_atomic


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: ``status`` is ok, skipped or failed."""

    case_id: str
    status: str
    mask: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    #: QC summary for the batch table (:meth:`medpipe.inference.qc.CaseQC.summary`): review, reasons, volumes.
    qc: dict[str, Any] | None = None


@dataclass(frozen=True)
class InferResult:
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)


def infer(run: Path | Sequence[Path], inputs: list[Path], out_dir: Path, *, device: str = "auto",
          overlap: float | None = None, sw_batch_size: int | None = None, overwrite: bool = False,
          dicom_options: dict[str, Any] | None = None, allow_non_hu: bool = False,
          on_case: Callable[[CaseResult, int, int], None] | None = None, folds: Sequence[int] | None = None,
          tta: str | None = None, save_probabilities: bool = False, save_uncertainty: bool = False) -> InferResult:
    """Segment every input case into ``out_dir`` (``<case>.nii.gz`` + ``<case>.json``).

    ``run``: a run folder, a checkpoint, a folder of ``fold_*/`` run folders, or several of these (an
    ensemble; ``folds`` picks folds). ``tta``: none | flip | all (default: the config's ``inference.tta``).
    For CT models (``ct_window`` intensity) each case must look like CT in HU (:func:`ct_intensity_check`)
    unless ``allow_non_hu``."""
    ensure_writable_dir(out_dir)
    seg = Predictor(run, device, overlap, sw_batch_size, folds=folds, tta=tta)
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)
    results: list[CaseResult] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        res = run_case(seg, case, out_dir, overwrite=overwrite, dicom_options=dicom_options,
                       allow_non_hu=allow_non_hu, reserved=seen, save_probabilities=save_probabilities,
                       save_uncertainty=save_uncertainty)
        results.append(res)
        if on_case:
            on_case(res, i + 1, len(cases))
    return InferResult(results)


def run_case(seg: Predictor, case: InputCase, out_dir: Path, *, overwrite: bool = False,
             dicom_options: dict[str, Any] | None = None, allow_non_hu: bool = False,
             reserved: set[str] | None = None, save_probabilities: bool = False,
             save_uncertainty: bool = False) -> CaseResult:
    """Segment one case into ``out_dir`` (mask + sidecar, each written atomically). Never raises a MedpipeError:
    a bad case comes back as ``status="failed"`` with the reason. ``reserved``: case ids already written by this
    batch (a second input with the same id is refused; the id is added). ``save_probabilities`` /
    ``save_uncertainty`` add ``<case>_probabilities.nii.gz`` / ``<case>_uncertainty.nii.gz``
    (:mod:`medpipe.inference.probabilities`). The sidecar holds QC (:mod:`medpipe.inference.qc`) and peak
    memory."""
    seen = reserved if reserved is not None else set()
    t0 = time.perf_counter()
    shown = case.case_id or "DICOM series"
    try:
        loaded = load_case(case, seg.cfg.in_channels, dicom_options)
        if loaded.case_id in seen:
            raise InputError(f"output name collision: two inputs give case '{loaded.case_id}'",
                             path=case.files[0] if case.files else case.dicom_dir)
        seen.add(loaded.case_id)
        shown = loaded.case_id
        extra = extra_outputs(loaded.case_id, save_probabilities, save_uncertainty)
        if not overwrite and (done := already_done(out_dir, loaded, seg, extra)):
            return CaseResult(loaded.case_id, "skipped", done, seconds=time.perf_counter() - t0)
        hu = (ct_intensity_check(loaded, strict=not allow_non_hu)
              if seg.cfg.transforms.intensity == "ct_window" else None)
        reset_peaks(seg.device)
        pred = seg.predict(loaded)
        details = dict(pred.details)
        if hu is not None:
            details["intensity_check"] = hu
        mask = write_mask(out_dir / f"{loaded.case_id}.nii.gz", pred.labels, loaded.grid)
        qc, written = write_extras(seg, pred, loaded, out_dir, save_probabilities, save_uncertainty)
        details["outputs"] = written
        details["qc"] = qc.to_json()
        details["memory"] = peaks(seg.device)
        seconds = time.perf_counter() - t0
        write_json_atomic(out_dir / f"{loaded.case_id}.json", build_sidecar(seg, loaded, mask, details, seconds))
        return CaseResult(loaded.case_id, "ok", mask, seconds=seconds, qc=qc.summary())
    except MedpipeError as err:
        return CaseResult(shown, "failed", error=str(err), seconds=time.perf_counter() - t0)


def _check_collisions(cases: list[InputCase]) -> None:
    ids: dict[str, Path] = {}
    for c in cases:
        if not c.case_id:
            continue
        first = c.files[0]
        if c.case_id in ids:
            raise InputError(f"output name collision: '{c.case_id}' also comes from {ids[c.case_id]}", path=first)
        ids[c.case_id] = first
