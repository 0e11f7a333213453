"""Inference: cases -> preprocessing -> sliding-window logits -> masks on the source grid (+ JSON sidecars).

Batch semantics: one bad case never stops the others (it is reported as failed); a case whose mask and sidecar
already exist for the same input, model and config is skipped, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.config import PipelineConfig
from medpipe.errors import CheckpointError, InputError, MedpipeError
from medpipe.export import labels_on_grid, write_mask
from medpipe.inputs import InputCase, LoadedCase, collect_inputs, ct_intensity_check, load_case
from medpipe.io.atomic import ensure_writable_dir, write_json_atomic
from medpipe.runtime import resolve_device, sha256_file, versions


@dataclass(frozen=True)
class CaseResult:
    """Outcome of one case: ``status`` is ok, skipped or failed."""

    case_id: str
    status: str
    mask: Path | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class InferResult:
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return sum(c.status == "failed" for c in self.cases)


def find_checkpoint(run: Path) -> Path:
    """A run folder's ``best.pt`` (else ``last.pt``), or a checkpoint file given directly."""
    if run.is_file():
        return run
    if not run.is_dir():
        raise CheckpointError("run folder or checkpoint not found", path=run)
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError("run folder has no checkpoint (best.pt or last.pt)", path=run, hint="train first")


