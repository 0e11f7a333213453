"""``medpipe evaluate``: score predicted label maps against references, per case and per label, in millimetres.

One library call, :func:`evaluate`, used by the CLI and by ``medpipe run``; :func:`score_arrays` is the
in-memory path for training validation. Definitions live in ``medpipe/metrics/`` and ``docs/metrics.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medpipe.errors import ConfigError, GeometryError, InputError
from medpipe.evaluation.detection import (
    SCORE_PROBABILITY,
    SCORE_VOLUME,
    DetectedLesion,
    MatchRule,
    detect_case,
    listed_scores,
    rows_for,
    summarize_detection,
)
from medpipe.evaluation.metrics.empty import EmptyPolicy
from medpipe.evaluation.metrics.lesions import LesionRule
from medpipe.evaluation.metrics.regions import Region, get_preset, tolerance_for
from medpipe.evaluation.metrics.scoring import MetricRow, score_arrays
from medpipe.evaluation.metrics.surface import CONVENTIONS
from medpipe.evaluation.result import EvaluationResult, EvaluationSettings
from medpipe.evaluation.summary import summarize
from medpipe.io.atomic import ensure_writable_dir
from medpipe.io.geometry import Grid, describe_mismatch, grids_match
from medpipe.io.nifti import NIFTI_SUFFIXES, case_id_from_path, is_nifti_path, load_label

__all__ = ["EvaluationResult", "evaluate", "match_cases", "score_arrays"]

#: Callback ``progress(done, total, case)`` after each case.
Progress = Callable[[int, int, str], None]


def _nifti_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not is_nifti_path(path):
            continue
        case = case_id_from_path(path)
        if case in files:
            raise InputError(f"two files for case {case!r}: {files[case].name} and {path.name}", path=folder)
        files[case] = path
    if not files:
        raise InputError(f"no NIfTI files ({'/'.join(NIFTI_SUFFIXES)}) in this folder", path=folder)
    return files


def match_cases(pred: Path, ref: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Pair predictions with references by case name (file name without ``.nii.gz``/``.nii``).

    Two files are one case. Returns ([(case, pred_file, ref_file)], references without a prediction).
    A prediction without a reference is an :class:`InputError` naming it.
    """
    pred, ref = Path(pred), Path(ref)
    for path in (pred, ref):
        if not path.exists():
            raise InputError("file or folder not found", path=path)
    if pred.is_dir() != ref.is_dir():
        raise InputError("prediction and reference must both be files or both be folders", path=pred)
    if not pred.is_dir():
        return [(case_id_from_path(pred), pred, ref)], []
    preds, refs = _nifti_files(pred), _nifti_files(ref)
    orphans = sorted(set(preds) - set(refs))
    if orphans:
        raise InputError(
            f"prediction without a reference: {', '.join(orphans[:5])}{' ...' if len(orphans) > 5 else ''}",
            path=preds[orphans[0]],
            hint=f"add {orphans[0]}.nii.gz to {ref} or remove the prediction",
        )
    return [(c, preds[c], refs[c]) for c in sorted(preds)], sorted(set(refs) - set(preds))


def _resample_nearest(pred: np.ndarray, pred_grid: Grid, ref_grid: Grid) -> np.ndarray:
    vox = np.linalg.inv(pred_grid.affine) @ ref_grid.affine  # reference voxel -> prediction voxel
    return ndi.affine_transform(pred, vox[:3, :3], vox[:3, 3], output_shape=ref_grid.shape, order=0,
                                mode="constant", cval=0)


#: Input grids whose affines differ by at most this fraction of the smallest voxel spacing are the same grid
#: (float32 header noise, e.g. 0.00064 mm on 0.59 mm voxels); the difference is recorded in the summary.
#: medpipe's own outputs are held to the strict 1e-4 mm contract (medpipe.io.geometry) instead.
INPUT_GRID_REL_TOL = 0.01


