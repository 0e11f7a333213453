"""The one home of label semantics: label maps, regions (nnU-Net-style sigmoid outputs) and their decoding, the
label conventions of the public datasets (KiTS, BraTS) with the regions their challenges score, and the label table
(names, SNOMED CT codes, colours) that DICOM outputs describe their segments with.

Tensor functions use tensor methods only, so this module imports no torch and stays cheap to import.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from medpipe.config import PipelineConfig


# --- Label conventions of public datasets, and the regions their challenges score -----------------------------------

#: KiTS19/21/23 (``segmentation.nii.gz``).
KITS_LABELS = {0: "background", 1: "kidney", 2: "tumor", 3: "cyst"}
#: BraTS 2023 (``-seg.nii.gz``): 1 NETC, 2 SNFH, 3 ET.
BRATS2023_LABELS = {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"}
#: BraTS 2021 and earlier (``_seg.nii.gz``): 1 NCR/NET, 2 ED, 4 ET.
BRATS2021_LABELS = {0: "background", 1: "necrosis", 2: "edema", 4: "enhancing"}


@dataclass(frozen=True)
class Region:
    """A scored mask: the voxels whose label is in ``values``. ``id`` fills the ``label`` column of the metrics;
    ``nsd_tolerance_mm``: the challenge's surface-Dice tolerance, if it states one."""

    id: int
    name: str
    values: tuple[int, ...]
    nsd_tolerance_mm: float | None = None


#: BraTS whole tumour, tumour core, enhancing tumour, in the 2023 labels and in the older ones.
BRATS_2023 = (Region(1, "WT", (1, 2, 3)), Region(2, "TC", (1, 3)), Region(3, "ET", (3,)))
BRATS_LEGACY = (Region(1, "WT", (1, 2, 4)), Region(2, "TC", (1, 4)), Region(3, "ET", (4,)))
#: KiTS23 hierarchical evaluation classes and tolerances, from neheller/kits23 ``kits23/configuration/labels.py``.
KITS_REGIONS = (
    Region(1, "kidney_and_mass", (1, 2, 3), 1.0330772532390826),
    Region(2, "mass", (2, 3), 1.1328796488598762),
    Region(3, "tumor", (2,), 1.1498198361434828),
)


# --- Model outputs -> per-label scores ------------------------------------------------------------------------------

def label_scores(logits: torch.Tensor, cfg: PipelineConfig) -> torch.Tensor:
    """Network output (K, X, Y, Z) -> per-label scores (``num_classes``, X, Y, Z), channel index = label value,
    whose argmax is the segmentation and whose channel 0 is above 0.5 exactly where background wins.

    Softmax models: the softmax. Region models (sigmoid outputs ``p_i`` in region order): with ``t_i = p_i - 0.5``
    the background scores ``1 - max_i p_i`` and the label decoded from region ``j`` scores
    ``0.5 + min(t_j, -max_{k>j} t_k)``; the argmax is then nnU-Net's decoding (a voxel takes the label of the last
    region above 0.5), the scores are continuous, so they can be resampled linearly onto another grid like
    probabilities, and labels that no region decodes to score -1.
    """
    if not cfg.regions:
        return logits.float().softmax(dim=0)
    p = logits.float().sigmoid()
    t = p - 0.5
    out = p.new_full((cfg.num_classes, *p.shape[1:]), -1.0)
    out[0] = 1.0 - p.max(dim=0).values
    order = cfg.region_order()
    for j, (_, _, value) in enumerate(order):
        score = t[j]
        if j + 1 < len(order):
            score = score.minimum(-t[j + 1:].max(dim=0).values)
        out[value] = 0.5 + score
    return out


def region_targets(labels: torch.Tensor, cfg: PipelineConfig) -> torch.Tensor:
    """Label maps (B, 1, X, Y, Z) -> region masks (B, R, X, Y, Z) float, one channel per region in order."""
    import torch  # local: keeps this module (imported by the config) free of torch at import time

    masks = [torch.isin(labels, labels.new_tensor(values)) for values in cfg.regions.values()]
    return torch.cat(masks, dim=1).to(torch.float32)


# --- Label table: names, coded concepts (SNOMED CT) and display colours, for DICOM SEG / RTSTRUCT outputs ---------

#: A coded concept written as ``SCHEME:VALUE:Meaning`` (``SCT:64033007:Kidney``) or a keyword of pydicom's SNOMED CT
#: dictionary (``Kidney``).
CODE_FORMAT = "SCHEME:VALUE:Meaning (e.g. SCT:64033007:Kidney) or a SNOMED CT keyword of pydicom (e.g. Kidney)"

