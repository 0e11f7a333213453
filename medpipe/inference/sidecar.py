"""The inference sidecar: what was run on which input, beside every mask; and the resume rule built on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medpipe.inference.inputs import LoadedCase
from medpipe.inference.predictor import Predictor
from medpipe.runtime import versions


def build_sidecar(seg: Predictor, case: LoadedCase, mask: Path, details: dict[str, Any], seconds: float) -> dict:
    return {
        "case": case.case_id,
        "mask": mask.name,
        "status": "ok",
        "input_sha256": case.input_sha256,
        "model": {"checkpoint": seg.checkpoint.name, "sha256": seg.model_sha256, "arch": seg.cfg.model.arch,
                  "n_models": len(seg.model_set.models)},
        "config_hash": seg.cfg.digest(),
        "labels": {str(k): v for k, v in seg.cfg.labels.items()},
        "source_grid": case.grid.to_json(),
        "device": seg.device,
        "sliding_window": {"roi_size_vox": list(seg.cfg.inference.roi_size_vox), "overlap": seg.cfg.inference.overlap,
                           "sw_batch_size": seg.cfg.inference.sw_batch_size, "blend": seg.cfg.inference.blend},
        "input": case.provenance,
        **details,
        "seconds_total": round(seconds, 3),
        "versions": versions(),
    }


def already_done(out_dir: Path, case: LoadedCase, seg: Predictor, extra: tuple[str, ...] = ()) -> Path | None:
    """The mask if this case was finished for the same input, models and config (and every ``extra`` output
    file, e.g. ``<case>_probabilities.nii.gz``, exists); else None."""
    mask, side = out_dir / f"{case.case_id}.nii.gz", out_dir / f"{case.case_id}.json"
    if not (mask.is_file() and side.is_file()) or not all((out_dir / name).is_file() for name in extra):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (meta.get("input_sha256") == case.input_sha256 and meta.get("config_hash") == seg.cfg.digest()
            and meta.get("model", {}).get("sha256") == seg.model_sha256 and meta.get("status") == "ok")
    return mask if same else None
