"""The records of an evaluation: settings, per-label summaries and the ``summary.json`` document.

Everything a report or a caller reads of an evaluation is here, typed; ``summary.json`` is
:meth:`EvaluationSummary.to_json` (NaN written as null) with its format version.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import InputError
from medpipe.evaluation.classification import ClassificationMetrics
from medpipe.evaluation.detection import DetectionResult
from medpipe.evaluation.metrics.empty import EmptyPolicy
from medpipe.evaluation.metrics.lesions import LesionRule
from medpipe.evaluation.metrics.scoring import MetricRow

SUMMARY_FORMAT = "medpipe-evaluation-summary/1"
CLASSIFICATION_SUMMARY_FORMAT = "medpipe-classification-summary/1"


def json_safe(obj: object) -> object:
    """Replace NaN/inf floats by None (JSON has no NaN) recursively."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class MetricStats:
    """Statistics of one metric over the cases where it is defined; ``n_undefined`` counts the NaNs (never
    silently dropped). Location statistics are None when no case defines the metric."""

    n: int
    n_undefined: int
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    q1: float | None = None
    q3: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "n_undefined": self.n_undefined, "mean": self.mean, "std": self.std,
                "median": self.median, "q1": self.q1, "q3": self.q3, "min": self.minimum, "max": self.maximum}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MetricStats:
        return cls(int(d["n"]), int(d["n_undefined"]), _opt(d.get("mean")), _opt(d.get("std")),
                   _opt(d.get("median")), _opt(d.get("q1")), _opt(d.get("q3")), _opt(d.get("min")),
                   _opt(d.get("max")))


@dataclass(frozen=True)
class LesionTotals:
    """Lesion-wise counts over all cases of one label (BraTS-2023 rules)."""

    ref_lesions: int
    tp: int
    fn: int
    fp: int
    sensitivity: float | None
    fp_per_case: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LesionTotals:
        return cls(int(d["ref_lesions"]), int(d["tp"]), int(d["fn"]), int(d["fp"]), _opt(d.get("sensitivity")),
                   float(d["fp_per_case"]))


@dataclass(frozen=True)
class LabelSummary:
    """One label (or region) over all cases: its values, case counts per empty case, and metric statistics."""

    label_name: str
    label_values: tuple[int, ...]
    n_cases: int
    empty: dict[str, int]
    metrics: dict[str, MetricStats]
    lesions: LesionTotals | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label_name": self.label_name, "label_values": list(self.label_values),
                               "n_cases": self.n_cases, "empty": dict(self.empty),
                               "metrics": {k: v.to_json() for k, v in self.metrics.items()}}
        if self.lesions is not None:
            out["lesions"] = self.lesions.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelSummary:
        les = d.get("lesions")
        return cls(str(d["label_name"]), tuple(int(v) for v in d["label_values"]), int(d["n_cases"]),
                   {str(k): int(v) for k, v in d["empty"].items()},
                   {str(k): MetricStats.from_json(v) for k, v in d["metrics"].items()},
                   LesionTotals.from_json(les) if isinstance(les, dict) else None)


