"""Inference over many inputs: cases -> predictor -> masks on the source grid (+ JSON sidecars).

Batch semantics: one bad case never stops the others (it is reported as failed); a case whose mask and sidecar
already exist for the same input, model and config is skipped, so an interrupted batch resumes where it stopped.
:func:`run_case` is the state-free unit (one case, one predictor, one output folder) that batch runners build on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import InputError, MedpipeError
from medpipe.evaluation.lesions import write_lesions
from medpipe.inference.export import write_mask
from medpipe.inference.inputs import InputCase, collect_inputs, ct_intensity_check, load_case
from medpipe.inference.predictor import Predictor, find_checkpoint
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
    #: Lesions listed in ``<case>.lesions.csv`` (all labels); None when not computed in this run.
    lesions: int | None = None


@dataclass(frozen=True)
class InferResult:
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)


def infer(run: Path, inputs: list[Path], out_dir: Path, *, device: str = "auto", overlap: float | None = None,
          sw_batch_size: int | None = None, overwrite: bool = False, dicom_options: dict[str, Any] | None = None,
          allow_non_hu: bool = False, min_lesion_ml: float | None = None,
          on_case: Callable[[CaseResult, int, int], None] | None = None) -> InferResult:
    """Segment every input case into ``out_dir`` (``<case>.nii.gz`` + ``<case>.json``).

    For CT models (``ct_window`` intensity) each case must look like CT in HU (:func:`ct_intensity_check`)
    unless ``allow_non_hu``. Beside each mask, ``<case>.lesions.csv`` lists its lesions (components of at least
    ``min_lesion_ml``, default: the config's ``inference.min_lesion_ml``)."""
    ensure_writable_dir(out_dir)
    seg = Predictor(find_checkpoint(run), device, overlap, sw_batch_size)
    if min_lesion_ml is not None:  # part of the config, so of its hash: a changed minimum recomputes the cases
        seg.cfg = seg.cfg.with_overrides(inference={"min_lesion_ml": min_lesion_ml})
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)
    results: list[CaseResult] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        res = run_case(seg, case, out_dir, overwrite=overwrite, dicom_options=dicom_options,
                       allow_non_hu=allow_non_hu, reserved=seen)
        results.append(res)
        if on_case:
            on_case(res, i + 1, len(cases))
    return InferResult(results)


def run_case(seg: Predictor, case: InputCase, out_dir: Path, *, overwrite: bool = False,
             dicom_options: dict[str, Any] | None = None, allow_non_hu: bool = False,
             reserved: set[str] | None = None) -> CaseResult:
    """Segment one case into ``out_dir`` (mask, lesion table, sidecar; each written atomically). Never raises a
    MedpipeError: a bad case comes back as ``status="failed"`` with the reason. ``reserved``: case ids already
    written by this batch (a second input with the same id is refused; the id is added)."""
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
        if not overwrite and (done := already_done(out_dir, loaded, seg)):
            return CaseResult(loaded.case_id, "skipped", done, seconds=time.perf_counter() - t0)
        hu = (ct_intensity_check(loaded, strict=not allow_non_hu)
              if seg.cfg.transforms.intensity == "ct_window" else None)
        labels, details = seg.segment(loaded)
        if hu is not None:
            details["intensity_check"] = hu
        mask = write_mask(out_dir / f"{loaded.case_id}.nii.gz", labels, loaded.grid)
        details["lesions"] = write_lesions(out_dir / f"{loaded.case_id}.lesions.csv", labels, loaded.grid,
                                           seg.cfg.labels, seg.cfg.inference.min_lesion_ml)
        seconds = time.perf_counter() - t0
        write_json_atomic(out_dir / f"{loaded.case_id}.json", build_sidecar(seg, loaded, mask, details, seconds))
        n_lesions = sum(v["count"] for v in details["lesions"]["labels"].values())
        return CaseResult(loaded.case_id, "ok", mask, seconds=seconds, lesions=n_lesions)
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
