"""Case-level classification metrics (pure numpy): accuracy, balanced accuracy, per-class sensitivity and
specificity, confusion matrix, ROC curves and ROC AUC (one-vs-rest) with a percentile-bootstrap 95 % interval.

Inputs: true class indices ``y`` (N,) and class probabilities ``probs`` (N, K), rows summing to 1; the predicted
class is the argmax. AUC is the Mann-Whitney statistic (ties count one half), equal to the area under the
step ROC curve. The bootstrap resamples cases with replacement (``n_bootstrap`` times, seeded); resamples that
lack a class are skipped, and the number used is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medpipe.errors import InputError

CLASSIFICATION_FORMAT_VERSION = 1


def _num(v: Any) -> float:
    """A JSON number back to float; null (NaN written as JSON) -> NaN."""
    return math.nan if v is None else float(v)


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """AUC of ``scores`` for bool labels ``positive``: P(score of a positive > score of a negative) + half the
    ties. NaN when either group is empty."""
    pos, neg = np.asarray(scores)[positive], np.asarray(scores)[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    ranks = _average_ranks(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (vectorised: the bootstrap calls this often)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse.reshape(-1)]


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) as the threshold falls through the distinct scores, from
    (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=float)
    thresholds = np.unique(s)[::-1]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    fpr = [0.0] + [float(((s >= t) & ~positive).sum()) / max(n_neg, 1) for t in thresholds]
    tpr = [0.0] + [float(((s >= t) & positive).sum()) / max(n_pos, 1) for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)


def bootstrap_auc(positive: np.ndarray, scores: np.ndarray, n_bootstrap: int = 1000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, int]:
    """Percentile bootstrap interval (lo, hi) of the AUC and the number of resamples used."""
    rng = np.random.default_rng(seed)
    n = len(scores)
    values = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        auc = roc_auc(positive[idx], np.asarray(scores)[idx])
        if not math.isnan(auc):
            values.append(auc)
    if not values:
        return math.nan, math.nan, 0
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi), len(values)


@dataclass(frozen=True)
class ClassMetrics:
    """One class, one-vs-rest: sensitivity (recall), specificity, AUC with its bootstrap interval."""

    index: int
    name: str
    n: int
    sensitivity: float
    specificity: float
    auc: float
    auc_ci: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "n": self.n, "sensitivity": self.sensitivity,
                "specificity": self.specificity, "auc": self.auc, "auc_ci95": list(self.auc_ci)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassMetrics:
        lo, hi = d["auc_ci95"]
        return cls(int(d["index"]), str(d["name"]), int(d["n"]), _num(d["sensitivity"]), _num(d["specificity"]),
                   _num(d["auc"]), (_num(lo), _num(hi)))


@dataclass(frozen=True)
class ClassificationMetrics:
    """All metrics of one evaluation. ``confusion[i][j]``: cases of true class i predicted as j. ``auc``: of the
    positive class (index 1) for two classes, else the macro mean of the one-vs-rest AUCs, with its interval."""

    classes: tuple[str, ...]
    n: int
    accuracy: float
    balanced_accuracy: float
    confusion: tuple[tuple[int, ...], ...]
    per_class: tuple[ClassMetrics, ...]
    auc: float
    auc_ci: tuple[float, float]
    n_bootstrap: int
    bootstrap_used: int
    format_version: int = CLASSIFICATION_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "classes": list(self.classes), "n": self.n,
                "accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
                "confusion": [list(r) for r in self.confusion], "per_class": [c.to_json() for c in self.per_class],
                "auc": self.auc, "auc_ci95": list(self.auc_ci), "n_bootstrap": self.n_bootstrap,
                "bootstrap_used": self.bootstrap_used}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassificationMetrics:
        if d.get("format_version") != CLASSIFICATION_FORMAT_VERSION:
            raise InputError(f"unknown classification metrics format_version {d.get('format_version')!r}",
                             hint=f"this medpipe reads version {CLASSIFICATION_FORMAT_VERSION}")
        lo, hi = d["auc_ci95"]
        return cls(tuple(str(c) for c in d["classes"]), int(d["n"]), _num(d["accuracy"]),
                   _num(d["balanced_accuracy"]), tuple(tuple(int(v) for v in row) for row in d["confusion"]),
                   tuple(ClassMetrics.from_json(c) for c in d["per_class"]), _num(d["auc"]), (_num(lo), _num(hi)),
                   int(d["n_bootstrap"]), int(d["bootstrap_used"]))


def classification_metrics(y: Sequence[int], probs: np.ndarray, classes: Sequence[str], *, n_bootstrap: int = 1000,
                           seed: int = 0) -> ClassificationMetrics:
    """Metrics of class probabilities ``probs`` (N, K) against true classes ``y`` (N,) (see module doc)."""
    y_arr = np.asarray(y, dtype=int)
    p = np.asarray(probs, dtype=float)
    k = len(classes)
    if p.ndim != 2 or p.shape != (len(y_arr), k):
        raise InputError(f"probabilities of shape {p.shape}, expected ({len(y_arr)}, {k}) (cases, classes)")
    if len(y_arr) == 0 or y_arr.min() < 0 or y_arr.max() >= k:
        raise InputError(f"true classes must be indices 0..{k - 1} of at least one case")
    pred = p.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_arr, pred), 1)
    per_class = []
    for c in range(k):
        pos = y_arr == c
        tp, fn = confusion[c, c], confusion[c].sum() - confusion[c, c]
        fp = confusion[:, c].sum() - tp
        tn = len(y_arr) - tp - fn - fp
        auc = roc_auc(pos, p[:, c])
        lo, hi, _ = bootstrap_auc(pos, p[:, c], n_bootstrap, seed)
        per_class.append(ClassMetrics(c, classes[c], int(pos.sum()), float(tp / (tp + fn)) if tp + fn else math.nan,
                                      float(tn / (tn + fp)) if tn + fp else math.nan, auc, (lo, hi)))
    sens = [m.sensitivity for m in per_class if not math.isnan(m.sensitivity)]
    if k == 2:
        auc, (lo, hi), used = per_class[1].auc, per_class[1].auc_ci, bootstrap_auc(y_arr == 1, p[:, 1], n_bootstrap,
                                                                                    seed)[2]
    else:
        auc = float(np.nanmean([m.auc for m in per_class]))
        lo, hi, used = _bootstrap_macro(y_arr, p, n_bootstrap, seed)
    return ClassificationMetrics(tuple(classes), len(y_arr), float((pred == y_arr).mean()),
                                 float(np.mean(sens)) if sens else math.nan,
                                 tuple(tuple(int(v) for v in row) for row in confusion), tuple(per_class), auc,
                                 (lo, hi), n_bootstrap, used)


def _bootstrap_macro(y: np.ndarray, p: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, float, int]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < p.shape[1]:
            continue
        values.append(float(np.mean([roc_auc(y[idx] == c, p[idx, c]) for c in range(p.shape[1])])))
    if not values:
        return math.nan, math.nan, 0
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi), len(values)
