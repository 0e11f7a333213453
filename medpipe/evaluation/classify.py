"""``medpipe evaluate --task classification``: score case-level class probabilities against true labels.

Inputs (see docs/classification.md):

- predictions: ``predictions.csv`` (or a folder holding one) with the header
  ``case,predicted,prob_<class 0>,prob_<class 1>,...`` (the classes in index order; other columns are ignored),
  as ``medpipe infer`` writes it for classification runs. Each row's probabilities must be finite, in [0, 1] and
  sum to 1 within :data:`PROB_SUM_TOLERANCE`; ``predicted`` (a class name or index) must be a class of highest
  probability (the metrics use the argmax).
- truth: a CSV whose header names the columns ``case`` and ``label`` (others ignored); ``label`` is a class name
  or an integer index. A header is required: a header-less file is refused rather than guessed at (its first case
  would otherwise be taken for a header, or a header for a case).

Cases are matched by id. As in the segmentation evaluation, a prediction without a truth label is an error, and
truth cases without a prediction are listed (``missing_predictions``) but not scored.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from medpipe.errors import ConfigError, InputError
from medpipe.evaluation.classification import classification_metrics
from medpipe.evaluation.result import ClassificationSummary
from medpipe.io.atomic import ensure_writable_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from medpipe.runtime import __version__

PREDICTIONS_NAME = "predictions.csv"
PROB_PREFIX = "prob_"
#: Largest accepted |sum of a row's probabilities - 1|.
PROB_SUM_TOLERANCE = 1e-3
#: Probabilities may exceed [0, 1] by this much (float32 softmax written with 6+ decimals).
_RANGE_SLACK = 1e-6


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) of the non-blank rows of a CSV file (UTF-8, a BOM allowed)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            lines = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read this CSV file: {err}", path=path) from err
    if not lines:
        raise InputError("empty CSV file, expected a header row and one row per case", path=path)
    return [c.strip() for c in lines[0][1]], [(i, [c.strip() for c in row]) for i, row in lines[1:]]


def _predictions_file(pred: Path) -> Path:
    if pred.is_dir():
        pred = pred / PREDICTIONS_NAME
        if not pred.is_file():
            raise InputError(f"no {PREDICTIONS_NAME} in this folder", path=pred.parent,
                             hint="pass the predictions.csv written by medpipe infer, or its folder")
    elif not pred.is_file():
        raise InputError("predictions file or folder not found", path=pred)
    return pred


def _class_of(value: str, classes: Sequence[str]) -> int | None:
    """A class name (first) or an integer index -> index; None if neither."""
    if value in classes:
        return list(classes).index(value)
    try:
        index = int(value)
    except ValueError:
        return None
    return index if 0 <= index < len(classes) else None


def read_predictions(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Class names (from the ``prob_`` columns) and case -> probabilities (K,) of a ``predictions.csv``."""
    header, rows = _read_rows(path)
    prob_cols = [i for i, h in enumerate(header) if h.startswith(PROB_PREFIX)]
    classes = [header[i][len(PROB_PREFIX):] for i in prob_cols]
    if "case" not in header or "predicted" not in header or len(prob_cols) < 2:
        raise InputError(f"header {','.join(header)!r} is not a predictions header",
                         path=path, hint="expected case,predicted,prob_<class0>,prob_<class1>,...")
    if len(set(classes)) != len(classes) or "" in classes:
        raise InputError(f"class names in the prob_ columns must be distinct and non-empty, got {classes}", path=path)
    i_case, i_pred = header.index("case"), header.index("predicted")
    out: dict[str, np.ndarray] = {}
    for line, row in rows:
        where = f"line {line}"
        if len(row) != len(header):
            raise InputError(f"{where}: {len(row)} cells, expected {len(header)} as in the header", path=path)
        case = row[i_case]
        if not case:
            raise InputError(f"{where}: empty case id", path=path)
        if case in out:
            raise InputError(f"{where}: case {case!r} appears twice", path=path)
        try:
            probs = np.array([float(row[i]) for i in prob_cols])
        except ValueError as err:
            raise InputError(f"{where} (case {case!r}): a probability is not a number: "
                             f"{', '.join(row[i] for i in prob_cols)}", path=path) from err
        _check_probabilities(probs, path, f"{where} (case {case!r})", classes)
        predicted = _class_of(row[i_pred], classes)
        if predicted is None:
            raise InputError(f"{where} (case {case!r}): predicted class {row[i_pred]!r} is none of {classes}",
                             path=path)
        if probs[predicted] < probs.max():
            raise InputError(f"{where} (case {case!r}): predicted {classes[predicted]!r} but class "
                             f"{classes[int(probs.argmax())]!r} has the highest probability", path=path,
                             hint="the predicted column must be the argmax of the probabilities")
        out[case] = probs
    if not out:
        raise InputError("no cases: the file holds only a header", path=path)
    return classes, out


