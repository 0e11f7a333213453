"""Inference over many inputs: cases -> predictor -> masks on the source grid (+ JSON sidecars).

Batch semantics: one bad case never stops the others (it is reported as failed); a case whose mask and sidecar
already exist for the same input, model and config is skipped, so an interrupted batch resumes where it stopped.
:func:`run_case` is the state-free unit (one case, one predictor, one output folder) that batch runners build on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medpipe.errors import InputError, MedpipeError
from medpipe.inference.export import write_mask
from medpipe.inference.inputs import InputCase, LoadedCase, collect_inputs, ct_intensity_check, load_case
from medpipe.inference.memory import peaks, reset_peaks
from medpipe.inference.outputs import extra_outputs, write_extras
from medpipe.inference.pipeline import Finished, run_pipelined
from medpipe.inference.predictor import EnsembleScores, Prediction, Predictor
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
    #: Pipelined runs: busy seconds per stage, wall time, device-busy fraction (:class:`StageTimes`).
    stages: dict[str, Any] | None = None

    @property
    def n_failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)


def infer(run: Path | Sequence[Path], inputs: list[Path], out_dir: Path, *, device: str = "auto",
          overlap: float | None = None, sw_batch_size: int | None = None, overwrite: bool = False,
          dicom_options: dict[str, Any] | None = None, allow_non_hu: bool = False,
          on_case: Callable[[CaseResult, int, int], None] | None = None, folds: Sequence[int] | None = None,
          tta: str | None = None, save_probabilities: bool = False, save_uncertainty: bool = False,
          pipelined: bool = True, queue_size: int = 2) -> InferResult:
    """Segment every input case into ``out_dir`` (``<case>.nii.gz`` + ``<case>.json``).

    ``run``: a run folder, a checkpoint, a folder of ``fold_*/`` run folders, or several of these (an
    ensemble; ``folds`` picks folds). ``tta``: none | flip | all (default: the config's ``inference.tta``).
    For CT models (``ct_window`` intensity) each case must look like CT in HU (:func:`ct_intensity_check`)
    unless ``allow_non_hu``. ``pipelined``: read/preprocess case k+1 and export/write case k-1 in background
    threads while the network runs case k (:mod:`medpipe.inference.pipeline`; ``queue_size`` cases wait at
    most between two stages); the per-stage times come back in ``InferResult.stages``."""
    ensure_writable_dir(out_dir)
    seg = Predictor(run, device, overlap, sw_batch_size, folds=folds, tta=tta)
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)
    options = CaseOptions(overwrite, dicom_options, allow_non_hu, save_probabilities, save_uncertainty)
    seen: set[str] = set()
    if not pipelined:
        results: list[CaseResult] = []
        for i, case in enumerate(cases):
            res = run_case(seg, case, out_dir, overwrite=overwrite, dicom_options=dicom_options,
                           allow_non_hu=allow_non_hu, reserved=seen, save_probabilities=save_probabilities,
                           save_uncertainty=save_uncertainty)
            results.append(res)
            if on_case:
                on_case(res, i + 1, len(cases))
        return InferResult(results)

    def read(case: InputCase) -> Opened | Finished[CaseResult]:
        return _guarded(case, lambda: open_case(seg, case, out_dir, options, seen, prepare=True))

    def compute(opened: Opened) -> Opened | Finished[CaseResult]:
        reset_peaks(seg.device)
        t = time.perf_counter()
        return _guarded(opened, lambda: opened.with_scores(seg.run_network(opened.net_img), time.perf_counter() - t))

    def write(opened: Opened) -> CaseResult | Finished[CaseResult]:
        return _guarded(opened, lambda: write_case(seg, opened, out_dir, options))

    done, times = run_pipelined(cases, read, compute, write, queue_size=queue_size, on_result=on_case)
    return InferResult(done, stages=times.to_json())


@dataclass(frozen=True)
class CaseOptions:
    """What a batch asks of every case."""

    overwrite: bool = False
    dicom_options: dict[str, Any] | None = None
    allow_non_hu: bool = False
    save_probabilities: bool = False
    save_uncertainty: bool = False


@dataclass(frozen=True)
class Opened:
    """A case read (and in the pipelined loop preprocessed, then scored) on its way to being written."""

    loaded: LoadedCase
    hu: dict[str, Any] | None
    t0: float
    net_img: Any = None
    scores: EnsembleScores | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        return self.loaded.case_id

    def with_scores(self, scores: EnsembleScores, seconds: float) -> Opened:
        return replace(self, scores=scores, timings={**self.timings, "inference": round(seconds, 3)})


def _guarded(item: InputCase | Opened, step: Callable[[], Any]) -> Any:
    """Run one step of one case; a MedpipeError ends that case as failed (the others go on)."""
    t0 = item.t0 if isinstance(item, Opened) else time.perf_counter()
    try:
        out = step()
    except MedpipeError as err:
        shown = item.shown if isinstance(item, Opened) else (item.case_id or "DICOM series")
        return Finished(CaseResult(shown, "failed", error=str(err), seconds=time.perf_counter() - t0))
    return Finished(out) if isinstance(out, CaseResult) and out.status != "ok" else out


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
    options = CaseOptions(overwrite, dicom_options, allow_non_hu, save_probabilities, save_uncertainty)
    opened = _guarded(case, lambda: open_case(seg, case, out_dir, options, reserved))
    if isinstance(opened, Finished):
        return opened.result
    reset_peaks(seg.device)
    out = _guarded(opened, lambda: write_case(seg, opened, out_dir, options, seg.predict(opened.loaded)))
    return out.result if isinstance(out, Finished) else out


def open_case(seg: Predictor, case: InputCase, out_dir: Path, options: CaseOptions, reserved: set[str] | None,
              prepare: bool = False) -> Opened | CaseResult:
    """Read a case, refuse a repeated case id, skip it if already done (resume), check CT intensities; with
    ``prepare`` also preprocess it onto the network grid."""
    seen = reserved if reserved is not None else set()
    t0 = time.perf_counter()
    loaded = load_case(case, seg.cfg.in_channels, options.dicom_options)
    if loaded.case_id in seen:
        raise InputError(f"output name collision: two inputs give case '{loaded.case_id}'",
                         path=case.files[0] if case.files else case.dicom_dir)
    seen.add(loaded.case_id)
    extra = extra_outputs(loaded.case_id, options.save_probabilities, options.save_uncertainty)
    if not options.overwrite and (done := already_done(out_dir, loaded, seg, extra)):
        return CaseResult(loaded.case_id, "skipped", done, seconds=time.perf_counter() - t0)
    hu = (ct_intensity_check(loaded, strict=not options.allow_non_hu)
          if seg.cfg.transforms.intensity == "ct_window" else None)
    if not prepare:
        return Opened(loaded, hu, t0)
    t1 = time.perf_counter()
    net_img = seg.prepare(loaded)
    return Opened(loaded, hu, t0, net_img, timings={"preprocess": round(time.perf_counter() - t1, 3)})


def write_case(seg: Predictor, opened: Opened, out_dir: Path, options: CaseOptions,
               pred: Prediction | None = None) -> CaseResult:
    """Export (unless ``pred`` is given) and write the mask, the requested maps and the sidecar."""
    loaded = opened.loaded
    if pred is None:
        if opened.scores is None:
            raise MedpipeError(f"case '{loaded.case_id}' reached the writer without scores")
        pred = seg.finish(loaded, opened.net_img, opened.scores, opened.timings)
    details = dict(pred.details)
    if opened.hu is not None:
        details["intensity_check"] = opened.hu
    mask = write_mask(out_dir / f"{loaded.case_id}.nii.gz", pred.labels, loaded.grid)
    qc, written = write_extras(seg, pred, loaded, out_dir, options.save_probabilities, options.save_uncertainty)
    details["outputs"] = written
    details["qc"] = qc.to_json()
    details["memory"] = peaks(seg.device)
    seconds = time.perf_counter() - opened.t0
    write_json_atomic(out_dir / f"{loaded.case_id}.json", build_sidecar(seg, loaded, mask, details, seconds))
    return CaseResult(loaded.case_id, "ok", mask, seconds=seconds, qc=qc.summary())


def _check_collisions(cases: list[InputCase]) -> None:
    ids: dict[str, Path] = {}
    for c in cases:
        if not c.case_id:
            continue
        first = c.files[0]
        if c.case_id in ids:
            raise InputError(f"output name collision: '{c.case_id}' also comes from {ids[c.case_id]}", path=first)
        ids[c.case_id] = first