@dataclass(frozen=True)
class EvaluationSettings:
    """How the scores were computed: preset, surface convention, NSD tolerance per label id (mm), empty-mask
    policy, lesion rule, inputs, and the time it took."""

    preset: str
    preset_description: str
    surface: str
    nsd_tolerance_mm: dict[int, float]
    empty_policy: EmptyPolicy
    lesion_rule: LesionRule | None
    pred: str
    ref: str
    image: str | None = None
    cases_without_image: tuple[str, ...] = ()
    seconds: float = 0.0
    grid_differences_mm: dict[str, float] = field(default_factory=dict)
    grid_tolerance_fraction: float = 0.01

    def to_json(self) -> dict[str, Any]:
        return {"preset": self.preset, "preset_description": self.preset_description, "surface": self.surface,
                "nsd_tolerance_mm": {str(k): v for k, v in self.nsd_tolerance_mm.items()},
                "empty_policy": self.empty_policy.to_json(), "empty_policy_text": self.empty_policy.describe(),
                "lesion_rule": None if self.lesion_rule is None else asdict(self.lesion_rule),
                "pred": self.pred, "ref": self.ref, "image": self.image,
                "cases_without_image": list(self.cases_without_image),
                "grid_differences_mm": dict(self.grid_differences_mm),
                "grid_tolerance": f"{self.grid_tolerance_fraction:.0%} of the smallest voxel spacing",
                "grid_tolerance_fraction": self.grid_tolerance_fraction, "seconds": self.seconds}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvaluationSettings:
        rule = d.get("lesion_rule")
        return cls(str(d["preset"]), str(d["preset_description"]), str(d["surface"]),
                   {int(k): float(v) for k, v in d["nsd_tolerance_mm"].items()},
                   EmptyPolicy.from_json(d["empty_policy"]),
                   LesionRule.from_json(rule) if isinstance(rule, dict) else None, str(d["pred"]), str(d["ref"]),
                   d.get("image"), tuple(d.get("cases_without_image", ())), float(d.get("seconds", 0.0)),
                   {str(k): float(v) for k, v in d.get("grid_differences_mm", {}).items()},
                   float(d.get("grid_tolerance_fraction", 0.01)))


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`medpipe.evaluation.evaluate.evaluate` computed and wrote.

    ``rows``: one per case × label (or region), cases in name order. ``summary``: per label id. ``empty_counts``:
    per label id, the number of cases where both / the reference / the prediction masks are empty.
    ``missing_predictions``: reference cases without a prediction (reported, not scored). ``resampled``: cases
    whose prediction was resampled onto the reference grid. ``paths``: files written (empty without an output
    folder). ``overlays``: PNG bytes per case for the report.
    """

    rows: tuple[MetricRow, ...]
    summary: dict[int, LabelSummary]
    cases: tuple[str, ...]
    missing_predictions: tuple[str, ...]
    resampled: tuple[str, ...]
    settings: EvaluationSettings
    paths: dict[str, Path] = field(default_factory=dict)
    overlays: dict[str, bytes] = field(default_factory=dict, repr=False)
    detection: DetectionResult | None = None

    @property
    def empty_counts(self) -> dict[int, dict[str, int]]:
        return {k: dict(v.empty) for k, v in self.summary.items()}

    def rows_for(self, label: int) -> list[MetricRow]:
        """The rows of one label id."""
        return [r for r in self.rows if r.label == label]


@dataclass(frozen=True)
class EvaluationSummary:
    """The ``summary.json`` document."""

    medpipe_version: str
    settings: EvaluationSettings
    cases: tuple[str, ...]
    missing_predictions: tuple[str, ...]
    resampled_cases: tuple[str, ...]
    labels: dict[int, LabelSummary]
    #: Lesion detection (``evaluate --detection``); read back without its per-lesion rows (``detection.csv``).
    detection: DetectionResult | None = None
    format: str = field(default=SUMMARY_FORMAT)

    @classmethod
    def of(cls, result: EvaluationResult, version: str) -> EvaluationSummary:
        return cls(version, result.settings, result.cases, result.missing_predictions, result.resampled,
                   result.summary, result.detection)

    def to_json(self) -> dict[str, Any]:
        doc = json_safe({
            "format": self.format,
            "medpipe_version": self.medpipe_version,
            "settings": self.settings.to_json(),
            "n_cases": len(self.cases),
            "cases": list(self.cases),
            "missing_predictions": list(self.missing_predictions),
            "resampled_cases": list(self.resampled_cases),
            "empty_counts": {str(k): dict(v.empty) for k, v in self.labels.items()},
            "labels": {str(k): v.to_json() for k, v in self.labels.items()},
            **({"detection": self.detection.to_json()} if self.detection is not None else {}),
        })
        return doc if isinstance(doc, dict) else {}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvaluationSummary:
        if d.get("format") != SUMMARY_FORMAT:
            raise InputError(f"unknown evaluation summary format {d.get('format')!r}",
                             hint=f"this medpipe writes {SUMMARY_FORMAT}")
        return cls(str(d["medpipe_version"]), EvaluationSettings.from_json(d["settings"]), tuple(d["cases"]),
                   tuple(d["missing_predictions"]), tuple(d["resampled_cases"]),
                   {int(k): LabelSummary.from_json(v) for k, v in d["labels"].items()},
                   DetectionResult.from_json(det) if isinstance(det := d.get("detection"), dict) else None)


@dataclass(frozen=True)
class ClassificationSummary:
    """The ``summary.json`` of ``medpipe evaluate --task classification``: the metrics, the cases scored (name
    order), reference cases without a prediction (listed, not scored), the inputs and settings, and the files
    written (names inside the output folder)."""

    medpipe_version: str
    metrics: ClassificationMetrics
    cases: tuple[str, ...]
    missing_predictions: tuple[str, ...]
    pred: str
    truth: str
    seed: int
    probability_sum_tolerance: float
    seconds: float = 0.0
    files: tuple[str, ...] = ()
    format: str = field(default=CLASSIFICATION_SUMMARY_FORMAT)

    def to_json(self) -> dict[str, Any]:
        doc = json_safe({
            "format": self.format,
            "task": "classification",
            "medpipe_version": self.medpipe_version,
            "settings": {"pred": self.pred, "truth": self.truth, "n_bootstrap": self.metrics.n_bootstrap,
                         "seed": self.seed, "probability_sum_tolerance": self.probability_sum_tolerance,
                         "seconds": self.seconds},
            "n_cases": len(self.cases),
            "cases": list(self.cases),
            "missing_predictions": list(self.missing_predictions),
            "metrics": self.metrics.to_json(),
            "files": list(self.files),
        })
        return doc if isinstance(doc, dict) else {}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassificationSummary:
        if d.get("format") != CLASSIFICATION_SUMMARY_FORMAT:
            raise InputError(f"unknown classification summary format {d.get('format')!r}",
                             hint=f"this medpipe writes {CLASSIFICATION_SUMMARY_FORMAT}")
        s = d["settings"]
        return cls(str(d["medpipe_version"]), ClassificationMetrics.from_json(d["metrics"]),
                   tuple(str(c) for c in d["cases"]), tuple(str(c) for c in d["missing_predictions"]),
                   str(s["pred"]), str(s["truth"]), int(s["seed"]), float(s["probability_sum_tolerance"]),
                   float(s.get("seconds", 0.0)), tuple(str(f) for f in d.get("files", ())))
