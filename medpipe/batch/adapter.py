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
    """A loaded :class:`medpipe.inference.predictor.Predictor` for ``model`` (run folder, checkpoint or package;
    an nnU-Net package gets its own predictor) with the batch's inference options; ``device`` overrides
    ``options['device']`` (the submitter reads the identity on the CPU)."""
    from medpipe.inference.nnunet_package import predictor_for
    from medpipe.inference.predictor import find_checkpoint

    return predictor_for([find_checkpoint(model)], device or options.get("device", "auto"), options.get("overlap"),
                         options.get("sw_batch_size"))


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
    """Segment one case into ``out_dir`` (``<case>.nii.gz`` + the sidecar ``<case>.json``): (ok, error)."""
    from medpipe.inference.batch import run_case
    from medpipe.inference.inputs import InputCase

    inp = InputCase(case.case_id, tuple(Path(f) for f in case.files),
                    Path(case.dicom_dir) if case.dicom_dir else None)
    res = run_case(predictor, inp, out_dir, overwrite=True, dicom_options=dicom_options(options),
                   allow_non_hu=bool(options.get("allow_non_hu", False)))
    return res.status == "ok", res.error or ""
