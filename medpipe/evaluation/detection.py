"""Lesion detection metrics for any label: lesion-level TP/FP/FN under a stated matching rule, sensitivity,
precision, F1, and a FROC curve (LUNA16 style: sensitivity at 1/8 ... 8 false positives per scan).

Lesions are the connected components (26-connectivity) of a label (or region) in the reference and in the
prediction, each of at least ``min_volume_ml``. Matching is one-to-one and greedy: predicted lesions are taken
by decreasing score; each is matched to the still unmatched reference lesion that satisfies the rule best
(highest IoU, or nearest centroid), else it is a false positive. Reference lesions left unmatched are false
negatives. Because the matching of the higher-scored lesions never depends on the lower-scored ones, counting
the lesions above a threshold gives the FROC point of that threshold. Definitions: ``docs/lesions.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from medpipe.errors import ConfigError, InputError
from medpipe.io.geometry import Grid

#: False positives per scan at which the FROC sensitivity is read (LUNA16).
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DETECTION_FORMAT_VERSION = 1
#: The FROC score, as stated in the outputs.
SCORE_PROBABILITY = "mean probability of the lesion's label (from <case>.lesions.csv)"
SCORE_VOLUME = "lesion volume in mL (no probabilities in the predictions: larger lesions rank first)"
_S26 = ndi.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class MatchRule:
    """``overlap``: a predicted and a reference lesion match when IoU > ``iou``. ``centroid``: when their
    centroids are at most ``distance_mm`` apart. Components below ``min_volume_ml`` are not lesions."""

    kind: Literal["overlap", "centroid"] = "overlap"
    iou: float = 0.1
    distance_mm: float = 10.0
    min_volume_ml: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("overlap", "centroid"):
            raise ConfigError(f"unknown lesion matching rule {self.kind!r}", hint="use overlap or centroid")
        if not 0.0 <= self.iou < 1.0 or self.distance_mm <= 0 or self.min_volume_ml < 0:
            raise ConfigError(f"matching rule out of range: IoU threshold {self.iou} (expected [0, 1)), distance "
                              f"{self.distance_mm} mm (expected > 0), minimum volume {self.min_volume_ml} mL")

    def describe(self) -> str:
        crit = f"IoU > {self.iou:g}" if self.kind == "overlap" else f"centroid distance <= {self.distance_mm:g} mm"
        size = f"; lesions of at least {self.min_volume_ml:g} mL" if self.min_volume_ml else ""
        return f"one-to-one greedy matching by decreasing score, {crit}{size}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "iou": self.iou, "distance_mm": self.distance_mm,
                "min_volume_ml": self.min_volume_ml, "text": self.describe()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MatchRule:
        kind = str(d["kind"])
        if kind not in ("overlap", "centroid"):
            raise ConfigError(f"unknown lesion matching rule {kind!r}", hint="use overlap or centroid")
        return cls("overlap" if kind == "overlap" else "centroid", float(d["iou"]), float(d["distance_mm"]),
                   float(d["min_volume_ml"]))


def _ratio(value: Any) -> float:
    """A ratio read back from JSON, where NaN (undefined) was written as null."""
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class DetectedLesion:
    """One lesion of one case and label. ``kind``: pred or ref. ``status``: TP or FP (pred), TP or FN (ref).
    ``match``: the lesion it matched (the other kind's number), with the IoU and centroid distance (mm)."""

    case: str
    label: int
    label_name: str
    kind: Literal["pred", "ref"]
    lesion: int
    volume_ml: float
    centroid_ras_mm: tuple[float, float, float]
    score: float | None
    status: str
    match: int | None = None
    iou: float | None = None
    distance_mm: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case, "label": self.label, "label_name": self.label_name, "kind": self.kind,
                "lesion": self.lesion, "volume_ml": self.volume_ml, "centroid_ras_mm": list(self.centroid_ras_mm),
                "score": self.score, "status": self.status, "match": self.match, "iou": self.iou,
                "distance_mm": self.distance_mm}


