"""Dataset layouts -> a list of cases; splits.

Layouts (``format``): ``kits`` (``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``), ``brats2023``
(``<case>/<case>-t1n|t1c|t2w|t2f|seg.nii.gz``), ``brats2021`` (``<case>/<case>_t1|t1ce|t2|flair|seg.nii.gz``),
``msd`` / ``nnunet`` (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``) and ``list`` (a CSV or JSON list of
image/label paths). ``auto`` detects the layout from the folder.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

from medpipe.errors import DatasetError
from medpipe.io.nifti import NIFTI_SUFFIXES, case_id_from_path

BRATS2023_CHANNELS = ("t1n", "t1c", "t2w", "t2f")
BRATS2021_CHANNELS = ("t1", "t1ce", "t2", "flair")
FORMATS = ("kits", "brats2023", "brats2021", "msd", "nnunet", "list")


@dataclass(frozen=True)
class Case:
    """One case: its channel images (in channel order) and its label map (None for unlabelled cases)."""

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
    """Cases of one dataset, with what the layout says about channels and labels."""

    root: Path
    format: str
    cases: tuple[Case, ...]
    channel_names: tuple[str, ...]
    labels: dict[int, str] | None


def _nifti_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in NIFTI_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def detect_format(root: Path) -> str:
    """Guess the layout of ``root`` from its files."""
    if (root / "dataset.json").is_file():
        meta = _read_json(root / "dataset.json")
        return "nnunet" if "channel_names" in meta else "msd"
    if root.is_file() and root.suffix in (".csv", ".json"):
        return "list"
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    for sub in subdirs[:5]:
        if _find(sub, "imaging") is not None:
            return "kits"
        if _find(sub, f"{sub.name}-t1n") is not None:
            return "brats2023"
        if _find(sub, f"{sub.name}_t1ce") is not None or _find(sub, f"{sub.name}_flair") is not None:
            return "brats2021"
    raise DatasetError(
        "cannot tell the dataset layout", path=root, hint="expected one of " + ", ".join(FORMATS) + "; pass --format"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"unreadable JSON ({err})", path=path) from err
    if not isinstance(data, dict):
        raise DatasetError("expected a JSON object", path=path)
    return data


def _kits(root: Path) -> Dataset:
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("case_")):
        image = _find(sub, "imaging")
        if image is None:
            raise DatasetError("case folder has no imaging.nii.gz", path=sub)
        cases.append(Case(sub.name, (image,), _find(sub, "segmentation")))
    return Dataset(root, "kits", tuple(cases), ("CT",), {0: "background", 1: "kidney", 2: "tumor"})


def _brats(root: Path, fmt: str) -> Dataset:
    channels = BRATS2023_CHANNELS if fmt == "brats2023" else BRATS2021_CHANNELS
    sep = "-" if fmt == "brats2023" else "_"
    labels = (
        {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"}
        if fmt == "brats2023"
        else {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}
    )
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = [_find(sub, f"{sub.name}{sep}{c}") for c in channels]
        missing = [c for c, p in zip(channels, found) if p is None]
        if len(missing) == len(channels):
            continue
        if missing:
            raise DatasetError(
                f"case {sub.name}: missing modalities {missing}, expected all of {list(channels)}", path=sub
            )
        cases.append(Case(sub.name, tuple(p for p in found if p is not None), _find(sub, f"{sub.name}{sep}seg")))
    return Dataset(root, fmt, tuple(cases), channels, labels)


def _decathlon(root: Path, fmt: str) -> Dataset:
    meta = _read_json(root / "dataset.json")
    raw_labels = meta.get("labels", {})
    if fmt == "nnunet":
        channel_names = tuple(str(v) for _, v in sorted(meta.get("channel_names", {}).items(), key=lambda kv: int(kv[0])))
        labels = {int(v): str(k) for k, v in raw_labels.items() if isinstance(v, int)}
        ending = str(meta.get("file_ending", ".nii.gz"))
        cases = []
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        for lab in sorted(labels_dir.glob(f"*{ending}")):
            cid = lab.name[: -len(ending)]
            imgs = tuple(images_dir / f"{cid}_{i:04d}{ending}" for i in range(len(channel_names)))
            absent = [p.name for p in imgs if not p.is_file()]
            if absent:
                raise DatasetError(f"case {cid}: missing channel files {absent}", path=images_dir)
            cases.append(Case(cid, imgs, lab))
    else:
        modality = meta.get("modality", {"0": "image"})
        channel_names = tuple(str(v) for _, v in sorted(modality.items(), key=lambda kv: int(kv[0])))
        labels = {int(k): str(v) for k, v in raw_labels.items()}
        cases = []
        for entry in meta.get("training", []):
            image, label = root / entry["image"], root / entry["label"]
            cases.append(Case(case_id_from_path(image), (image,), label))
    return Dataset(root, fmt, tuple(cases), channel_names, labels or None)


def _listed(path: Path) -> Dataset:
    rows: list[dict[str, str]]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("cases", [])
    else:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    cases = []
    for i, row in enumerate(rows):
        if "image" not in row:
            raise DatasetError(f"row {i + 1} has no 'image' column", path=path)
        images = tuple((path.parent / p.strip()).resolve() for p in str(row["image"]).split(";"))
        label = (path.parent / row["label"]).resolve() if row.get("label") else None
        cases.append(Case(str(row.get("case_id") or case_id_from_path(images[0])), images, label))
    n = len(cases[0].images) if cases else 1
    return Dataset(path, "list", tuple(cases), tuple(f"ch{i}" for i in range(n)), None)


def load_dataset(root: str | Path, fmt: str = "auto") -> Dataset:
    """Discover the cases of a dataset folder (or list file) in the given or detected layout."""
    root = Path(root)
    if not root.exists():
        raise DatasetError("dataset folder not found", path=root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "kits":
        ds = _kits(root)
    elif fmt in ("brats2023", "brats2021"):
        ds = _brats(root, fmt)
    elif fmt in ("msd", "nnunet"):
        ds = _decathlon(root, fmt)
    elif fmt == "list":
        ds = _listed(root)
    else:
        raise DatasetError(f"unknown dataset format '{fmt}'", path=root, hint="one of " + ", ".join(FORMATS))
    if not ds.cases:
        raise DatasetError(f"no cases found ({fmt} layout)", path=root)
    return ds


def split_cases(
    cases: tuple[Case, ...] | list[Case], val_fraction: float, seed: int
) -> tuple[list[Case], list[Case]]:
    """A seeded train/validation split of the labelled cases (at least one case on each side)."""
    labelled = sorted((c for c in cases if c.label is not None), key=lambda c: c.case_id)
    if len(labelled) < 2:
        raise DatasetError(f"need at least 2 labelled cases to train and validate, found {len(labelled)}")
    order = list(labelled)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    val = sorted(order[:n_val], key=lambda c: c.case_id)
    train = sorted(order[n_val:], key=lambda c: c.case_id)
    return train, val
