"""Dataset layouts -> cases, with every discovery problem recorded (not only the first).

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

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import DatasetError
from medpipe.io.nifti import NIFTI_SUFFIXES, case_id_from_path

BRATS2023_CHANNELS = ("t1n", "t1c", "t2w", "t2f")
BRATS2021_CHANNELS = ("t1", "t1ce", "t2", "flair")
BRATS2023_LABELS = {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"}
BRATS2021_LABELS = {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}
KITS_LABELS = {0: "background", 1: "kidney", 2: "tumor", 3: "cyst"}
FORMATS = ("kits", "brats2023", "brats2021", "msd", "nnunet", "list")
#: How many problems an exception message lists before "... and N more".
SHOWN_PROBLEMS = 12


@dataclass(frozen=True)
class Issue:
    """One problem found in a dataset. ``severity`` is "error" (training refuses) or "warning"."""

    severity: str
    check: str
    case_id: str
    path: str
    message: str

    def __str__(self) -> str:
        who = f"case {self.case_id}: " if self.case_id else ""
        return f"{self.path}: {who}{self.message}"

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "check": self.check, "case": self.case_id, "path": self.path,
                "message": self.message}


@dataclass(frozen=True)
class Case:
    """One case: its channel images (in channel order, or one 4D file) and its label map (None if unlabelled)."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None

    def as_dict(self) -> dict[str, object]:
        """The MONAI-style data dict: ``image`` (path or list of paths), ``label``, ``case_id``."""
        image: object = str(self.images[0]) if len(self.images) == 1 else [str(p) for p in self.images]
        out: dict[str, object] = {"image": image, "case_id": self.case_id}
        if self.label is not None:
            out["label"] = str(self.label)
        return out


@dataclass(frozen=True)
class Dataset:
    """Cases of one dataset, what the layout says about channels, labels and regions, and discovery issues."""

    root: Path
    format: str
    cases: tuple[Case, ...]
    channel_names: tuple[str, ...]
    labels: dict[int, str] | None
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    issues: tuple[Issue, ...] = ()

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]


class _Found:
    """Collects cases and issues while a layout is walked."""

    def __init__(self) -> None:
        self.cases: list[Case] = []
        self.issues: list[Issue] = []

    def error(self, check: str, case_id: str, path: Path, message: str) -> None:
        self.issues.append(Issue("error", check, case_id, str(path), message))

    def warn(self, check: str, case_id: str, path: Path, message: str) -> None:
        self.issues.append(Issue("warning", check, case_id, str(path), message))


