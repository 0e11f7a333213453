"""Inference over many inputs: cases -> predictor -> masks on the source grid (+ JSON sidecars).

Batch semantics: one bad case never stops the others (it is reported as failed); a case whose mask and sidecar
already exist for the same input, model and config is skipped, so an interrupted batch resumes where it stopped.
:func:`run_case` is the state-free unit (one case, one predictor, one output folder) that batch runners build on;
:func:`infer` runs the cases pipelined (read case k+1 and write case k-1 while the network runs case k).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medpipe.errors import ConfigError, InputError, MedpipeError
from medpipe.evaluation.lesions import write_lesions
from medpipe.inference import dicom_outputs
from medpipe.inference.classify import ClassifiedCase, classify_cases
from medpipe.inference.export import write_mask
from medpipe.inference.inputs import InputCase, LoadedCase, collect_inputs, ct_intensity_check, load_case
from medpipe.inference.memory import peaks, reset_peaks
from medpipe.inference.nnunet_package import predictor_for
from medpipe.inference.outputs import extra_outputs, write_extras
from medpipe.inference.pipeline import Finished, run_pipelined
from medpipe.inference.predictor import EnsembleScores, Prediction, Predictor
from medpipe.inference.probabilities import probabilities_on_grid
from medpipe.inference.push import PushTarget, preflight, push_case
from medpipe.inference.sidecar import (
    CasePush,
    InferenceSidecar,
    MemoryPeaks,
    ModelRef,
    SegmentDetails,
    SlidingWindowSettings,
    already_done,
)
from medpipe.io.atomic import ensure_writable_dir, write_json_atomic
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.dicom.seg import DicomOutput
from medpipe.io.intensity import HuCheck
from medpipe.io.memory import is_out_of_memory, out_of_memory_message
from medpipe.models.trainrange import out_of_range
from medpipe.runtime import device_reason, versions

#: What to try when a case does not fit in memory (R2).
OOM_HINT = ("try --sw-batch-size 1, --device cpu on a GPU machine, a machine with more memory, or check the "
            "input's size and spacing with `medpipe info`")


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: ``status`` is ok, skipped or failed; ``push``: the SEG sent with ``--push``."""

    case_id: str
    status: str
    mask: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    push: CasePush | None = None
    #: Lesions listed in ``<case>.lesions.csv`` (all labels); None when not computed in this run.
    lesions: int | None = None
    note: str | None = None
    #: QC summary for the batch table (:meth:`medpipe.inference.qc.CaseQC.summary`): review, reasons, volumes.
    qc: dict[str, Any] | None = None


@dataclass(frozen=True)
class InferResult:
    cases: list[CaseResult] = field(default_factory=list)
    #: Lines for the user (which device runs and why).
    notices: tuple[str, ...] = ()
    #: Pipelined runs: busy seconds per stage, wall time, device-busy fraction (:class:`StageTimes`).
    stages: dict[str, Any] | None = None

    @property
    def n_failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)


@dataclass(frozen=True)
class CaseOptions:
    """What a batch asks of every case."""

    overwrite: bool = False
    dicom_options: DicomOptions | None = None
    allow_non_hu: bool = False
    save_probabilities: bool = False
    save_uncertainty: bool = False
    formats: tuple[str, ...] = ("nifti",)
    seg_type: str = "binary"


@dataclass(frozen=True)
class Opened:
    """A case read (and in the pipelined loop preprocessed, then scored) on its way to being written."""

    loaded: LoadedCase
    hu: HuCheck | None
    t0: float
    note: str | None = None
    far: tuple[str, ...] = ()
    net_img: Any = None
    scores: EnsembleScores | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        return self.loaded.case_id

    def with_scores(self, scores: EnsembleScores, seconds: float) -> Opened:
        return replace(self, scores=scores, timings={**self.timings, "inference": round(seconds, 3)})


