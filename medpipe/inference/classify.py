"""Inference for ``task: classification``: class probabilities per case, ``predictions.csv`` and a sidecar each.

Each case is read like a segmentation input (NIfTI or DICOM, the CT-HU gate, the training-range note), brought to
the network grid with the training's whole-volume preprocessing
(:func:`medpipe.transforms.classification_preprocess`), and scored by every model of the set (folds) and every
mirror pass (``inference.tta``); the probabilities are the mean of the softmax outputs. Written into the output
folder:

- ``<case>.json``: :class:`ClassificationSidecar` (model and input sha256, config hash, probabilities, predicted
  class, what was averaged, versions), atomically;
- ``predictions.csv``: ``case,predicted,prob_<class0>,prob_<class1>,...`` (classes in index order), one row per
  case, rewritten atomically after every case. Rows of earlier runs are kept (a re-run skips a case whose
  sidecar records the same input, model and config, and keeps its row); a case that fails loses its row.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medpipe.errors import InputError, MedpipeError
from medpipe.inference.inputs import InputCase, InputProvenance, LoadedCase, ct_intensity_check, load_case
from medpipe.inference.predictor import Predictor
from medpipe.inference.sidecar import EnsembleInfo, ModelRef
from medpipe.inference.tta import flip_spatial
from medpipe.io.atomic import write_json_atomic, write_text_atomic
from medpipe.io.dicom.options import DicomOptions
from medpipe.io.geometry import Grid
from medpipe.io.intensity import HuCheck
from medpipe.models.trainrange import out_of_range
from medpipe.runtime import versions
from medpipe.transforms import classification_preprocess

CLASSIFICATION_SIDECAR_FORMAT = "medpipe-classification-sidecar/1"
PREDICTIONS_CSV = "predictions.csv"


@dataclass(frozen=True)
class ClassificationSidecar:
    """Provenance and result of one classified case (``<case>.json``). ``probabilities`` in class order."""

    case: str
    input_sha256: str
    model: ModelRef
    config_hash: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    predicted: str
    source_grid: Grid
    network_shape: tuple[int, ...]
    network_spacing_mm: tuple[float, ...]
    device: str
    input: InputProvenance
    ensemble: EnsembleInfo
    seconds_total: float
    versions: dict[str, str]
    intensity_check: HuCheck | None = None
    out_of_training_range: tuple[str, ...] = ()
    status: str = "ok"
    format: str = CLASSIFICATION_SIDECAR_FORMAT

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format, "case": self.case, "status": self.status, "task": "classification",
            "input_sha256": self.input_sha256, "model": self.model.to_json(), "config_hash": self.config_hash,
            "classes": list(self.classes),
            "probabilities": {c: p for c, p in zip(self.classes, self.probabilities, strict=True)},
            "predicted": self.predicted, "source_grid": self.source_grid.to_json(),
            "network_grid": {"shape": list(self.network_shape), "spacing_mm": list(self.network_spacing_mm)},
            "device": self.device, "input": self.input.to_json(), "ensemble": self.ensemble.to_json(),
            "out_of_training_range": list(self.out_of_training_range), "seconds_total": self.seconds_total,
            "versions": dict(self.versions),
        }
        if self.intensity_check is not None:
            out["intensity_check"] = self.intensity_check.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassificationSidecar:
        if d.get("format") != CLASSIFICATION_SIDECAR_FORMAT:
            raise InputError(f"unknown classification sidecar format {d.get('format')!r}",
                             hint=f"this medpipe writes {CLASSIFICATION_SIDECAR_FORMAT}")
        classes = tuple(str(c) for c in d["classes"])
        hu, net = d.get("intensity_check"), d["network_grid"]
        return cls(
            case=str(d["case"]), input_sha256=str(d["input_sha256"]), model=ModelRef.from_json(d["model"]),
            config_hash=str(d["config_hash"]), classes=classes,
            probabilities=tuple(float(d["probabilities"][c]) for c in classes), predicted=str(d["predicted"]),
            source_grid=Grid.from_json(d["source_grid"]), network_shape=tuple(int(v) for v in net["shape"]),
            network_spacing_mm=tuple(float(v) for v in net["spacing_mm"]), device=str(d["device"]),
            input=InputProvenance.from_json(d["input"]), ensemble=EnsembleInfo.from_json(d["ensemble"]),
            seconds_total=float(d["seconds_total"]), versions={str(k): str(v) for k, v in d["versions"].items()},
            intensity_check=HuCheck.from_json(hu) if isinstance(hu, dict) else None,
            out_of_training_range=tuple(str(x) for x in d.get("out_of_training_range", ())), status=str(d["status"]),
        )


@dataclass(frozen=True)
class ClassifiedCase:
    """Outcome of one case: ``status`` ok, skipped or failed; the sidecar written (or found), or the error."""

    case_id: str
    status: str
    sidecar: Path | None = None
    predicted: str | None = None
    probability: float | None = None
    error: str | None = None
    seconds: float = 0.0
    note: str | None = None


def read_classification_sidecar(path: Path) -> ClassificationSidecar | None:
    """The sidecar at ``path``, or None when missing, unreadable or of another format (the case is then not done)."""
    try:
        return ClassificationSidecar.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def class_probabilities(seg: Predictor, net_img: torch.Tensor) -> np.ndarray:
    """Mean softmax (K,) over every model of the set and every mirror pass, for a (C, X, Y, Z) network image."""
    x = torch.as_tensor(net_img)[None].to(seg.device)
    use_amp = seg.cfg.inference.amp and seg.device.startswith("cuda")
    total = torch.zeros(len(seg.cfg.classes), dtype=torch.float64)
    with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
        for member in seg.model_set.models:
            for axes in seg.passes:
                logits = member.network(flip_spatial(x, axes))
                total += torch.softmax(logits.float(), dim=1)[0].double().cpu()
    return (total / (len(seg.model_set.models) * len(seg.passes))).numpy()


def prediction_header(classes: Sequence[str]) -> list[str]:
    return ["case", "predicted", *[f"prob_{c}" for c in classes]]


def _read_rows(path: Path, header: list[str]) -> dict[str, list[str]]:
    """Rows of an earlier ``predictions.csv`` with the same header (another header: none are kept)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    if not rows or rows[0] != header:
        return {}
    return {r[0]: r for r in rows[1:] if len(r) == len(header)}