class Segmenter:
    """A loaded model plus its preprocessing: segments one case at a time."""

    def __init__(self, checkpoint: Path, device: str = "auto", overlap: float | None = None,
                 sw_batch_size: int | None = None) -> None:
        from medpipe.models import model_from_checkpoint

        self.device = resolve_device(device)
        self.checkpoint = checkpoint
        self.model, cfg = model_from_checkpoint(checkpoint, self.device)
        overrides = {"overlap": overlap, "sw_batch_size": sw_batch_size}
        self.cfg: PipelineConfig = cfg.with_overrides(
            inference={k: v for k, v in overrides.items() if v is not None}
        )
        self.model_sha256 = sha256_file(checkpoint)
        self.label_values = list(range(cfg.num_classes))
        self._pre: Any = None

    def logits(self, image: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Sliding-window logits for a (1, C, X, Y, Z) network-space tensor; returns (logits, memory rung)."""
        from monai.inferers import sliding_window_inference

        inf = self.cfg.inference
        use_amp = inf.amp and self.device.startswith("cuda")

        def run(out_device: str) -> torch.Tensor:
            with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                return sliding_window_inference(  # type: ignore[return-value]
                    image.to(self.device), roi_size=inf.roi_size_vox, sw_batch_size=inf.sw_batch_size,
                    predictor=self.model, overlap=inf.overlap, mode=inf.blend, sw_device=self.device,
                    device=out_device,
                )

        if not self.device.startswith("cuda"):
            return run(self.device), "cpu"
        try:
            return run(self.device), "gpu"
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return run("cpu"), "gpu-windows-cpu-aggregation"

    def segment(self, case: LoadedCase) -> tuple[np.ndarray, dict[str, Any]]:
        """Mask (I, J, K) on the case's source grid, and timings/details for the sidecar."""
        from monai.data import MetaTensor

        from medpipe.models import label_scores
        from medpipe.transforms import preprocess

        if self._pre is None:
            self._pre = preprocess(self.cfg, with_label=False, load=False)
        t0 = time.perf_counter()
        img = MetaTensor(torch.from_numpy(case.array), meta={"affine": torch.as_tensor(case.grid.affine)})
        net_img = self._pre({"image": img})["image"]
        t1 = time.perf_counter()
        logits, rung = self.logits(net_img[None])
        probs = label_scores(logits[0].float(), self.cfg)  # softmax, or decoded sigmoid regions
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        probs_mt = MetaTensor(probs.to(self.device), meta={"affine": net_img.affine.to(torch.float64)})
        labels = labels_on_grid(probs_mt, case.grid, self.label_values)
        labels = self._postprocess(labels)
        t3 = time.perf_counter()
        details = {
            "network_grid": {"shape": list(net_img.shape[1:]), "spacing_mm": list(self.cfg.transforms.spacing_mm)},
            "memory_rung": rung,
            "timings_s": {"preprocess": round(t1 - t0, 3), "inference": round(t2 - t1, 3), "export": round(t3 - t2, 3)},
        }
        return labels, details

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        keep = self.cfg.inference.keep_largest
        if not keep:
            return labels
        from monai.transforms import KeepLargestConnectedComponent

        kept = KeepLargestConnectedComponent(applied_labels=list(keep), independent=True)(
            torch.as_tensor(labels[None].astype(np.int64)))
        return np.asarray(kept[0]).astype(labels.dtype)


def _sidecar(seg: Segmenter, case: LoadedCase, mask: Path, details: dict[str, Any], seconds: float) -> dict:
    return {
        "case": case.case_id,
        "mask": mask.name,
        "status": "ok",
        "input_sha256": case.input_sha256,
        "model": {"checkpoint": seg.checkpoint.name, "sha256": seg.model_sha256, "arch": seg.cfg.model.arch},
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


def _already_done(out_dir: Path, case: LoadedCase, seg: Segmenter) -> Path | None:
    mask, side = out_dir / f"{case.case_id}.nii.gz", out_dir / f"{case.case_id}.json"
    if not (mask.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (meta.get("input_sha256") == case.input_sha256 and meta.get("config_hash") == seg.cfg.digest()
            and meta.get("model", {}).get("sha256") == seg.model_sha256 and meta.get("status") == "ok")
    return mask if same else None


def infer(run: Path, inputs: list[Path], out_dir: Path, *, device: str = "auto", overlap: float | None = None,
          sw_batch_size: int | None = None, overwrite: bool = False, dicom_options: dict[str, Any] | None = None,
          allow_non_hu: bool = False,
          on_case: Callable[[CaseResult, int, int], None] | None = None) -> InferResult:
    """Segment every input case into ``out_dir`` (``<case>.nii.gz`` + ``<case>.json``).

    For CT models (``ct_window`` intensity) each case must look like CT in HU (:func:`ct_intensity_check`)
    unless ``allow_non_hu``."""
    ensure_writable_dir(out_dir)
    seg = Segmenter(find_checkpoint(run), device, overlap, sw_batch_size)
    cases = collect_inputs(inputs, seg.cfg.channels)
    if not cases:
        raise InputError("no input images found", path=", ".join(str(p) for p in inputs))
    _check_collisions(cases)
    results: list[CaseResult] = []
    seen: set[str] = set()
    for i, case in enumerate(cases):
        res = _one_case(seg, case, out_dir, overwrite, dicom_options, seen, allow_non_hu)
        results.append(res)
        if on_case:
            on_case(res, i + 1, len(cases))
    return InferResult(results)


def _one_case(seg: Segmenter, case: InputCase, out_dir: Path, overwrite: bool,
              dicom_options: dict[str, Any] | None, seen: set[str], allow_non_hu: bool = False) -> CaseResult:
    t0 = time.perf_counter()
    shown = case.case_id or "DICOM series"
    try:
        loaded = load_case(case, seg.cfg.in_channels, dicom_options)
        if loaded.case_id in seen:
            raise InputError(f"output name collision: two inputs give case '{loaded.case_id}'",
                             path=case.files[0] if case.files else case.dicom_dir)
        seen.add(loaded.case_id)
        shown = loaded.case_id
        if not overwrite and (done := _already_done(out_dir, loaded, seg)):
            return CaseResult(loaded.case_id, "skipped", done, seconds=time.perf_counter() - t0)
        hu = (ct_intensity_check(loaded, strict=not allow_non_hu)
              if seg.cfg.transforms.intensity == "ct_window" else None)
        labels, details = seg.segment(loaded)
        if hu is not None:
            details["intensity_check"] = hu
        mask = write_mask(out_dir / f"{loaded.case_id}.nii.gz", labels, loaded.grid)
        seconds = time.perf_counter() - t0
        write_json_atomic(out_dir / f"{loaded.case_id}.json", _sidecar(seg, loaded, mask, details, seconds))
        return CaseResult(loaded.case_id, "ok", mask, seconds=seconds)
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
