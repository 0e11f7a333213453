"""Dataset layouts -> cases, with every discovery problem recorded (not only the first).

A registry (:data:`LAYOUTS`): one module per layout, each with ``looks_like(root)`` and ``discover(root)``; the
format list and detection order are derived from it.

Layouts (``format``):

- ``msd``: ``dataset.json`` (``modality``, ``labels``, ``training``) + ``imagesTr/`` + ``labelsTr/``; multi-modal
  cases are one 4D file (I, J, K, C) whose channel count must equal ``len(modality)``.
- ``nnunet``: nnU-Net v2 raw, ``dataset.json`` with ``channel_names``/``labels``/``file_ending`` and
  ``imagesTr/<case>_0000<ending>`` ... (one file per channel), ``labelsTr/<case><ending>``; label entries that are
  lists define regions (nnU-Net region-based training).
- ``brats2021``: ``<case>/<case>_t1|_t1ce|_t2|_flair|_seg.nii.gz``, labels {1, 2, 4}.
- ``brats2023`` (also 2024+): ``<case>/<case>-t1n|-t1c|-t2w|-t2f|-seg.nii.gz``, labels {1, 2, 3}.
- ``kits`` (KiTS19/21/23): ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``; labels 1 kidney, 2 tumor,
  3 cyst (KiTS21+; KiTS19 simply has no 3).
- ``list``: a CSV (``image`` with channels separated by ``;``, ``label``, optional ``case_id``) or JSON (a list, or
  ``{"cases": [...]}`` / ``{"training": [...]}`` of ``{"image": path | [paths], "label": path}``); relative paths
  are relative to the list file.

``auto`` detects the layout. Discovery never reads voxels; :mod:`medpipe.datasets.check` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medpipe.datasets.layouts import brats, kits, listed, msd, nnunet
from medpipe.datasets.layouts.base import SHOWN_PROBLEMS, Case, Dataset, Issue, raise_for, read_json
from medpipe.datasets.layouts.brats import BRATS2021_CHANNELS, BRATS2023_CHANNELS
from medpipe.errors import DatasetError

__all__ = ["BRATS2021_CHANNELS", "BRATS2023_CHANNELS", "FORMATS", "LAYOUTS", "SHOWN_PROBLEMS", "Case", "Dataset",
           "Issue", "Layout", "detect_format", "discover", "load_dataset", "raise_for", "read_json"]


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how to recognise it and how to walk it."""

    name: str
    looks_like: Callable[[Path], bool]
    discover: Callable[[Path], Dataset]


#: Every layout, in detection order (a list file first, then ``dataset.json`` layouts, then folder layouts).
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("list", listed.looks_like, listed.discover),
        Layout("nnunet", nnunet.looks_like, nnunet.discover),
        Layout("msd", msd.looks_like, msd.discover),
        Layout("kits", kits.looks_like, kits.discover),
        Layout("brats2023", brats.looks_like_2023, brats.discover_2023),
        Layout("brats2021", brats.looks_like_2021, brats.discover_2021),
    )
}
FORMATS = ("kits", "brats2023", "brats2021", "msd", "nnunet", "list")


def detect_format(root: Path) -> str:
    """Guess the layout of ``root`` from its files (the first layout of :data:`LAYOUTS` that recognises it)."""
    if root.is_file() and root.suffix not in (".csv", ".json"):
        raise DatasetError("a dataset is a folder or a .csv/.json list of cases", path=root)
    for layout in LAYOUTS.values():
        if layout.looks_like(root):
            return layout.name
    what = "empty folder" if root.is_dir() and not any(root.iterdir()) else "cannot tell the dataset layout"
    raise DatasetError(what, path=root, hint="expected one of " + ", ".join(FORMATS) + " (or pass --format)")


def _duplicate_ids(ds: Dataset) -> list[Issue]:
    seen: dict[str, Case] = {}
    out = []
    for c in ds.cases:
        if c.case_id in seen:
            out.append(Issue("error", "duplicate", c.case_id, str(c.images[0]),
                             f"case id also used by {seen[c.case_id].images[0]}"))
        seen[c.case_id] = c
    return out


def discover(root: str | Path, fmt: str = "auto") -> Dataset:
    """Walk a dataset folder (or list file) in the given or detected layout; problems are recorded in
    ``Dataset.issues``, not raised (use :func:`load_dataset` for a dataset that must be clean)."""
    root = Path(root)
    if not root.exists():
        raise DatasetError("dataset folder not found", path=root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt != "list" and not root.is_dir():
        raise DatasetError(f"the {fmt} layout is a folder", path=root)
    layout = LAYOUTS.get(fmt)
    if layout is None:
        raise DatasetError(f"unknown dataset format '{fmt}'", path=root, hint="one of auto, " + ", ".join(FORMATS))
    ds = layout.discover(root)
    dupes = _duplicate_ids(ds)
    if dupes:
        ds = Dataset(ds.root, ds.format, ds.cases, ds.channel_names, ds.labels, ds.regions, (*ds.issues, *dupes))
    if not ds.cases and not ds.errors:
        raise DatasetError(f"empty dataset: no cases found ({fmt} layout)", path=root)
    return ds


def load_dataset(root: str | Path, fmt: str = "auto") -> Dataset:
    """Discover the cases of a dataset; :class:`DatasetError` listing every discovery problem (missing images,
    labels or modalities, counts that differ from ``dataset.json``, duplicate case ids)."""
    ds = discover(root, fmt)
    raise_for(ds.issues, "in the dataset layout", ds.root)
    return ds
