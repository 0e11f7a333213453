"""Dataset integrity check and fingerprint (``medpipe dataset check``), and the pre-flight before training.

Errors (training refuses): unreadable files, missing images/labels/modalities, channel counts that differ from
the layout, channels or label on a different grid than the image, label values outside the label map,
non-integer labels, NaN/Inf voxels, duplicate images. Warnings: spacing and orientation outliers, labels with
no foreground. The fingerprint (nnU-Net's idea) holds spacings, shapes, per-channel intensity statistics of
foreground voxels and class frequencies; :mod:`medpipe.datasets.plan` derives a configuration from it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.datasets.fingerprint import CaseFacts, Fingerprint, build_fingerprint
from medpipe.datasets.layouts import Case, Dataset, Issue, discover, raise_for
from medpipe.datasets.plausibility import LabelIntensity, grid_overlays, label_intensities, plausibility_issues
from medpipe.errors import InputError
from medpipe.io.atomic import write_json_atomic
from medpipe.io.geometry import Grid, describe_mismatch, grids_match
from medpipe.io.nifti import NiftiInfo, inspect_nifti, load_label, load_nifti

#: Foreground voxels sampled per case and channel for intensity statistics (nnU-Net samples 10 000).
FG_SAMPLES_PER_CASE = 10_000
#: A case whose spacing along an axis differs from the dataset median by more than this factor is an outlier.
SPACING_OUTLIER_FACTOR = 2.0
#: Image/label affines may differ by this much (mm) before the grids are said to disagree.
LABEL_GRID_TOL_MM = 1e-3


@dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check_dataset`: the dataset, every issue, per-case facts and the fingerprint."""

    dataset: Dataset
    issues: list[Issue]
    facts: list[CaseFacts]
    fingerprint: Fingerprint
    overrides: tuple[str, ...] = ()

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]


def _grid(info: NiftiInfo) -> Grid:
    return Grid((int(info.shape[0]), int(info.shape[1]), int(info.shape[2])), info.affine)


def _headers(case: Case, n_channels: int, issues: list[Issue]) -> tuple[list[NiftiInfo], Grid] | None:
    """Read and cross-check the image headers (channel count, channel grids)."""
    four_d = len(case.images) == 1 and n_channels > 1
    if len(case.images) > 1 and len(case.images) != n_channels:
        issues.append(Issue("error", "channels", case.case_id, str(case.images[0].parent),
                            f"{len(case.images)} channel files, expected {n_channels}"))
        return None
    infos = []
    for path in case.images:
        try:
            infos.append(inspect_nifti(path, allow_4d=four_d))
        except InputError as err:
            issues.append(Issue("error", "readable", case.case_id, str(path), err.message))
            return None
    if four_d and infos[0].n_channels != n_channels:
        found = f"{infos[0].n_channels} channels" if len(infos[0].shape) == 4 else "a 3D image"
        issues.append(Issue("error", "channels", case.case_id, str(case.images[0]),
                            f"{found} (shape {infos[0].shape}), expected {n_channels} channels"))
        return None
    ref = _grid(infos[0])
    for info in infos[1:]:
        if not grids_match(_grid(info), ref, tol_mm=LABEL_GRID_TOL_MM):
            why = describe_mismatch(_grid(info), ref)
            issues.append(Issue("error", "grid", case.case_id, str(info.path),
                                f"channel grid disagrees with {infos[0].path.name}: {why}"))
            return None
    return infos, ref


def _label(case: Case, ref: Grid, allowed: set[int] | None, issues: list[Issue]) -> np.ndarray | None:
    if case.label is None:
        return None
    try:
        info = inspect_nifti(case.label)
    except InputError as err:
        issues.append(Issue("error", "readable", case.case_id, str(case.label), err.message))
        return None
    if not grids_match(_grid(info), ref, tol_mm=LABEL_GRID_TOL_MM):
        issues.append(Issue("error", "grid", case.case_id, str(case.label),
                            f"label grid disagrees with the image: {describe_mismatch(_grid(info), ref)}"))
        return None
    notes: list[str] = []
    try:
        labels, _ = load_label(case.label, allowed, notes)
    except InputError as err:
        issues.append(Issue("error", "labels", case.case_id, str(case.label), err.message))
        return None
    issues += [Issue("warning", "labels", case.case_id, str(case.label), note) for note in notes]
    return labels