@dataclass(frozen=True)
class LabelDetection:
    """Detection summary of one label over all cases. ``froc``: (FP per scan, sensitivity) at :data:`FROC_RATES`;
    ``cpm``: their mean (LUNA16's competition performance metric); ``curve``: every operating point (FP per
    scan, sensitivity), from the highest threshold down. Undefined ratios are NaN."""

    label: int
    label_name: str
    n_cases: int
    n_ref: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    sensitivity: float
    precision: float
    f1: float
    froc: tuple[tuple[float, float], ...]
    cpm: float
    curve: tuple[tuple[float, float], ...]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "label_name": self.label_name, "n_cases": self.n_cases, "n_ref": self.n_ref,
                "n_pred": self.n_pred, "tp": self.tp, "fp": self.fp, "fn": self.fn, "sensitivity": self.sensitivity,
                "precision": self.precision, "f1": self.f1,
                "froc": [{"fp_per_scan": r, "sensitivity": s} for r, s in self.froc], "cpm": self.cpm,
                "curve": [list(p) for p in self.curve]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LabelDetection:
        return cls(int(d["label"]), str(d["label_name"]), int(d["n_cases"]), int(d["n_ref"]), int(d["n_pred"]),
                   int(d["tp"]), int(d["fp"]), int(d["fn"]), _ratio(d["sensitivity"]), _ratio(d["precision"]),
                   _ratio(d["f1"]), tuple((float(p["fp_per_scan"]), _ratio(p["sensitivity"])) for p in d["froc"]),
                   _ratio(d["cpm"]), tuple((float(fp), _ratio(sens)) for fp, sens in d["curve"]))


@dataclass(frozen=True)
class DetectionResult:
    """Detection over a set of cases: the rule, the score used for the FROC, per-label summaries, every lesion.
    Its JSON form (the ``detection`` block of ``summary.json``) leaves the lesions out: they are ``detection.csv``,
    so a record read back from JSON holds none."""

    rule: MatchRule
    score: str
    labels: tuple[LabelDetection, ...]
    lesions: tuple[DetectedLesion, ...] = field(repr=False)
    format_version: int = DETECTION_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "rule": self.rule.to_json(), "score": self.score,
                "labels": {str(d.label): d.to_json() for d in self.labels}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DetectionResult:
        if d.get("format_version") != DETECTION_FORMAT_VERSION:
            raise InputError(f"unknown detection summary format version {d.get('format_version')!r}",
                             hint=f"this medpipe writes version {DETECTION_FORMAT_VERSION}")
        return cls(MatchRule.from_json(d["rule"]), str(d["score"]),
                   tuple(LabelDetection.from_json(v) for v in d["labels"].values()), ())


# ---------------------------------------------------------------- FROC (pure)
def froc_curve(scores: Sequence[float], is_tp: Sequence[bool], n_ref: int,
               n_scans: int) -> tuple[tuple[float, float], ...]:
    """Operating points (FP per scan, sensitivity) of predicted lesions with ``scores`` (TP or FP each), as the
    threshold falls from above the highest score to the lowest; lesions with equal scores enter together.
    Starts at (0, 0). Sensitivity is NaN without reference lesions."""
    if n_scans < 1:
        return ()
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    s = np.asarray(scores, dtype=float)[order]
    t = np.asarray(is_tp, dtype=bool)[order]
    points = [(0.0, 0.0 if n_ref else math.nan)]
    tp = fp = 0
    for i in range(len(s)):
        tp += int(t[i])
        fp += int(not t[i])
        if i + 1 == len(s) or s[i + 1] != s[i]:
            points.append((fp / n_scans, tp / n_ref if n_ref else math.nan))
    return tuple(points)


def froc_at(curve: Sequence[tuple[float, float]],
            rates: Sequence[float] = FROC_RATES) -> tuple[tuple[float, float], ...]:
    """Sensitivity at each FP-per-scan rate: the highest sensitivity of an operating point with at most that
    many false positives per scan (a step function, no interpolation)."""
    out = []
    for rate in rates:
        ok = [sens for fp, sens in curve if fp <= rate + 1e-12]
        out.append((rate, max(ok) if ok and not math.isnan(ok[0]) else math.nan))
    return tuple(out)


