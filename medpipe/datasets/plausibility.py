"""Label/image plausibility across a dataset (BAD-INPUTS L6): a label map flipped against its image, or saved
for another image, puts the label over tissue of another intensity. For every label, the median image
intensity under it is compared across cases; a case far from the others is a warning that names the case, the
label and the numbers, with a tri-planar overlay PNG to look at.

Intensities are first normalised per case (minus the median, over the standard deviation, of the case's non-zero
voxels), so that MR cases with different global scales compare. Rule: with ``m_c`` the normalised median of
channel 0 under the label in case ``c``, ``M`` the median of the ``m_c`` and ``s`` the median within-case
standard deviation under the label, case ``c`` is an outlier when
``|m_c - M| > OUTLIER_SPREADS * max(1.4826 * MAD(m), s / 2)``. At least :data:`MIN_CASES` cases are needed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medpipe.datasets.layouts import Case, Issue
from medpipe.io.atomic import write_bytes_atomic

#: Fewer cases than this with a label: no comparison for that label.
MIN_CASES = 4
#: How many spreads away from the dataset's median a case must be to be named.
OUTLIER_SPREADS = 3.0


@dataclass(frozen=True)
class LabelIntensity:
    """Intensity of channel 0 under one label of one case: median and standard deviation (case-normalised),
    the raw median (image units, e.g. HU), voxel count."""

    median: float
    std: float
    n_voxels: int
    raw_median: float


def label_intensities(labels: np.ndarray, image: np.ndarray) -> dict[int, LabelIntensity]:
    """Per foreground label value: the intensity statistics of ``image`` (I, J, K) under it."""
    out: dict[int, LabelIntensity] = {}
    body = image[image != 0] if np.any(image != 0) else image.reshape(-1)
    centre, scale = float(np.median(body)), max(float(body.std()), 1e-6)
    for value in np.unique(labels):
        if value == 0:
            continue
        under = image[labels == value]
        med = float(np.median(under))
        out[int(value)] = LabelIntensity((med - centre) / scale, float(under.std()) / scale, int(under.size), med)
    return out


def plausibility_issues(stats: dict[str, dict[int, LabelIntensity]], cases: dict[str, Case],
                        qc_dir: Path | None = None) -> list[Issue]:
    """Warnings for cases whose intensity under a label is far from the other cases' (see the module rule).
    With ``qc_dir``, an overlay PNG ``<case>_label<value>.png`` is written there for each of them."""
    issues: list[Issue] = []
    values = sorted({v for per_case in stats.values() for v in per_case})
    for value in values:
        have = {cid: s[value] for cid, s in stats.items() if value in s}
        if len(have) < MIN_CASES:
            continue
        medians = np.array([s.median for s in have.values()])
        centre = float(np.median(medians))
        raw_centre = float(np.median([s.raw_median for s in have.values()]))
        mad = float(np.median(np.abs(medians - centre)))
        scale = max(1.4826 * mad, 0.5 * float(np.median([s.std for s in have.values()])), 1e-6)
        for cid, s in have.items():
            if abs(s.median - centre) <= OUTLIER_SPREADS * scale:
                continue
            case = cases[cid]
            where = ""
            if qc_dir is not None and case.label is not None:
                png = Path(qc_dir) / f"{cid}_label{value}.png"
                write_bytes_atomic(png, overlay_png(case.images[0], case.label, value))
                where = f"; overlay: {png}"
            issues.append(Issue(
                "warning", "plausibility", cid, str(case.label),
                f"median intensity under label {value} is {s.raw_median:.3g}, the dataset's is {raw_centre:.3g} "
                f"({abs(s.median - centre) / scale:.1f} spreads away after per-case normalisation): is the label "
                f"flipped or from another image?{where}"))
    return issues


def grid_overlays(issues: list[Issue], cases: dict[str, Case], qc_dir: Path | None) -> list[Issue]:
    """``issues`` with an overlay PNG ``<case>_grid.png`` named in each label-grid error whose label has the
    image's shape (BAD-INPUTS S3): the label drawn voxel for voxel over the image, for a reviewer to judge whether
    the label or its header is wrong. Other issues, and every issue without ``qc_dir``, are returned unchanged."""
    if qc_dir is None:
        return issues
    out = []
    for issue in issues:
        case = cases.get(issue.case_id)
        if (issue.check == "grid" and case is not None and case.label is not None and issue.path == str(case.label)
                and case.images):
            try:
                label = cast(nib.Nifti1Image, nib.load(str(case.label)))
                image = cast(nib.Nifti1Image, nib.load(str(case.images[0])))
                same_shape = tuple(label.shape[:3]) == tuple(image.shape[:3])
                values = np.unique(np.asanyarray(label.dataobj)) if same_shape else np.array([])
            except (OSError, ValueError, EOFError, ImageFileError):  # refused already: the error stands alone
                same_shape = False
            foreground = [int(v) for v in values if v != 0] if same_shape else []
            if foreground:
                png = Path(qc_dir) / f"{issue.case_id}_grid.png"
                write_bytes_atomic(png, overlay_png(case.images[0], case.label, foreground[0]))
                issue = replace(issue, message=f"{issue.message}; overlay (voxel for voxel): {png}")
        out.append(issue)
    return out


def overlay_png(image_path: Path, label_path: Path, value: int) -> bytes:
    """Three orthogonal slices through the label's centre: the image in grey, the label's outline in red."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    image = np.asanyarray(cast(nib.Nifti1Image, nib.load(str(image_path))).dataobj, dtype=np.float32)
    if image.ndim == 4:
        image = image[..., 0]
    mask = np.asanyarray(cast(nib.Nifti1Image, nib.load(str(label_path))).dataobj) == value
    centre = [int(np.rint(c)) for c in np.argwhere(mask).mean(axis=0)] if mask.any() else [s // 2 for s in mask.shape]
    lo, hi = np.percentile(image, [1, 99])
    fig = Figure(figsize=(9, 3), dpi=80)
    FigureCanvasAgg(fig)
    for k in range(3):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(np.take(image, centre[k], axis=k).T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        sl = np.take(mask, centre[k], axis=k).T
        if sl.any() and not sl.all():
            ax.contour(sl.astype(float), levels=[0.5], colors="red", linewidths=1)
        ax.set_axis_off()
    fig.suptitle(f"label {value} over {image_path.name}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
