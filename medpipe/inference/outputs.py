"""What a case writes beside its mask: QC (always, into the sidecar), probabilities and uncertainty maps
(on request). Used by :func:`medpipe.inference.batch.run_case` and the pipelined loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import MetaTensor

from medpipe.inference.inputs import LoadedCase
from medpipe.inference.predictor import Prediction, Predictor
from medpipe.inference.probabilities import (
    SCALE,
    uncertainty_maps,
    uncertainty_on_grid,
    write_maps,
)
from medpipe.inference.qc import CaseQC, case_qc, network_stats
from medpipe.inference.sidecar import MapOutput


def extra_outputs(case_id: str, save_probabilities: bool, save_uncertainty: bool) -> tuple[str, ...]:
    """File names of the requested extra outputs of a case."""
    names = []
    if save_probabilities:
        names.append(f"{case_id}_probabilities.nii.gz")
    if save_uncertainty:
        names.append(f"{case_id}_uncertainty.nii.gz")
    return tuple(names)


def write_extras(seg: Predictor, pred: Prediction, case: LoadedCase, out_dir: Path, probabilities: np.ndarray | None,
                 save_uncertainty: bool) -> tuple[CaseQC, dict[str, MapOutput]]:
    """QC of the case, and the requested maps written atomically; returns (qc, sidecar ``outputs`` entry).
    ``probabilities``: the uint8 (I, J, K, C) map to save (``--save-probabilities``), or None."""
    mean = pred.scores.as_tensor() if isinstance(pred.scores, MetaTensor) else pred.scores
    unc = uncertainty_maps(mean, pred.entropy_sum, pred.n_passes)
    qc = case_qc(pred.labels, case.grid, seg.cfg, network_stats(mean, unc, seg.label_values[1:]),
                 seg.model_set.volume_ranges())
    written: dict[str, MapOutput] = {}
    names = iter(extra_outputs(case.case_id, probabilities is not None, save_uncertainty))
    if probabilities is not None:
        path = write_maps(out_dir / next(names), probabilities, case.grid)
        written["probabilities"] = MapOutput(path.name, "uint8", SCALE, tuple(str(v) for v in seg.label_values))
    if save_uncertainty:
        maps = MetaTensor(unc, meta={"affine": pred.scores.affine})
        path = write_maps(out_dir / next(names), uncertainty_on_grid(maps, case.grid), case.grid)
        written["uncertainty"] = MapOutput(path.name, "uint8", SCALE, ("entropy_of_mean", "mutual_information"),
                                           "log(C)", pred.n_passes)
    return qc, written