#: Well-known label names -> (category keyword, type keyword) of pydicom's SNOMED CT dictionary (``codes.SCT``), so
#: that no code value is typed by hand. Names are matched case-insensitively with spaces/dashes as underscores.
KNOWN_LABELS: dict[str, tuple[str, str]] = {
    **{name: ("AnatomicalStructure", keyword) for name, keyword in (
        ("kidney", "Kidney"), ("liver", "Liver"), ("spleen", "Spleen"), ("pancreas", "Pancreas"),
        ("lung", "Lung"), ("heart", "Heart"), ("brain", "Brain"), ("stomach", "Stomach"), ("aorta", "Aorta"),
        ("gallbladder", "Gallbladder"), ("bladder", "Bladder"), ("prostate", "Prostate"), ("colon", "Colon"),
        ("esophagus", "Esophagus"), ("duodenum", "Duodenum"), ("trachea", "Trachea"), ("thyroid", "Thyroid"),
        ("adrenal_gland", "AdrenalGland"), ("spinal_cord", "SpinalCord"), ("vertebra", "Vertebra"), ("rib", "Rib"),
        ("femur", "Femur"), ("bone", "Bone"), ("muscle", "Muscle"), ("skin", "Skin"),
    )},
    **{name: ("MorphologicallyAbnormalStructure", keyword) for name, keyword in (
        ("tumor", "Neoplasm"), ("tumour", "Neoplasm"), ("neoplasm", "Neoplasm"), ("mass", "Mass"),
        ("lesion", "Lesion"), ("cyst", "Cyst"), ("edema", "Edema"), ("oedema", "Edema"), ("necrosis", "Necrosis"),
    )},
}
#: Names not in :data:`KNOWN_LABELS` get 3D Slicer's default terminology: category Tissue, type Tissue.
GENERIC_CODES = ("Tissue", "Tissue")
#: Default display colours (RGB), cycled by label order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (221, 130, 101), (144, 238, 144), (255, 255, 0), (0, 151, 206), (216, 101, 79), (183, 156, 220),
    (111, 184, 210), (241, 214, 145), (250, 250, 210), (230, 220, 70), (200, 200, 235), (255, 20, 147),
)


@dataclass(frozen=True)
class CodeRef:
    """A coded concept (DICOM Code Sequence item): ``value`` in ``scheme``, with its ``meaning``."""

    value: str
    scheme: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}:{self.meaning}"


@dataclass(frozen=True)
class LabelInfo:
    """One foreground label: its value in the mask, name, SNOMED CT category and type, display colour (RGB)."""

    value: int
    name: str
    category: CodeRef
    type: CodeRef
    color: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "name": self.name, "category": str(self.category), "type": str(self.type),
                "color": list(self.color)}


def parse_code(text: str) -> CodeRef:
    """``SCT:64033007:Kidney`` or a pydicom SNOMED CT keyword (``Kidney``) -> :class:`CodeRef`; ValueError if not."""
    from pydicom.sr.codedict import codes

    parts = [p.strip() for p in text.split(":", 2)]
    if len(parts) == 3 and all(parts):
        return CodeRef(parts[1], parts[0], parts[2])
    if len(parts) == 1 and parts[0].isidentifier():
        try:
            code = getattr(codes.SCT, parts[0])
        except AttributeError:
            pass
        else:
            return CodeRef(str(code.value), str(code.scheme_designator), str(code.meaning))
    raise ValueError(f"{text!r} is not a code; expected {CODE_FORMAT}")


def default_codes(name: str) -> tuple[CodeRef, CodeRef]:
    """(category, type) for a label name: :data:`KNOWN_LABELS`, else :data:`GENERIC_CODES`."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    category, kind = KNOWN_LABELS.get(key, GENERIC_CODES)
    return parse_code(category), parse_code(kind)


def label_table(labels: dict[int, str], specs: dict[int, Any] | None = None) -> tuple[LabelInfo, ...]:
    """The foreground labels (value > 0, ascending) with codes and colours.

    ``specs[value]`` (the config's ``label_info``: objects with ``category``, ``type`` and ``color``; empty fields
    take the defaults) overrides the defaults of :func:`default_codes` and :data:`PALETTE`. Raises ValueError
    naming the label for a malformed code or colour.
    """
    out = []
    for n, value in enumerate(sorted(v for v in labels if v > 0)):
        name = labels[value]
        category, kind = default_codes(name)
        color = PALETTE[n % len(PALETTE)]
        spec = (specs or {}).get(value)
        if spec is not None:
            try:
                category = parse_code(spec.category) if spec.category else category
                kind = parse_code(spec.type) if spec.type else kind
            except ValueError as err:
                raise ValueError(f"label {value} ({name}): {err}") from err
            if spec.color:
                if len(spec.color) != 3 or any(not 0 <= c <= 255 for c in spec.color):
                    raise ValueError(f"label {value} ({name}): color must be [r, g, b] in 0-255, found "
                                     f"{list(spec.color)}")
                color = (int(spec.color[0]), int(spec.color[1]), int(spec.color[2]))
        out.append(LabelInfo(value, name, category, kind, color))
    return tuple(out)


def nested_order(regions: Mapping[str, Sequence[int]]) -> list[str] | None:
    """The region names from the largest to the innermost when each region strictly contains the next (then
    that is the only order that decodes, whatever order a mapping listed them in); None when they are not nested."""
    names = sorted(regions, key=lambda n: -len(set(regions[n])))
    sets = [set(regions[n]) for n in names]
    return names if all(a > b for a, b in itertools.pairwise(sets)) else None


def regions_as_list(regions: Mapping[str, Sequence[int]]) -> list[dict[str, object]]:
    """Regions in their explicit list form ``[{name: WT, labels: [1, 2, 3]}, ...]`` (order survives any YAML
    writer, also one that sorts keys)."""
    return [{"name": name, "labels": list(values)} for name, values in regions.items()]
