"""The one place where the batch runner touches inference: open a predictor, segment one case.

Everything else in ``medpipe.batch`` is about the ledger and the processes; if the predictor's constructor or
``run_case`` change (ensembles, TTA, more output formats), only these two functions follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpipe.batch.records import BatchCase
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


def segment_case(predictor: Any, case: BatchCase, out_dir: Path, options: dict[str, Any]) -> tuple[bool, str]:
    """Segment one case into ``out_dir`` (``<case>.nii.gz``, the requested DICOM outputs and maps, the lesion
    table, then the sidecar ``<case>.json``): (ok, error)."""
    from medpipe.inference.batch import run_case
    from medpipe.inference.inputs import InputCase

    inp = InputCase(case.case_id, tuple(Path(f) for f in case.files),
                    Path(case.dicom_dir) if case.dicom_dir else None)
    res = run_case(predictor, inp, out_dir, overwrite=True, dicom_options=dicom_options(options),
                   allow_non_hu=bool(options.get("allow_non_hu", False)),
                   formats=tuple(options.get("formats") or ("nifti",)), seg_type=options.get("seg_type") or "binary",
                   save_probabilities=bool(options.get("save_probabilities", False)),
                   save_uncertainty=bool(options.get("save_uncertainty", False)))
    return res.status == "ok", res.error or ""


def check_formats(cases: list[BatchCase], options: dict[str, Any]) -> None:
    """DICOM output formats need DICOM inputs: refuse a NIfTI case before any inference (as ``medpipe infer``)."""
    from medpipe.inference.dicom_outputs import check_inputs
    from medpipe.inference.inputs import InputCase

    check_inputs([InputCase(c.case_id, tuple(Path(f) for f in c.files), Path(c.dicom_dir) if c.dicom_dir else None)
                  for c in cases], tuple(options.get("formats") or ("nifti",)))