def _check_probabilities(probs: np.ndarray, path: Path, where: str, classes: Sequence[str]) -> None:
    values = ", ".join(f"{c}={p:g}" for c, p in zip(classes, probs, strict=True))
    if not np.all(np.isfinite(probs)):
        raise InputError(f"{where}: non-finite probability ({values})", path=path)
    if probs.min() < -_RANGE_SLACK or probs.max() > 1 + _RANGE_SLACK:
        raise InputError(f"{where}: probabilities must lie in [0, 1], got {values}", path=path)
    total = float(probs.sum())
    if abs(total - 1) > PROB_SUM_TOLERANCE:
        raise InputError(f"{where}: probabilities sum to {total:.6g}, expected 1 within {PROB_SUM_TOLERANCE:g} "
                         f"({values})", path=path)


def read_truth(path: Path, classes: Sequence[str]) -> dict[str, int]:
    """case -> true class index of a ``case,label`` CSV (label: a class name or an integer index)."""
    if not path.is_file():
        raise InputError("truth file not found" if not path.exists() else "truth must be a CSV file, not a folder",
                         path=path, hint="a CSV with the header case,label")
    header, rows = _read_rows(path)
    if "case" not in header or "label" not in header:
        raise InputError(f"first row {','.join(header)!r} is not a header naming the columns case and label",
                         path=path, hint="add the header row case,label (labels: class names or indices)")
    i_case, i_label = header.index("case"), header.index("label")
    out: dict[str, int] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise InputError(f"line {line}: {len(row)} cells, expected {len(header)} as in the header", path=path)
        case, label = row[i_case], row[i_label]
        if not case:
            raise InputError(f"line {line}: empty case id", path=path)
        if case in out:
            raise InputError(f"line {line}: case {case!r} appears twice", path=path)
        index = _class_of(label, classes)
        if index is None:
            raise InputError(f"line {line} (case {case!r}): label {label!r} is neither a class name nor an index "
                             f"0..{len(classes) - 1}", path=path, hint=f"classes: {', '.join(classes)}")
        out[case] = index
    if not out:
        raise InputError("no cases: the file holds only a header", path=path)
    return out


def _class_names(found: list[str], given: Sequence[str] | None, path: Path) -> list[str]:
    """The header's class names, or ``given`` when the header only numbers them (``prob_0, prob_1, ...``)."""
    if given is None:
        return found
    given = [str(c) for c in given]
    if given == found or (len(given) == len(found) and found == [str(i) for i in range(len(found))]):
        return given
    raise ConfigError(f"classes {given} do not match the predictions' columns {found}", path=path,
                      hint="leave classes out to use the names in the predictions header")


def evaluate_classification(pred: Path, truth: Path, out_dir: Path, *, classes: Sequence[str] | None = None,
                            n_bootstrap: int = 1000, seed: int = 0) -> ClassificationSummary:
    """Score ``pred`` (``predictions.csv`` or its folder) against ``truth`` (``case,label`` CSV) and write
    ``summary.json``, ``cases.csv``, ``roc.png``, ``confusion.png`` and ``report.html`` into ``out_dir``
    (atomically, after everything is computed). ``classes``: names for header columns ``prob_0, prob_1, ...``,
    else must equal the header's names. ``n_bootstrap`` resamples (seeded by ``seed``) for the AUC intervals."""
    from medpipe.evaluation.report_classification import cases_csv, confusion_png, render_html, roc_png

    if n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    t0 = time.perf_counter()
    pred_file, truth = _predictions_file(Path(pred)), Path(truth)
    out_dir = ensure_writable_dir(Path(out_dir))
    found, predictions = read_predictions(pred_file)
    names = _class_names(found, classes, pred_file)
    labels = read_truth(truth, names)
    orphans = sorted(set(predictions) - set(labels))
    if orphans:
        raise InputError(f"prediction without a truth label: {', '.join(orphans[:5])}"
                         f"{' ...' if len(orphans) > 5 else ''} ({len(orphans)} case(s))", path=pred_file,
                         hint=f"add them to {truth} or remove them from the predictions")
    cases = sorted(predictions)
    y = np.array([labels[c] for c in cases], dtype=int)
    probs = np.stack([predictions[c] for c in cases])
    metrics = classification_metrics(y.tolist(), probs, names, n_bootstrap=n_bootstrap, seed=seed)
    files = ("summary.json", "cases.csv", "roc.png", "confusion.png", "report.html")
    summary = ClassificationSummary(__version__, metrics, tuple(cases), tuple(sorted(set(labels) - set(predictions))),
                                    str(pred), str(truth), seed, PROB_SUM_TOLERANCE, files=files)
    roc, confusion = roc_png(y, probs, metrics), confusion_png(metrics)
    page = render_html(summary, y, probs, roc, confusion)
    summary = replace(summary, seconds=round(time.perf_counter() - t0, 3))
    write_text_atomic(out_dir / "cases.csv", cases_csv(cases, y, probs, names))
    write_bytes_atomic(out_dir / "roc.png", roc)
    write_bytes_atomic(out_dir / "confusion.png", confusion)
    write_text_atomic(out_dir / "report.html", page)
    write_json_atomic(out_dir / "summary.json", summary.to_json())
    return summary