def infer(run: Path | Sequence[Path], inputs: list[Path], out_dir: Path, *, device: str = "auto",
          overlap: float | None = None, sw_batch_size: int | None = None, overwrite: bool = False,
          dicom_options: DicomOptions | None = None, allow_non_hu: bool = False,
          formats: tuple[str, ...] = ("nifti",), seg_type: str = "binary", push: PushTarget | None = None,
          engine: str = "torch", min_lesion_ml: float | None = None,
          on_case: Callable[[CaseResult, int, int], None] | None = None, folds: Sequence[int] | None = None,
          tta: str | None = None, save_probabilities: bool = False, save_uncertainty: bool = False,
          pipelined: bool = True, queue_size: int = 2) -> InferResult:
    """Segment every input case into ``out_dir`` (``<case>.nii.gz``, ``<case>.json``, ``<case>.lesions.csv``, and
    for DICOM series the ``formats`` ``dicom-seg`` -> ``<case>.seg.dcm`` (``seg_type`` binary or labelmap),
    ``rtstruct`` -> ``<case>.rtstruct.dcm``).

    ``run``: a run folder, a checkpoint, a package (``.zip`` or folder), a folder of ``fold_*/`` run folders, or
    several of these (an ensemble; ``folds`` picks folds). ``tta``: none | flip | all (default: the config's
    ``inference.tta``). ``engine``: torch or onnxruntime (packages with ONNX files, CPU). For CT models
    (``ct_window`` intensity) each case must look like CT in HU (:func:`ct_intensity_check`) unless
    ``allow_non_hu``. With ``push``, each case that is ok or skipped then sends its ``<case>.seg.dcm`` to the
    DICOMweb server (:mod:`medpipe.inference.push`); a failed push fails the case. ``pipelined``: read/preprocess
    case k+1 and export/write case k-1 in background threads while the network runs case k
    (:mod:`medpipe.inference.pipeline`; ``queue_size`` cases wait at most between two stages)."""
    if push is not None:
        preflight(push)
    ensure_writable_dir(out_dir)
    runs = [Path(run)] if isinstance(run, str | Path) else [Path(r) for r in run]
    seg = predictor_for(runs, device, overlap, sw_batch_size, engine, folds=folds, tta=tta)  # nnU-Net packages too
    if seg.cfg.is_classification:  # a classifier: predictions.csv + sidecars (medpipe.inference.classify)
        extras = [n for n, on in (("--format", formats != ("nifti",)), ("--push", push is not None),
                                  ("--save-probabilities", save_probabilities),
                                  ("--save-uncertainty", save_uncertainty)) if on]
        if extras:
            raise ConfigError(f"{', '.join(extras)}: voxel outputs of segmentation; this model is a classifier",
                              path=seg.checkpoint, hint="a classifier writes predictions.csv and <case>.json")
        return _classified(seg, inputs, out_dir, overwrite, dicom_options, allow_non_hu, on_case, device)
    if min_lesion_ml is not None:  # part of the config, so of its hash: a changed minimum recomputes the cases
        seg.cfg = seg.cfg.with_overrides(inference={"min_lesion_ml": min_lesion_ml})
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)
    dicom_outputs.check_inputs(cases, formats)
    options = CaseOptions(overwrite, dicom_options, allow_non_hu, save_probabilities, save_uncertainty, formats,
                          seg_type)
    notices = (device_reason(device, seg.device),)
    seen: set[str] = set()

    def finished(res: CaseResult) -> CaseResult:
        return _pushed(res, out_dir, push) if push is not None and res.status != "failed" else res

    if not pipelined:
        results: list[CaseResult] = []
        for i, case in enumerate(cases):
            res = finished(_run(seg, case, out_dir, options, seen))
            results.append(res)
            if on_case:
                on_case(res, i + 1, len(cases))
        return InferResult(results, notices)

    def read(case: InputCase) -> Opened | Finished[CaseResult]:
        opened = _guarded(case, lambda: open_case(seg, case, out_dir, options, seen), "reading the input")
        if isinstance(opened, Finished):
            return Finished(finished(opened.result)) if opened.result.status == "skipped" else opened
        return _guarded(opened, lambda: prepare_case(seg, opened), f"segmenting ({_shape(opened)} voxels)")

    def compute(opened: Opened) -> Opened | Finished[CaseResult]:
        reset_peaks(seg.device)
        t = time.perf_counter()
        return _guarded(opened, lambda: opened.with_scores(seg.run_network(opened.net_img), time.perf_counter() - t),
                        "segmenting")

    def write(opened: Opened) -> CaseResult | Finished[CaseResult]:
        out = _guarded(opened, lambda: write_case(seg, opened, out_dir, options), "writing the outputs")
        return Finished(finished(out.result)) if isinstance(out, Finished) else finished(out)

    done, times = run_pipelined(cases, read, compute, write, queue_size=queue_size, on_result=on_case)
    return InferResult(done, notices, stages=times.to_json())


def _classified(seg: Predictor, inputs: list[Path], out_dir: Path, overwrite: bool,
                dicom_options: DicomOptions | None, allow_non_hu: bool,
                on_case: Callable[[CaseResult, int, int], None] | None, device: str) -> InferResult:
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)

    def result(c: ClassifiedCase) -> CaseResult:
        note = "; ".join(x for x in (f"{c.predicted} (p = {c.probability:.3f})" if c.predicted else None, c.note) if x)
        return CaseResult(c.case_id, c.status, c.sidecar, c.error, c.seconds, note=note or None)

    done = classify_cases(seg, cases, out_dir, overwrite=overwrite, dicom_options=dicom_options,
                          allow_non_hu=allow_non_hu,
                          on_case=None if on_case is None else lambda c, i, n: on_case(result(c), i, n))
    return InferResult([result(c) for c in done], (device_reason(device, seg.device),))


