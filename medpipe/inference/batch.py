"""Inference over many inputs: cases -> predictor -> masks on the source grid (+ JSON sidecars).

Batch semantics: one bad case never stops the others (it is reported as failed); a case whose mask and sidecar
already exist for the same input, model and config is skipped, so an interrupted batch resumes where it stopped.
:func:`run_case` is the state-free unit (one case, one predictor, one output folder) that batch runners build on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from medpipe.errors import InputError, MedpipeError
from medpipe.evaluation.lesions import write_lesions
from medpipe.inference import dicom_outputs
from medpipe.inference.export import write_mask
from medpipe.inference.inputs import InputCase, LoadedCase, collect_inputs, ct_intensity_check, load_case
from medpipe.inference.predictor import Predictor, find_checkpoint
from medpipe.inference.push import PushTarget, preflight, push_case
from medpipe.inference.sidecar import (
    CasePush,
    InferenceSidecar,
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


@dataclass(frozen=True)
class InferResult:
    cases: list[CaseResult] = field(default_factory=list)
    #: Lines for the user (which device runs and why).
    notices: tuple[str, ...] = ()

    @property
    def n_failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)


def infer(run: Path, inputs: list[Path], out_dir: Path, *, device: str = "auto", overlap: float | None = None,
          sw_batch_size: int | None = None, overwrite: bool = False, dicom_options: DicomOptions | None = None,
          allow_non_hu: bool = False, formats: tuple[str, ...] = ("nifti",), seg_type: str = "binary",
          push: PushTarget | None = None, engine: str = "torch", min_lesion_ml: float | None = None,
          on_case: Callable[[CaseResult, int, int], None] | None = None) -> InferResult:
    """Segment every input case into ``out_dir`` (``<case>.nii.gz`` + ``<case>.json``, and for DICOM series the
    ``formats`` ``dicom-seg`` -> ``<case>.seg.dcm`` (``seg_type`` binary or labelmap), ``rtstruct`` ->
    ``<case>.rtstruct.dcm``).

    For CT models (``ct_window`` intensity) each case must look like CT in HU (:func:`ct_intensity_check`)
    unless ``allow_non_hu``. With ``push``, each case that is ok or skipped then sends its ``<case>.seg.dcm``
    to the DICOMweb server (:mod:`medpipe.inference.push`); a failed push fails the case. ``run`` may be a
    medpipe package (``.zip`` or folder); ``engine`` torch or onnxruntime (packages with ONNX files, CPU).
    Beside each mask, ``<case>.lesions.csv`` lists its lesions (components of at least ``min_lesion_ml``,
    default: the config's ``inference.min_lesion_ml``)."""
    if push is not None:
        preflight(push)
    ensure_writable_dir(out_dir)
    seg = Predictor(find_checkpoint(run), device, overlap, sw_batch_size, engine)
    if min_lesion_ml is not None:  # part of the config, so of its hash: a changed minimum recomputes the cases
        seg.cfg = seg.cfg.with_overrides(inference={"min_lesion_ml": min_lesion_ml})
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)
    dicom_outputs.check_inputs(cases, formats)
    results: list[CaseResult] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        res = run_case(seg, case, out_dir, overwrite=overwrite, dicom_options=dicom_options,
                       allow_non_hu=allow_non_hu, reserved=seen, formats=formats, seg_type=seg_type)
        if push is not None and res.status != "failed":
            res = _pushed(res, out_dir, push)
        results.append(res)
        if on_case:
            on_case(res, i + 1, len(cases))
    return InferResult(results, (device_reason(device, seg.device),))