def _load_pair(
    pred_path: Path, ref_path: Path, allowed: set[int] | None, resample: bool, differences: dict[str, float],
    case: str,
) -> tuple[np.ndarray, np.ndarray, Grid, bool]:
    ref, ref_info = load_label(ref_path, allowed)
    pred, pred_info = load_label(pred_path, allowed)
    ref_grid, pred_grid = Grid(ref.shape, ref_info.affine), Grid(pred.shape, pred_info.affine)  # type: ignore[arg-type]
    if grids_match(pred_grid, ref_grid):
        return pred, ref, ref_grid, False
    if grids_match(pred_grid, ref_grid, tol_mm=INPUT_GRID_REL_TOL * min(ref_grid.spacing_mm)):
        differences[case] = float(np.max(np.abs(pred_grid.affine - ref_grid.affine)))
        return pred, ref, ref_grid, False
    if not resample:
        raise GeometryError(
            f"prediction grid does not match its reference {ref_path.name}: {describe_mismatch(pred_grid, ref_grid)} "
            f"(inputs may differ by {INPUT_GRID_REL_TOL:.0%} of the smallest spacing, "
            f"{INPUT_GRID_REL_TOL * min(ref_grid.spacing_mm):.3g} mm)",
            path=pred_path,
            hint="predict on the reference grid, or pass --resample to resample it (nearest neighbour)",
        )
    return _resample_nearest(pred, pred_grid, ref_grid), ref, ref_grid, True


def _image_for(image: Path, case: str, single: bool) -> Path | None:
    if image.is_file():
        return image if single else None
    for name in (f"{case}.nii.gz", f"{case}.nii", f"{case}_0000.nii.gz", f"{case}_0000.nii"):
        if (image / name).is_file():
            return image / name
    return None


