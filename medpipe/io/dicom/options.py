"""How a DICOM folder is read: which series, which opt-in repairs, how many decoder threads (one record, passed
through every reader and command that takes a DICOM folder)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DicomOptions:
    """``series``: a SeriesNumber, a listing label (``3`` or ``3-2``) or a SeriesInstanceUID; required when a folder
    holds several volumes. ``allow_tilt`` / ``allow_uneven``: resample gantry-tilted stacks / uneven or missing
    slices onto a regular grid (recorded in the provenance) instead of refusing them. ``workers``: decoder threads
    (None: the CPU count)."""

    series: int | str | None = None
    allow_tilt: bool = False
    allow_uneven: bool = False
    workers: int | None = None

    def repairs_allowed(self) -> dict[str, bool]:
        return {"allow_tilt": self.allow_tilt, "allow_uneven": self.allow_uneven}