def run_case(seg: Predictor, case: InputCase, out_dir: Path, *, overwrite: bool = False,
             dicom_options: DicomOptions | None = None, allow_non_hu: bool = False,
             reserved: set[str] | None = None, formats: tuple[str, ...] = ("nifti",),
             seg_type: str = "binary") -> CaseResult:
    """Segment one case into ``out_dir`` (mask, DICOM ``formats``, then the sidecar, each written atomically; the
    lesion table; the sidecar records them). Never raises a MedpipeError:
    a bad case comes back as ``status="failed"`` with the reason. ``reserved``: case ids already written by this
    batch (a second input with the same id is refused; the id is added)."""
    seen = reserved if reserved is not None else set()
    t0 = time.perf_counter()
    shown = case.case_id or "DICOM series"
    stage = ["reading the input"]
    try:
        return _run_case(seg, case, out_dir, overwrite, dicom_options, allow_non_hu, seen, stage, t0, formats,
                         seg_type)
    except (MemoryError, RuntimeError) as err:  # out of memory: this case fails, the batch goes on
        if not is_out_of_memory(err):
            raise
        where = case.files[0] if case.files else case.dicom_dir
        return CaseResult(shown, "failed", error=f"{where}: {out_of_memory_message(err, stage[0])} ({OOM_HINT})",
                          seconds=time.perf_counter() - t0)


def _run_case(seg: Predictor, case: InputCase, out_dir: Path, overwrite: bool, dicom_options: DicomOptions | None,
              allow_non_hu: bool, seen: set[str], stage: list[str], t0: float, formats: tuple[str, ...],
              seg_type: str) -> CaseResult:
    """The work of :func:`run_case`; ``stage[0]`` says what it is doing (for out-of-memory messages)."""
    shown = case.case_id or "DICOM series"
    try:
        loaded = load_case(case, seg.cfg.in_channels, dicom_options)
        if loaded.case_id in seen:
            raise InputError(f"output name collision: two inputs give case '{loaded.case_id}'",
                             path=case.files[0] if case.files else case.dicom_dir)
        seen.add(loaded.case_id)
        shown = loaded.case_id
        if not overwrite and (done := already_done(out_dir, loaded, seg.model_sha256, seg.cfg.digest(), formats)):
            return CaseResult(loaded.case_id, "skipped", done, seconds=time.perf_counter() - t0, note=case.note)
        dicom_outputs.check_case(loaded, formats)
        hu = (ct_intensity_check(loaded, strict=not allow_non_hu)
              if seg.cfg.transforms.intensity == "ct_window" else None)
        far = (out_of_range(seg.training_range, loaded.array, loaded.grid.affine, loaded.grid.spacing_mm)
               if seg.training_range is not None else ())
        stage[0] = f"segmenting ({' x '.join(str(n) for n in loaded.array.shape[1:])} voxels)"
        labels, details = seg.segment(loaded)
        stage[0] = "writing the mask"
        mask = write_mask(out_dir / f"{loaded.case_id}.nii.gz", labels, loaded.grid)
        written = dicom_outputs.write_dicom_outputs(loaded, labels, out_dir, formats, cfg=seg.cfg,
                                                    model_sha256=seg.model_sha256, seg_type=seg_type)
        lesions = write_lesions(out_dir / f"{loaded.case_id}.lesions.csv", labels, loaded.grid, seg.cfg.labels,
                                seg.cfg.inference.min_lesion_ml)
        seconds = time.perf_counter() - t0
        side = replace(build_sidecar(seg, loaded, mask, details, seconds, hu, written), lesions=lesions,
                       out_of_training_range=far)
        write_json_atomic(out_dir / f"{loaded.case_id}.json", side.to_json())
        note = "; ".join(x for x in (case.note, *(f"outside the training range: {f}" for f in far)) if x)
        return CaseResult(loaded.case_id, "ok", mask, seconds=seconds, lesions=lesions.n_lesions, note=note or None)
    except MedpipeError as err:
        return CaseResult(shown, "failed", error=str(err), seconds=time.perf_counter() - t0)


def build_sidecar(seg: Predictor, case: LoadedCase, mask: Path, details: SegmentDetails, seconds: float,
                  intensity_check: HuCheck | None = None,
                  dicom: dict[str, DicomOutput] | None = None) -> InferenceSidecar:
    """The sidecar record of one segmented case."""
    inf = seg.cfg.inference
    return InferenceSidecar(
        case=case.case_id, mask=mask.name, input_sha256=case.input_sha256,
        model=ModelRef(seg.checkpoint.name, seg.model_sha256, seg.cfg.model.arch), config_hash=seg.cfg.digest(),
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