# ---------------------------------------------------------------- one case
@dataclass(frozen=True)
class _Components:
    cc: np.ndarray
    ids: list[int]
    volume_ml: dict[int, float]
    centroid: dict[int, np.ndarray]


def _components(mask: np.ndarray, grid: Grid, min_volume_ml: float) -> _Components:
    cc, n = ndi.label(mask, structure=_S26)
    voxel_ml = abs(float(np.linalg.det(grid.affine[:3, :3]))) / 1000.0
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    ids = [i for i in range(1, n + 1) if counts[i] * voxel_ml >= min_volume_ml]
    centres = ndi.center_of_mass(mask, cc, ids) if ids else []
    world = {i: grid.affine[:3, :3] @ np.asarray(c) + grid.affine[:3, 3] for i, c in zip(ids, centres, strict=True)}
    return _Components(cc, ids, {i: float(counts[i] * voxel_ml) for i in ids}, world)


def _iou_table(pred: _Components, ref: _Components) -> dict[tuple[int, int], float]:
    both = (pred.cc > 0) & (ref.cc > 0)
    if not both.any():
        return {}
    n_ref = int(ref.cc.max()) + 1
    pairs, inter = np.unique(pred.cc[both].astype(np.int64) * n_ref + ref.cc[both], return_counts=True)
    size_p = np.bincount(pred.cc.ravel())
    size_r = np.bincount(ref.cc.ravel())
    out = {}
    for key, n in zip(pairs.tolist(), inter.tolist(), strict=True):
        p, r = divmod(key, n_ref)
        out[(p, r)] = n / float(size_p[p] + size_r[r] - n)
    return out


def _scores(p: _Components, grid: Grid, listed: Sequence[tuple[Sequence[float], float]] | None) -> dict[int, float]:
    """Score per predicted component: its volume (mL) when nothing is listed, else the score of the listed lesion
    whose centroid is nearest to its own, within one voxel diagonal (0 when none is: an unlisted component)."""
    if listed is None:
        return dict(p.volume_ml)
    tol = float(np.linalg.norm(grid.spacing_mm))
    centres = np.asarray([c for c, _ in listed], dtype=float).reshape(-1, 3)
    out = {}
    for i in p.ids:
        d = np.linalg.norm(centres - p.centroid[i], axis=1) if len(centres) else np.array([])
        out[i] = float(listed[int(np.argmin(d))][1]) if len(d) and float(d.min()) <= tol else 0.0
    return out