def _guarded(item: InputCase | Opened, step: Callable[[], Any], stage: str = "") -> Any:
    """Run one step of one case; a MedpipeError (or running out of memory) ends that case as failed, the others
    go on."""
    t0 = item.t0 if isinstance(item, Opened) else time.perf_counter()
    shown = item.shown if isinstance(item, Opened) else (item.case_id or "DICOM series")
    try:
        out = step()
    except MedpipeError as err:
        return Finished(CaseResult(shown, "failed", error=str(err), seconds=time.perf_counter() - t0))
    except (MemoryError, RuntimeError) as err:  # out of memory: this case fails, the batch goes on (R2)
        if not is_out_of_memory(err):
            raise
        loaded = item.loaded if isinstance(item, Opened) else None
        where = (loaded.files[0] if loaded is not None and loaded.files else
                 (item.files[0] if isinstance(item, InputCase) and item.files else shown))
        return Finished(CaseResult(shown, "failed", error=f"{where}: {out_of_memory_message(err, stage)} "
                                                          f"({OOM_HINT})", seconds=time.perf_counter() - t0))
    return Finished(out) if isinstance(out, CaseResult) and out.status != "ok" else out


def run_case(seg: Predictor, case: InputCase, out_dir: Path, *, overwrite: bool = False,
             dicom_options: DicomOptions | None = None, allow_non_hu: bool = False,
             reserved: set[str] | None = None, formats: tuple[str, ...] = ("nifti",), seg_type: str = "binary",
             save_probabilities: bool = False, save_uncertainty: bool = False) -> CaseResult:
    """Segment one case into ``out_dir``: the mask, the DICOM ``formats``, the lesion table, the requested maps
    (``<case>_probabilities.nii.gz`` / ``<case>_uncertainty.nii.gz``), then the sidecar (with QC and peak memory),
    each written atomically. Never raises a MedpipeError: a bad case comes back as ``status="failed"`` with the
    reason. ``reserved``: case ids already written by this batch (a second input with the same id is refused;
    the id is added)."""
    if seg.cfg.is_classification:
        return CaseResult(case.case_id or "DICOM series", "failed", error=f"{seg.checkpoint}: a classifier; classify "
                          "with `medpipe infer` (predictions.csv), not case by case")
    options = CaseOptions(overwrite, dicom_options, allow_non_hu, save_probabilities, save_uncertainty, formats,
                          seg_type)
    return _run(seg, case, out_dir, options, reserved)


def _run(seg: Predictor, case: InputCase, out_dir: Path, options: CaseOptions,
         reserved: set[str] | None) -> CaseResult:
    opened = _guarded(case, lambda: open_case(seg, case, out_dir, options, reserved), "reading the input")
    if isinstance(opened, Finished):
        return opened.result
    reset_peaks(seg.device)
    out = _guarded(opened, lambda: write_case(seg, opened, out_dir, options, seg.predict(opened.loaded)),
                   f"segmenting ({_shape(opened)} voxels)")
    return out.result if isinstance(out, Finished) else out


def _shape(opened: Opened) -> str:
    return " x ".join(str(n) for n in opened.loaded.array.shape[1:])


def prepare_case(seg: Predictor, opened: Opened) -> Opened:
    """The opened case preprocessed onto the network grid (the pipelined loop's read stage)."""
    t1 = time.perf_counter()
    net_img = seg.prepare(opened.loaded)
    return replace(opened, net_img=net_img, timings={"preprocess": round(time.perf_counter() - t1, 3)})


def open_case(seg: Predictor, case: InputCase, out_dir: Path, options: CaseOptions,
              reserved: set[str] | None) -> Opened | CaseResult:
    """Read a case, refuse a repeated case id, skip it if already done (resume), check CT intensities and the
    training range."""
    seen = reserved if reserved is not None else set()
    t0 = time.perf_counter()
    loaded = load_case(case, seg.cfg.in_channels, options.dicom_options, keep_integers=True)
    if loaded.case_id in seen:
        raise InputError(f"output name collision: two inputs give case '{loaded.case_id}'",
                         path=case.files[0] if case.files else case.dicom_dir)
    seen.add(loaded.case_id)
    transform = loaded.provenance.spatial_transform  # qform/sform disagreement (N1): said, not only recorded
    note = "; ".join(x for x in (case.note, transform.warning if transform else None) if x) or None
    extra = extra_outputs(loaded.case_id, options.save_probabilities, options.save_uncertainty)
    if not options.overwrite and (done := already_done(out_dir, loaded, seg.model_sha256, seg.cfg.digest(),
                                                       options.formats, extra)):
        return CaseResult(loaded.case_id, "skipped", done, seconds=time.perf_counter() - t0, note=note)
    dicom_outputs.check_case(loaded, options.formats)
    hu = (ct_intensity_check(loaded, strict=not options.allow_non_hu)
          if seg.cfg.transforms.intensity == "ct_window" else None)
    far = (out_of_range(seg.training_range, loaded.array, loaded.grid.affine, loaded.grid.spacing_mm)
           if seg.training_range is not None else ())
    return Opened(loaded, hu, t0, note, tuple(far))