def inspect_case(case: Case, allowed: set[int] | None, n_channels: int, *, read_images: bool,
                 seed: int = 0, label_stats: dict[str, dict[int, LabelIntensity]] | None = None,
                 ) -> tuple[CaseFacts | None, list[Issue]]:
    """Check one case (headers, grids, labels; with ``read_images`` also voxels) and describe it. With
    ``label_stats``, the intensity under each label is stored there under the case id (plausibility check)."""
    issues: list[Issue] = []
    head = _headers(case, n_channels, issues)
    if head is None:
        return None, issues
    infos, ref = head
    facts = CaseFacts.from_grid(case.case_id, ref, n_channels)
    labels = _label(case, ref, allowed, issues)
    if labels is not None:
        values, counts = np.unique(labels, return_counts=True)
        facts.label_counts = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        if not any(v != 0 for v in facts.label_counts):
            issues.append(Issue("warning", "labels", case.case_id, str(case.label), "label has no foreground"))
    if not read_images:
        return facts, issues
    channels: list[np.ndarray] = []
    for info in infos:
        try:
            data, _ = load_nifti(info.path, allow_4d=len(info.shape) == 4)
        except InputError as err:
            issues.append(Issue("error", "finite", case.case_id, str(info.path), err.message))
            return facts, issues
        channels += [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
    digest = hashlib.sha256()
    for ch in channels:
        digest.update(np.ascontiguousarray(ch).tobytes())
    facts.image_sha256 = digest.hexdigest()
    if label_stats is not None and labels is not None:
        label_stats[case.case_id] = label_intensities(labels, channels[0])
    mask = labels > 0 if labels is not None and labels.any() else channels[0] != 0
    idx = np.flatnonzero(mask)
    if idx.size:
        rng = np.random.default_rng(seed)
        pick = rng.choice(idx, size=min(FG_SAMPLES_PER_CASE, idx.size), replace=False)
        facts.fg_samples = [ch.reshape(-1)[pick].astype(np.float32) for ch in channels]
    return facts, issues


def _thick_axis(spacing: tuple[float, ...]) -> int | None:
    """The RAS axis of the thickest spacing when it is clearly the thickest (1.5x the next), else None."""
    order = np.argsort(spacing)
    return int(order[-1]) if spacing[order[-1]] >= 1.5 * spacing[order[-2]] else None


def _outliers(facts: list[CaseFacts], root: Path) -> list[Issue]:
    """Spacing (per axis, vs the median) and orientation (vs the most common one) outliers: warnings."""
    if len(facts) < 3:
        return []
    out = []
    median = np.median(np.array([f.spacing_mm for f in facts]), axis=0)
    common, n_common = Counter(f.orientation for f in facts).most_common(1)[0]
    for f in facts:
        ratio = np.asarray(f.spacing_mm) / median
        if np.any(ratio > SPACING_OUTLIER_FACTOR) or np.any(ratio < 1 / SPACING_OUTLIER_FACTOR):
            out.append(Issue("warning", "spacing", f.case_id, str(root),
                             f"spacing {tuple(round(s, 3) for s in f.spacing_mm)} mm is far from the dataset median "
                             f"{tuple(round(float(s), 3) for s in median)} mm"))
        thick, usual = _thick_axis(f.spacing_mm), _thick_axis(tuple(median))
        if thick is not None and usual is not None and thick != usual:
            # Another voxel order alone is normal (medpipe reorients every case to RAS); it is suspicious when,
            # in RAS, the slice (thickest) axis lies elsewhere than in the other cases: a header may be wrong.
            out.append(Issue("warning", "orientation", f.case_id, str(root),
                             f"orientation {f.orientation} puts the thick-slice axis along RAS {'RAS'[thick]}, "
                             f"the dataset's along {'RAS'[usual]} ({n_common} of {len(facts)} cases are {common}); "
                             "look at it if its header may be wrong"))
    return out


def _duplicates(facts: list[CaseFacts], cases: dict[str, Case], allowed: bool = False) -> list[Issue]:
    first: dict[str, str] = {}
    out = []
    for f in facts:
        if not f.image_sha256:
            continue
        if f.image_sha256 in first:
            out.append(Issue("warning" if allowed else "error", "duplicate", f.case_id,
                             str(cases[f.case_id].images[0]),
                             f"same image voxels as case {first[f.image_sha256]} (train/validation leakage"
                             + ("; allowed with --allow-duplicates)" if allowed else
                                ", or pass --allow-duplicates if the copies are intended)")))
        else:
            first[f.image_sha256] = f.case_id
    return out


def run_checks(cases: list[Case], labels: dict[int, str] | None, n_channels: int, *, read_images: bool,
               workers: int | None = None, on_case: Callable[[str, int, int], None] | None = None,
               label_stats: dict[str, dict[int, LabelIntensity]] | None = None,
               ) -> tuple[list[CaseFacts], list[Issue]]:
    """Check ``cases`` in a thread pool (file reading and decompression release the GIL)."""
    allowed = set(labels) if labels is not None else None
    n = workers or min(8, os.cpu_count() or 1)
    results: list[tuple[CaseFacts | None, list[Issue]]] = []
    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        futures = [pool.submit(inspect_case, c, allowed, n_channels, read_images=read_images, seed=i,
                               label_stats=label_stats) for i, c in enumerate(cases)]
        for i, fut in enumerate(futures):
            results.append(fut.result())
            if on_case:
                on_case(cases[i].case_id, i + 1, len(cases))
    facts = [f for f, _ in results if f is not None]
    issues = [i for _, iss in results for i in iss]
    return facts, issues


def preflight(cases: list[Case], labels: dict[int, str], n_channels: int, root: Path | str,
              warnings: list[Issue] | None = None,
              on_case: Callable[[str, int, int], None] | None = None) -> list[CaseFacts]:
    """The check before training: headers, grids, label values and every image's voxels (NaN/Inf are refused,
    naming the case and file). One DatasetError lists every case that fails; the warnings ``dataset check``
    would give (empty labels, rounded label values, spacing/orientation outliers) are appended to ``warnings``.
    ``on_case(case_id, done, total)`` reports progress."""
    facts, issues = run_checks(cases, labels, n_channels, read_images=True, on_case=on_case)
    raise_for(issues, "found before training", root)
    if warnings is not None:
        warnings += [i for i in issues if i.severity == "warning"] + _outliers(facts, Path(root))
    return facts


def check_dataset(root: str | Path, fmt: str = "auto", *, labels: dict[int, str] | None = None,
                  channels: tuple[str, ...] | None = None, read_images: bool = True, workers: int | None = None,
                  on_case: Callable[[str, int, int], None] | None = None, allow_duplicates: bool = False,
                  qc_dir: Path | None = None) -> CheckReport:
    """Integrity report and fingerprint of a dataset. ``labels``/``channels`` (e.g. from a pipeline config)
    override what the layout declares. ``allow_duplicates``: identical images are warnings, not errors (the
    override is recorded in the report). ``qc_dir``: where overlay PNGs of implausible labels, and of labels whose
    grid disagrees with the image's, go."""
    ds = discover(root, fmt)
    label_map = labels if labels is not None else ds.labels
    names = channels if channels is not None else ds.channel_names
    stats: dict[str, dict[int, LabelIntensity]] = {}
    facts, issues = run_checks(list(ds.cases), label_map, len(names), read_images=read_images, workers=workers,
                               on_case=on_case, label_stats=stats)
    by_id = {c.case_id: c for c in ds.cases}
    issues = [*ds.issues, *grid_overlays(issues, by_id, qc_dir), *_outliers(facts, ds.root),
              *_duplicates(facts, by_id, allow_duplicates), *plausibility_issues(stats, by_id, qc_dir)]
    fingerprint = build_fingerprint(ds, facts, label_map, names, issues)
    return CheckReport(ds, issues, facts, fingerprint, ("allow_duplicates",) if allow_duplicates else ())


def save_fingerprint(report: CheckReport, path: str | Path) -> Path:
    """Write the fingerprint (with the issues) as JSON, atomically."""
    write_json_atomic(path, {**report.fingerprint.to_json(), "issues": [i.to_json() for i in report.issues],
                             "overrides": list(report.overrides)})
    return Path(path)