def _visible_nifti(folder: Path) -> list[Path]:
    """NIfTI files of a folder, without hidden files (MSD archives carry macOS ``._*`` companions)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.endswith(NIFTI_SUFFIXES))


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`DatasetError` naming the file when it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"unreadable JSON ({err})", path=path, hint="fix the file's syntax") from err
    if not isinstance(data, dict):
        raise DatasetError(f"expected a JSON object, found {type(data).__name__}", path=path)
    return data


def detect_format(root: Path) -> str:
    """Guess the layout of ``root`` from its files."""
    if root.is_file():
        if root.suffix in (".csv", ".json"):
            return "list"
        raise DatasetError("a dataset is a folder or a .csv/.json list of cases", path=root)
    if (root / "dataset.json").is_file():
        meta = read_json(root / "dataset.json")
        return "nnunet" if "channel_names" in meta else "msd"
    subdirs = _subdirs(root)
    for sub in subdirs:
        if _find(sub, "imaging") is not None:
            return "kits"
        names = {case_id_from_path(p) for p in _visible_nifti(sub)}
        if any(f"{sub.name}-{c}" in names for c in (*BRATS2023_CHANNELS, "seg")):
            return "brats2023"
        if any(f"{sub.name}_{c}" in names for c in (*BRATS2021_CHANNELS, "seg")):
            return "brats2021"
    what = "empty folder" if not any(root.iterdir()) else "cannot tell the dataset layout"
    raise DatasetError(what, path=root, hint="expected one of " + ", ".join(FORMATS) + " (or pass --format)")


def _kits(root: Path) -> Dataset:
    f = _Found()
    for sub in _subdirs(root):
        image = _find(sub, "imaging")
        if image is None:
            if sub.name.startswith("case_"):
                f.error("missing", sub.name, sub, "no imaging.nii.gz")
            continue
        label = _find(sub, "segmentation")
        if label is None:
            f.error("missing", sub.name, sub, "no segmentation.nii.gz (label missing)")
        f.cases.append(Case(sub.name, (image,), label))
    return Dataset(root, "kits", tuple(f.cases), ("CT",), dict(KITS_LABELS), issues=tuple(f.issues))


def _brats(root: Path, fmt: str) -> Dataset:
    channels = BRATS2023_CHANNELS if fmt == "brats2023" else BRATS2021_CHANNELS
    sep = "-" if fmt == "brats2023" else "_"
    f = _Found()
    for sub in _subdirs(root):
        found = [_find(sub, f"{sub.name}{sep}{c}") for c in channels]
        label = _find(sub, f"{sub.name}{sep}seg")
        missing = [c for c, p in zip(channels, found, strict=True) if p is None]
        if len(missing) == len(channels) and label is None:
            f.warn("layout", sub.name, sub, f"folder holds no {fmt} files; ignored")
            continue
        if missing:
            f.error("channels", sub.name, sub, f"{len(channels) - len(missing)} of {len(channels)} modalities: "
                    f"missing {', '.join(f'{sub.name}{sep}{c}.nii.gz' for c in missing)}")
            continue
        if label is None:
            f.error("missing", sub.name, sub, f"no {sub.name}{sep}seg.nii.gz (label missing)")
        f.cases.append(Case(sub.name, tuple(p for p in found if p is not None), label))
    labels = BRATS2023_LABELS if fmt == "brats2023" else BRATS2021_LABELS
    return Dataset(root, fmt, tuple(f.cases), channels, dict(labels), issues=tuple(f.issues))


def _int_keyed(mapping: Any, key: str, path: Path) -> list[tuple[int, str]]:
    if not isinstance(mapping, dict) or not mapping:
        raise DatasetError(f"'{key}' must be a non-empty object", path=path)
    try:
        return sorted((int(k), str(v)) for k, v in mapping.items())
    except ValueError as err:
        raise DatasetError(f"'{key}' keys must be integers, found {sorted(mapping)}", path=path) from err


def _check_label_map(labels: dict[int, str], path: Path, consecutive: bool) -> None:
    """S7: background present, no duplicate names, (nnU-Net) consecutive values."""
    values = sorted(labels)
    if 0 not in labels:
        raise DatasetError(f"label map has no background (0): {labels}", path=path)
    names = [n.lower() for n in labels.values()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"label map names {dupes} more than once", path=path)
    if consecutive and values != list(range(len(values))):
        raise DatasetError(f"label values must be consecutive 0..{len(values) - 1}, found {values}", path=path,
                           hint="nnU-Net requires consecutive labels")


def _msd(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    channel_names = tuple(v for _, v in _int_keyed(meta.get("modality", {"0": "image"}), "modality", meta_path))
    labels = dict(_int_keyed(meta.get("labels"), "labels", meta_path))
    _check_label_map(labels, meta_path, consecutive=False)
    entries = meta.get("training")
    if not isinstance(entries, list):
        raise DatasetError("'training' must be a list of {image, label} entries", path=meta_path)
    f = _Found()
    listed: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            f.error("layout", "", meta_path, f"training entry {i} has no 'image'")
            continue
        image = (root / str(entry["image"])).resolve()
        cid = case_id_from_path(image)
        listed.add(image.name)
        label = (root / str(entry["label"])).resolve() if entry.get("label") else None
        if not image.is_file():
            f.error("missing", cid, image, "image listed in dataset.json does not exist")
            continue
        if label is None or not label.is_file():
            f.error("missing", cid, label or meta_path, "label missing" if label else "entry has no 'label'")
            label = None
        f.cases.append(Case(cid, (image,), label))
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(entries):
        f.error("missing", "", meta_path, f"numTraining is {declared} but 'training' lists {len(entries)} cases")
    for extra in _visible_nifti(root / "imagesTr"):
        if extra.name not in listed:
            f.warn("layout", case_id_from_path(extra), extra, "image in imagesTr is not listed in dataset.json")
    return Dataset(root, "msd", tuple(f.cases), channel_names, labels, issues=tuple(f.issues))


def _nnunet_labels(raw: Any, path: Path) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
    """nnU-Net v2 ``labels``: name -> value; when any entry is a list of values the dataset is region-based and
    every foreground entry is a region (in the file's order, as nnU-Net's ``regions_class_order`` expects)."""
    if not isinstance(raw, dict) or not raw:
        raise DatasetError("'labels' must be a non-empty object of name: value", path=path)
    entries: dict[str, tuple[int, ...]] = {}
    for name, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            entries[str(name)] = (value,)
        elif isinstance(value, list | tuple) and value and all(isinstance(v, int) for v in value):
            entries[str(name)] = tuple(int(v) for v in value)
        else:
            raise DatasetError(f"label '{name}': expected an integer or a list of integers, found {value!r}",
                               path=path)
    if all(len(v) == 1 for v in entries.values()):
        plain: dict[int, str] = {}
        for name, (value,) in entries.items():
            if value in plain:
                raise DatasetError(f"label value {value} is given to both '{plain[value]}' and '{name}'", path=path)
            plain[value] = name
        _check_label_map(plain, path, consecutive=True)
        return plain, {}
    regions = {n: v for n, v in entries.items() if v != (0,)}
    values = sorted({v for vs in regions.values() for v in vs} - {0})
    labels = {0: "background", **{v: f"label_{v}" for v in values}}
    return labels, regions


def _nnunet(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    channel_names = tuple(v for _, v in _int_keyed(meta.get("channel_names"), "channel_names", meta_path))
    labels, regions = _nnunet_labels(meta.get("labels"), meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending not in NIFTI_SUFFIXES:
        raise DatasetError(f"file_ending {ending!r}: medpipe reads NIfTI (.nii.gz, .nii) only", path=meta_path)
    f = _Found()
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    by_case: dict[str, set[int]] = {}
    for p in _visible_nifti(images_dir):
        stem = p.name[: -len(ending)] if p.name.endswith(ending) else ""
        head, _, idx = stem.rpartition("_")
        if not head or len(idx) != 4 or not idx.isdigit():
            f.warn("layout", "", p, f"not named <case>_XXXX{ending}; ignored")
            continue
        by_case.setdefault(head, set()).add(int(idx))
    label_files = {p.name[: -len(ending)]: p for p in _visible_nifti(labels_dir) if p.name.endswith(ending)}
    want = set(range(len(channel_names)))
    for cid in sorted(by_case):
        missing = sorted(want - by_case[cid])
        if missing:
            names = ", ".join(f"{cid}_{i:04d}{ending}" for i in missing)
            f.error("channels", cid, images_dir, f"{len(want) - len(missing)} of {len(want)} channels: missing {names}")
            continue
        label = label_files.get(cid)
        if label is None:
            f.error("missing", cid, labels_dir, f"no {cid}{ending} (label missing)")
        f.cases.append(Case(cid, tuple(images_dir / f"{cid}_{i:04d}{ending}" for i in range(len(want))), label))
    for cid, path in sorted(label_files.items()):
        if cid not in by_case:
            f.error("missing", cid, path, "label without image")
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(by_case):
        f.error("missing", "", meta_path, f"numTraining is {declared} but imagesTr holds {len(by_case)} cases")
    return Dataset(root, "nnunet", tuple(f.cases), channel_names, labels, regions, tuple(f.issues))


def _list_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"unreadable JSON ({err})", path=path) from err
        if isinstance(data, dict):
            data = data.get("cases", data.get("training"))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DatasetError("expected a list of {image, label} objects (or {\"cases\": [...]})", path=path)
        return data
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"unreadable CSV ({err})", path=path) from err


def _listed(path: Path) -> Dataset:
    f = _Found()
    n_channels: int | None = None
    for i, row in enumerate(_list_rows(path)):
        raw = row.get("image")
        if not raw:
            f.error("layout", "", path, f"row {i + 1} has no 'image'")
            continue
        parts = raw if isinstance(raw, list) else str(raw).split(";")
        images = tuple((path.parent / str(p).strip()).resolve() for p in parts)
        cid = str(row.get("case_id") or case_id_from_path(images[0]))
        label = (path.parent / str(row["label"]).strip()).resolve() if row.get("label") else None
        absent = [p for p in (*images, *([label] if label else [])) if not p.is_file()]
        if absent:
            f.error("missing", cid, absent[0], "listed file does not exist")
            continue
        if label is None:
            f.error("missing", cid, path, f"row {i + 1} has no label")
        if n_channels is not None and len(images) != n_channels:
            f.error("channels", cid, path, f"{len(images)} channel files, other rows have {n_channels}")
            continue
        n_channels = len(images)
        f.cases.append(Case(cid, images, label))
    names = tuple(f"ch{i}" for i in range(n_channels or 1))
    cases = f.cases
    stems = [c.case_id for c in cases]
    parents = [c.images[0].parent.name for c in cases]
    if len(set(stems)) < len(stems) and len(set(parents)) == len(parents):  # KiTS-like: every file imaging.nii.gz
        cases = [Case(p, c.images, c.label) if c.case_id == case_id_from_path(c.images[0]) else c
                 for c, p in zip(cases, parents, strict=True)]
    return Dataset(path, "list", tuple(cases), names, None, issues=tuple(f.issues))


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
    if fmt == "kits":
        ds = _kits(root)
    elif fmt in ("brats2023", "brats2021"):
        ds = _brats(root, fmt)
    elif fmt == "msd":
        ds = _msd(root)
    elif fmt == "nnunet":
        ds = _nnunet(root)
    elif fmt == "list":
        ds = _listed(root)
    else:
        raise DatasetError(f"unknown dataset format '{fmt}'", path=root, hint="one of auto, " + ", ".join(FORMATS))
    dupes = _duplicate_ids(ds)
    if dupes:
        ds = Dataset(ds.root, ds.format, ds.cases, ds.channel_names, ds.labels, ds.regions, (*ds.issues, *dupes))
    if not ds.cases and not ds.errors:
        raise DatasetError(f"empty dataset: no cases found ({fmt} layout)", path=root)
    return ds


def raise_for(issues: list[Issue] | tuple[Issue, ...], what: str, path: Path | str) -> None:
    """Raise one :class:`DatasetError` listing the errors among ``issues`` (none: return)."""
    errors = [i for i in issues if i.severity == "error"]
    if not errors:
        return
    lines = [f"  - {i}" for i in errors[:SHOWN_PROBLEMS]]
    if len(errors) > SHOWN_PROBLEMS:
        lines.append(f"  ... and {len(errors) - SHOWN_PROBLEMS} more (run `medpipe dataset check`)")
    noun = "problem" if len(errors) == 1 else "problems"
    raise DatasetError(f"{len(errors)} {noun} {what}:\n" + "\n".join(lines), path=path)


def load_dataset(root: str | Path, fmt: str = "auto") -> Dataset:
    """Discover the cases of a dataset; :class:`DatasetError` listing every discovery problem (missing images,
    labels or modalities, counts that differ from ``dataset.json``, duplicate case ids)."""
    ds = discover(root, fmt)
    raise_for(ds.issues, "in the dataset layout", ds.root)
    return ds
