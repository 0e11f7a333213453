"""nnU-Net v2 raw: ``dataset.json`` with ``channel_names``/``labels``/``file_ending`` and
``imagesTr/<case>_0000<ending>`` ... (one file per channel), ``labelsTr/<case><ending>``; label entries that are
lists define regions (nnU-Net region-based training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medpipe.datasets.layouts.base import Case, Dataset, Found, check_label_map, int_keyed, read_json, visible_nifti
from medpipe.errors import DatasetError
from medpipe.io.nifti import NIFTI_SUFFIXES


def looks_like(root: Path) -> bool:
    """``dataset.json`` with ``channel_names``."""
    return (root / "dataset.json").is_file() and "channel_names" in read_json(root / "dataset.json")


def nnunet_labels(raw: Any, path: Path) -> tuple[dict[int, str], dict[str, tuple[int, ...]]]:
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
        check_label_map(plain, path, consecutive=True)
        return plain, {}
    regions = {n: v for n, v in entries.items() if v != (0,)}
    values = sorted({v for vs in regions.values() for v in vs} - {0})
    labels = {0: "background", **{v: f"label_{v}" for v in values}}
    return labels, regions


def discover(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    channel_names = tuple(v for _, v in int_keyed(meta.get("channel_names"), "channel_names", meta_path))
    labels, regions = nnunet_labels(meta.get("labels"), meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    if ending not in NIFTI_SUFFIXES:
        raise DatasetError(f"file_ending {ending!r}: medpipe reads NIfTI (.nii.gz, .nii) only", path=meta_path)
    f = Found()
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    by_case: dict[str, set[int]] = {}
    for p in visible_nifti(images_dir):
        stem = p.name[: -len(ending)] if p.name.endswith(ending) else ""
        head, _, idx = stem.rpartition("_")
        if not head or len(idx) != 4 or not idx.isdigit():
            f.warn("layout", "", p, f"not named <case>_XXXX{ending}; ignored")
            continue
        by_case.setdefault(head, set()).add(int(idx))
    label_files = {p.name[: -len(ending)]: p for p in visible_nifti(labels_dir) if p.name.endswith(ending)}
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