def write_case(seg: Predictor, opened: Opened, out_dir: Path, options: CaseOptions,
               pred: Prediction | None = None) -> CaseResult:
    """Export (unless ``pred`` is given) and write the mask, DICOM outputs, lesion table, maps and sidecar."""
    loaded = opened.loaded
    if pred is None:
        if opened.scores is None:
            raise MedpipeError(f"case '{loaded.case_id}' reached the writer without scores")
        pred = seg.finish(loaded, opened.net_img, opened.scores, opened.timings)
    mask = write_mask(out_dir / f"{loaded.case_id}.nii.gz", pred.labels, loaded.grid)
    written = dicom_outputs.write_dicom_outputs(loaded, pred.labels, out_dir, options.formats, cfg=seg.cfg,
                                                model_sha256=seg.model_sha256, seg_type=options.seg_type)
    own, probabilities = probabilities_on_grid(pred.scores, loaded.grid, pred.labels, seg.label_values,
                                               keep_all=options.save_probabilities)  # one resampling for both
    lesions = write_lesions(out_dir / f"{loaded.case_id}.lesions.csv", pred.labels, loaded.grid, seg.cfg.labels,
                            seg.cfg.inference.min_lesion_ml, dict.fromkeys(seg.label_values, own))
    qc, maps = write_extras(seg, pred, loaded, out_dir, probabilities, options.save_uncertainty)
    memory = peaks(seg.device)
    seconds = time.perf_counter() - opened.t0
    side = replace(build_sidecar(seg, loaded, mask, pred.details, seconds, opened.hu, written), lesions=lesions,
                   out_of_training_range=opened.far, qc=qc, maps=maps,
                   memory=MemoryPeaks(memory.get("host_rss_peak_mb"), memory.get("device_peak_mb")))
    write_json_atomic(out_dir / f"{loaded.case_id}.json", side.to_json())
    note = "; ".join(x for x in (opened.note, *(f"outside the training range: {f}" for f in opened.far)) if x)
    return CaseResult(loaded.case_id, "ok", mask, seconds=seconds, lesions=lesions.n_lesions, note=note or None,
                      qc=qc.summary())


def build_sidecar(seg: Predictor, case: LoadedCase, mask: Path, details: SegmentDetails, seconds: float,
                  intensity_check: HuCheck | None = None,
                  dicom: dict[str, DicomOutput] | None = None) -> InferenceSidecar:
    """The sidecar record of one segmented case."""
    inf = seg.cfg.inference
    return InferenceSidecar(
        case=case.case_id, mask=mask.name, input_sha256=case.input_sha256,
        model=ModelRef(seg.checkpoint.name, seg.model_sha256, getattr(seg, "arch_name", seg.cfg.model.arch),
                       len(seg.model_set.models)),
        config_hash=seg.cfg.digest(),
        labels=dict(seg.cfg.labels), source_grid=case.grid, device=seg.device,
        sliding_window=SlidingWindowSettings(tuple(inf.roi_size_vox), inf.overlap, inf.sw_batch_size, inf.blend),
        input=case.provenance, details=details, seconds_total=round(seconds, 3), versions=versions(),
        intensity_check=intensity_check, dicom_outputs=dict(dicom or {}),
    )


def _pushed(res: CaseResult, out_dir: Path, target: PushTarget) -> CaseResult:
    outcome = push_case(out_dir, res.case_id, target)
    if outcome.ok:
        return replace(res, push=outcome)
    return replace(res, status="failed", push=outcome,
                   error=f"mask written, but its DICOM SEG was not pushed to {outcome.server}: {outcome.reason}")


def _check_collisions(cases: list[InputCase]) -> None:
    ids: dict[str, Path] = {}
    for c in cases:
        if not c.case_id:
            continue
        first = c.files[0]
        if c.case_id in ids:
            raise InputError(f"output name collision: '{c.case_id}' also comes from {ids[c.case_id]}", path=first)
        ids[c.case_id] = first
