"""Regions (groups of label values scored as one mask) and the task presets ``default``, ``brats``, ``kits``.

BraTS: whole tumour (WT), tumour core (TC), enhancing tumour (ET) from the 2023 labels {1 NETC, 2 SNFH, 3 ET}
or the older {1 NCR/NET, 2 ED, 4 ET}; the convention is read from the values present in each case (a case
that holds neither 3 nor 4 scores identically under both). KiTS23: hierarchical evaluation classes
kidney_and_mass {1, 2, 3}, mass {2, 3}, tumor {2} with the official surface-Dice tolerances. The label maps and the
regions themselves live in :mod:`medpipe.labels`; this module holds how each preset scores them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from medpipe.errors import ConfigError, InputError
from medpipe.evaluation.metrics.empty import BRATS_POLICY, DEFAULT_POLICY, EmptyPolicy
from medpipe.evaluation.metrics.lesions import BRATS_GLI_RULE, LesionRule
from medpipe.labels import (
    BRATS2021_LABELS,
    BRATS2023_LABELS,
    BRATS_2023,
    BRATS_LEGACY,
    KITS_LABELS,
    KITS_REGIONS,
    Region,
)

__all__ = ["BRATS_2023", "BRATS_LEGACY", "KITS_REGIONS", "PRESETS", "Preset", "Region", "get_preset", "tolerance_for"]

#: Default NSD tolerance (mm): the value TotalSegmentator's evaluator uses, so numbers compare.
DEFAULT_NSD_TOLERANCE_MM = 3.0


@dataclass(frozen=True)
class Preset:
    """A task's regions, allowed label values, empty policy, NSD tolerance and lesion-wise rule."""

    name: str
    description: str
    policy: EmptyPolicy
    lesion_rule: LesionRule | None
    allowed: frozenset[int] | None

    def regions(self, present: Iterable[int], labels: dict[int, str] | None, path: object = None) -> list[Region]:
        """The regions to score for a case whose reference ∪ prediction hold the label values ``present``."""
        values = set(present) - {0}
        if self.name == "brats":
            return _brats_regions(values, path)
        if self.name == "kits":
            return list(KITS_REGIONS)
        names = labels if labels is not None else {v: "" for v in sorted(values)}
        return [Region(v, name, (v,)) for v, name in sorted(names.items()) if v != 0]


def _brats_regions(values: set[int], path: object) -> list[Region]:
    if 3 in values and 4 in values:
        raise InputError(
            "BraTS labels mix the 2023 convention (3 = ET) and the older one (4 = ET)",
            path=None if path is None else str(path),
            hint="relabel one of the files so both use {1,2,3} or both use {1,2,4}",
        )
    return list(BRATS_LEGACY if 4 in values else BRATS_2023)


PRESETS: dict[str, Preset] = {
    "default": Preset("default", "one region per label value", DEFAULT_POLICY, None, None),
    "brats": Preset(
        "brats",
        "BraTS WT/TC/ET regions, BraTS-2023 lesion-wise scoring (GLI rule: 3 dilations, lesions > 50 mm³)",
        BRATS_POLICY,
        BRATS_GLI_RULE,
        frozenset(BRATS2023_LABELS) | frozenset(BRATS2021_LABELS),
    ),
    "kits": Preset(
        "kits", "KiTS23 HECs kidney_and_mass/mass/tumor, NSD at the KiTS23 tolerances", DEFAULT_POLICY, None,
        frozenset(KITS_LABELS),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`ConfigError` naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown evaluation preset {name!r}", hint=f"use one of {sorted(PRESETS)}") from None


def tolerance_for(region: Region, nsd_tolerance_mm: float | dict[int, float] | None) -> float:
    """NSD tolerance (mm) of ``region``: the argument (per label id or global) > the preset's > the default."""
    if isinstance(nsd_tolerance_mm, dict):
        if region.id not in nsd_tolerance_mm:
            raise ConfigError(
                f"no NSD tolerance given for label {region.id} ({region.name or 'unnamed'})",
                hint="give a tolerance for every scored label, or one number for all",
            )
        return float(nsd_tolerance_mm[region.id])
    if nsd_tolerance_mm is not None:
        return float(nsd_tolerance_mm)
    return region.nsd_tolerance_mm if region.nsd_tolerance_mm is not None else DEFAULT_NSD_TOLERANCE_MM