def evaluate(
    pred: Path,
    ref: Path,
    out_dir: Path | None = None,
    *,
    labels: dict[int, str] | None = None,
    preset: str = "default",
    image: Path | None = None,
    resample: bool = False,
    nsd_tolerance_mm: float | dict[int, float] | None = None,
    surface: str = "surfel",
    policy: EmptyPolicy | None = None,
    lesions: bool | None = None,
    detection: MatchRule | None = None,
    progress: Progress | None = None,
) -> EvaluationResult:
    """Score ``pred`` against ``ref`` (two NIfTI label maps, or two folders matched by case name).

    ``labels``: value -> name; with the ``default`` preset, ``None`` scores every non-zero value found in any
    case (a label absent from both maps of a case scores as "both empty"). Values outside ``labels`` (or the
    preset's label set) are an :class:`InputError` naming the file. ``preset``: ``default``, ``brats``
    (WT/TC/ET + lesion-wise) or ``kits`` (HECs). ``surface``: ``"surfel"`` (google-deepmind surface-distance,
    default) or ``"voxel"`` (MONAI). ``nsd_tolerance_mm``: one value, or per label id; default: the preset's.
    ``policy``: empty-mask values (default: the preset's). ``lesions``: lesion-wise scoring (default: on for
    ``brats``). Grids must match unless ``resample`` (nearest neighbour onto the reference grid). With
    ``out_dir``, writes ``metrics.csv``, ``summary.json``, ``report.html`` (and ``lesions.csv``) atomically,
    after all cases are scored. ``image``: a file or a folder of ``<case>.nii.gz``/``<case>_0000.nii.gz`` for
    tri-planar overlays in the report. ``detection``: lesion detection metrics and FROC per label under this
    matching rule (:mod:`medpipe.evaluation.detection`; scores from ``<case>.lesions.csv`` beside the
    predictions when they hold probabilities, else lesion volumes), written to ``detection.csv`` and the report.
    """
    chosen = get_preset(preset)
    if surface not in CONVENTIONS:
        raise ConfigError(f"unknown surface convention {surface!r}", hint=f"use one of {CONVENTIONS}")
    policy = policy or chosen.policy
    rule = chosen.lesion_rule if lesions is None or lesions else None
    if lesions and rule is None:
        rule = LesionRule()
    if out_dir is not None:
        ensure_writable_dir(out_dir)  # pre-flight before long work
    pairs, missing = match_cases(Path(pred), Path(ref))
    allowed = (set(labels) | {0}) if labels is not None else (set(chosen.allowed) if chosen.allowed else None)
    metrics = ("all", "lesions") if rule is not None else ("all",)
    rows: list[MetricRow] = []
    resampled: list[str] = []
    grid_differences: dict[str, float] = {}
    overlays: dict[str, bytes] = {}
    tolerances: dict[int, float] = {}
    no_image: list[str] = []
    names = {k: v for k, v in labels.items() if k != 0} if labels is not None else None
    found: list[DetectedLesion] = []
    listed = listed_scores(Path(pred) if Path(pred).is_dir() else Path(pred).parent,
                           [c for c, _, _ in pairs]) if detection is not None else None
    t0 = time.perf_counter()
    for i, (case, pred_path, ref_path) in enumerate(pairs):
        p, r, grid, was_resampled = _load_pair(pred_path, ref_path, allowed, resample, grid_differences, case)
        if was_resampled:
            resampled.append(case)
        present = set(np.unique(r).tolist()) | set(np.unique(p).tolist())
        regions = chosen.regions(present, names, path=pred_path)
        for region in regions:
            tolerances[region.id] = tolerance_for(region, nsd_tolerance_mm)
        rows += score_arrays(p, r, grid.spacing_mm, regions, metrics=metrics, case=case, policy=policy,
                             surface=surface, nsd_tolerance_mm=nsd_tolerance_mm, lesion_rule=rule)
        if detection is not None:
            found += [les for region in regions for les in detect_case(
                case, np.isin(p, region.values), np.isin(r, region.values), grid, region.id, region.name, detection,
                rows_for(listed[case], region.values) if listed is not None else None)]
        if image is not None:
            img_path = _image_for(Path(image), case, len(pairs) == 1)
            if img_path is None:
                no_image.append(case)
            else:
                from medpipe.evaluation.report import overlay_png

                overlays[case] = overlay_png(img_path, r, p, grid, regions)
        if progress is not None:
            progress(i + 1, len(pairs), case)
    if names is None and chosen.name == "default":
        empty = np.zeros((1, 1, 1), dtype=np.int32)

        def score_empty(case: str, region: Region) -> MetricRow:
            return score_arrays(empty, empty, (1.0, 1.0, 1.0), [region], metrics=metrics, case=case, policy=policy,
                                nsd_tolerance_mm=tolerances.get(region.id), lesion_rule=rule)[0]

        rows = _fill_absent(rows, [c for c, _, _ in pairs], score_empty)
    settings = EvaluationSettings(
        preset=chosen.name, preset_description=chosen.description, surface=surface, nsd_tolerance_mm=tolerances,
        empty_policy=policy, lesion_rule=rule, pred=str(pred), ref=str(ref),
        image=None if image is None else str(image), cases_without_image=tuple(no_image),
        seconds=round(time.perf_counter() - t0, 3),
        grid_differences_mm={c: round(d, 6) for c, d in grid_differences.items()},
        grid_tolerance_fraction=INPUT_GRID_REL_TOL,
    )
    result = EvaluationResult(
        rows=tuple(rows), summary=summarize(rows), cases=tuple(c for c, _, _ in pairs),
        missing_predictions=tuple(missing), resampled=tuple(resampled), settings=settings, overlays=overlays,
        detection=None if detection is None else summarize_detection(
            found, len(pairs), detection, SCORE_PROBABILITY if listed is not None else SCORE_VOLUME),
    )
    if out_dir is None:
        return result
    from medpipe.evaluation.report import write_report

    return write_report(result, Path(out_dir))


def _fill_absent(rows: list[MetricRow], cases: list[str], score: Callable[[str, Region], MetricRow]) -> list[MetricRow]:
    """Add "both empty" rows for labels found in some cases but absent from both maps of others."""
    seen = {(r.case, r.label) for r in rows}
    labels = sorted({r.label for r in rows})
    out = rows + [score(c, Region(v, "", (v,))) for c in cases for v in labels if (c, v) not in seen]
    order = {c: i for i, c in enumerate(cases)}
    return sorted(out, key=lambda r: (order[r.case], r.label))