def _write_rows(path: Path, header: list[str], rows: dict[str, list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows[k] for k in sorted(rows))
    write_text_atomic(path, buf.getvalue())


def _row(side: ClassificationSidecar) -> list[str]:
    return [side.case, side.predicted, *[f"{p:.6f}" for p in side.probabilities]]


def classify_case(seg: Predictor, case: InputCase, out_dir: Path, *, overwrite: bool = False,
                  dicom_options: DicomOptions | None = None, allow_non_hu: bool = False,
                  reserved: set[str] | None = None) -> tuple[ClassifiedCase, ClassificationSidecar | None]:
    """Classify one case into ``out_dir`` (its sidecar); a MedpipeError comes back as a failed case."""
    t0 = time.perf_counter()
    shown = case.case_id or "DICOM series"
    try:
        loaded = load_case(case, seg.cfg.in_channels, dicom_options)
        shown = loaded.case_id
        seen = reserved if reserved is not None else set()
        if loaded.case_id in seen:
            raise InputError(f"output name collision: two inputs give case '{loaded.case_id}'",
                             path=case.files[0] if case.files else case.dicom_dir)
        seen.add(loaded.case_id)
        side = read_classification_sidecar(out_dir / f"{loaded.case_id}.json")
        if (not overwrite and side is not None and side.status == "ok" and side.input_sha256 == loaded.input_sha256
                and side.model.sha256 == seg.model_sha256 and side.config_hash == seg.cfg.digest()):
            return _outcome(side, "skipped", out_dir, time.perf_counter() - t0, case.note), side
        side = _classify_loaded(seg, loaded, allow_non_hu, t0)
        write_json_atomic(out_dir / f"{loaded.case_id}.json", side.to_json())
        note = "; ".join(x for x in (case.note, *(f"outside the training range: {f}"
                                                  for f in side.out_of_training_range)) if x)
        return _outcome(side, "ok", out_dir, side.seconds_total, note or None), side
    except MedpipeError as err:
        return ClassifiedCase(shown, "failed", error=str(err), seconds=time.perf_counter() - t0), None


def _outcome(side: ClassificationSidecar, status: str, out_dir: Path, seconds: float,
             note: str | None) -> ClassifiedCase:
    p = side.probabilities[side.classes.index(side.predicted)]
    return ClassifiedCase(side.case, status, out_dir / f"{side.case}.json", side.predicted, p, seconds=seconds,
                          note=note)


def _classify_loaded(seg: Predictor, loaded: LoadedCase, allow_non_hu: bool, t0: float) -> ClassificationSidecar:
    cfg = seg.cfg
    hu = ct_intensity_check(loaded, strict=not allow_non_hu) if cfg.transforms.intensity == "ct_window" else None
    far = (out_of_range(seg.training_range, loaded.array, loaded.grid.affine, loaded.grid.spacing_mm)
           if seg.training_range is not None else ())
    img = MetaTensor(torch.from_numpy(loaded.array), meta={"affine": torch.as_tensor(loaded.grid.affine)})
    net_img = classification_preprocess(cfg, load=False)({"image": img})["image"]
    probs = class_probabilities(seg, net_img)
    return ClassificationSidecar(
        case=loaded.case_id, input_sha256=loaded.input_sha256,
        model=ModelRef(seg.checkpoint.name, seg.model_sha256, cfg.model.arch, len(seg.model_set.models)),
        config_hash=cfg.digest(), classes=tuple(cfg.classes), probabilities=tuple(float(p) for p in probs),
        predicted=cfg.classes[int(np.argmax(probs))], source_grid=loaded.grid,
        network_shape=tuple(int(v) for v in net_img.shape[1:]), network_spacing_mm=tuple(cfg.transforms.spacing_mm),
        device=seg.device, input=loaded.provenance, ensemble=seg.describe(),
        seconds_total=round(time.perf_counter() - t0, 3), versions=versions(), intensity_check=hu,
        out_of_training_range=tuple(far))


def classify_cases(seg: Predictor, cases: Sequence[InputCase], out_dir: Path, *, overwrite: bool = False,
                   dicom_options: DicomOptions | None = None, allow_non_hu: bool = False,
                   on_case: Callable[[ClassifiedCase, int, int], None] | None = None) -> list[ClassifiedCase]:
    """Classify ``cases`` one by one into ``out_dir``; ``predictions.csv`` is rewritten after each (module doc).
    One bad case never stops the others."""
    if not seg.cfg.is_classification:
        raise MedpipeError(f"{seg.checkpoint}: a {seg.cfg.task} model, not a classifier")
    header = prediction_header(seg.cfg.classes)
    table = out_dir / PREDICTIONS_CSV
    rows = _read_rows(table, header)
    seen: set[str] = set()
    results = []
    for i, case in enumerate(cases):
        res, side = classify_case(seg, case, out_dir, overwrite=overwrite, dicom_options=dicom_options,
                                  allow_non_hu=allow_non_hu, reserved=seen)
        if side is not None:
            rows[side.case] = _row(side)
        elif res.status == "failed":
            rows.pop(res.case_id, None)
        _write_rows(table, header, rows)
        results.append(res)
        if on_case is not None:
            on_case(res, i + 1, len(cases))
    return results
