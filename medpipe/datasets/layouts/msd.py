"""Medical Segmentation Decathlon: ``dataset.json`` (``modality``, ``labels``, ``training``) + ``imagesTr/`` +
``labelsTr/``; multi-modal cases are one 4D file (I, J, K, C) whose channel count must equal ``len(modality)``."""

from __future__ import annotations

from pathlib import Path

from medpipe.datasets.layouts.base import Case, Dataset, Found, check_label_map, int_keyed, read_json, visible_nifti
from medpipe.errors import DatasetError
from medpipe.io.nifti import case_id_from_path


def looks_like(root: Path) -> bool:
    """``dataset.json`` without nnU-Net's ``channel_names``."""
    return (root / "dataset.json").is_file() and "channel_names" not in read_json(root / "dataset.json")


def discover(root: Path) -> Dataset:
    meta_path = root / "dataset.json"
    meta = read_json(meta_path)
    channel_names = tuple(v for _, v in int_keyed(meta.get("modality", {"0": "image"}), "modality", meta_path))
    labels = dict(int_keyed(meta.get("labels"), "labels", meta_path))
    check_label_map(labels, meta_path, consecutive=False)
    entries = meta.get("training")
    if not isinstance(entries, list):
        raise DatasetError("'training' must be a list of {image, label} entries", path=meta_path)
    f = Found()
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
    for extra in visible_nifti(root / "imagesTr"):
        if extra.name not in listed:
            f.warn("layout", case_id_from_path(extra), extra, "image in imagesTr is not listed in dataset.json")
    return Dataset(root, "msd", tuple(f.cases), channel_names, labels, issues=tuple(f.issues))