def detect_case(case: str, pred: np.ndarray, ref: np.ndarray, grid: Grid, label: int, label_name: str,
                rule: MatchRule, listed: Sequence[tuple[Sequence[float], float]] | None = None) -> list[DetectedLesion]:
    """Match the lesions of bool masks ``pred`` and ``ref`` (I, J, K) on ``grid`` under ``rule``.

    Scores: ``listed`` (centroid RAS mm, score) of the predicted lesions, e.g. from ``<case>.lesions.csv``; without
    it, each predicted lesion scores its volume in mL (see :func:`_scores`)."""
    p, r = _components(pred, grid, rule.min_volume_ml), _components(ref, grid, rule.min_volume_ml)
    score = _scores(p, grid, listed)
    iou = _iou_table(p, r) if p.ids and r.ids else {}
    free = set(r.ids)
    matched: dict[int, int] = {}
    for i in sorted(p.ids, key=lambda k: (-score[k], -p.volume_ml[k], k)):
        if rule.kind == "overlap":
            cands = [(iou.get((i, j), 0.0), j) for j in free if iou.get((i, j), 0.0) > rule.iou]
            best = max(cands, default=None)
        else:
            dists = [(-float(np.linalg.norm(p.centroid[i] - r.centroid[j])), j) for j in free]
            best = max((d for d in dists if -d[0] <= rule.distance_mm), default=None)
        if best is not None:
            matched[i] = best[1]
            free.discard(best[1])
    number_p = {k: n for n, k in enumerate(sorted(p.ids, key=lambda k: (-p.volume_ml[k], k)), start=1)}
    number_r = {k: n for n, k in enumerate(sorted(r.ids, key=lambda k: (-r.volume_ml[k], k)), start=1)}
    back = {j: i for i, j in matched.items()}

    def centre(c: np.ndarray) -> tuple[float, float, float]:
        return (float(c[0]), float(c[1]), float(c[2]))

    def pair(i: int, j: int) -> tuple[float, float]:
        return iou.get((i, j), 0.0), float(np.linalg.norm(p.centroid[i] - r.centroid[j]))

    rows = []
    for i in sorted(p.ids, key=number_p.__getitem__):
        j = matched.get(i)
        extra = pair(i, j) if j is not None else (None, None)
        rows.append(DetectedLesion(case, label, label_name, "pred", number_p[i], p.volume_ml[i], centre(p.centroid[i]),
                                   float(score[i]), "TP" if j is not None else "FP",
                                   number_r[j] if j is not None else None, *extra))
    for j in sorted(r.ids, key=number_r.__getitem__):
        matched_i = back.get(j)
        extra = pair(matched_i, j) if matched_i is not None else (None, None)
        rows.append(DetectedLesion(case, label, label_name, "ref", number_r[j], r.volume_ml[j], centre(r.centroid[j]),
                                   None, "TP" if matched_i is not None else "FN",
                                   number_p[matched_i] if matched_i is not None else None,
                                   *extra))
    return rows


def summarize_detection(lesions: Sequence[DetectedLesion], n_cases: int, rule: MatchRule,
                        score: str) -> DetectionResult:
    """Per-label counts, ratios and FROC over ``n_cases`` scans (cases without lesions count as scans)."""
    out = []
    for label in sorted({les.label for les in lesions}):
        mine = [les for les in lesions if les.label == label]
        preds = [les for les in mine if les.kind == "pred"]
        n_ref = sum(les.kind == "ref" for les in mine)
        tp = sum(les.status == "TP" for les in preds)
        fp = len(preds) - tp
        sens = tp / n_ref if n_ref else math.nan
        prec = tp / len(preds) if preds else math.nan
        f1 = 2 * tp / (2 * tp + fp + (n_ref - tp)) if (n_ref or preds) else math.nan
        curve = froc_curve([les.score or 0.0 for les in preds], [les.status == "TP" for les in preds], n_ref, n_cases)
        froc = froc_at(curve)
        cpm = float(np.mean([s for _, s in froc])) if n_ref else math.nan
        out.append(LabelDetection(label, mine[0].label_name, n_cases, n_ref, len(preds), tp, fp, n_ref - tp, sens,
                                  prec, f1, froc, cpm, curve))
    return DetectionResult(rule, score, tuple(out), tuple(lesions))


# ---------------------------------------------------------------- scores from lesion tables
def listed_scores(pred_dir: Path, cases: Sequence[str]) -> dict[str, list[dict[str, str]]] | None:
    """The rows of every case's ``<case>.lesions.csv`` in ``pred_dir`` when each case has one and every row has a
    ``mean_probability``; else None (the scores are then lesion volumes for every case, so they stay comparable)."""
    from medpipe.evaluation.lesions import read_lesion_csv

    out = {}
    for case in cases:
        path = pred_dir / f"{case}.lesions.csv"
        if not path.is_file():
            return None
        rows = read_lesion_csv(path)
        if any(not row["mean_probability"] for row in rows):
            return None
        out[case] = rows
    return out


def rows_for(rows: Sequence[dict[str, str]], values: Sequence[int]) -> list[tuple[tuple[float, float, float], float]]:
    """(centroid RAS mm, mean probability) of the listed lesions whose label is one of ``values``."""
    return [((float(r["centroid_r_mm"]), float(r["centroid_a_mm"]), float(r["centroid_s_mm"])),
             float(r["mean_probability"])) for r in rows if int(r["label"]) in values]
