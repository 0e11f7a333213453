"""The one exception family of medpipe.

Library code raises these; only the CLI prints them (one line, exit code 1). Every message names the file
(or case), what was found and what was expected, and where possible the fix.
"""

from __future__ import annotations

from pathlib import Path


class MedpipeError(Exception):
    """Base class: a problem the user can act on (bad input, bad config, unwritable output...)."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class InputError(MedpipeError):
    """An input image/label/folder that cannot be used as it is."""


class GeometryError(MedpipeError):
    """Grids that disagree, or an output that does not land on its source grid."""


class DicomError(InputError):
    """A DICOM folder or file that cannot be turned into a trustworthy volume."""


class ConfigError(MedpipeError):
    """A pipeline YAML with an unknown key, wrong type or impossible value."""


class DatasetError(MedpipeError):
    """A dataset folder whose layout, cases or labels are inconsistent."""


class CheckpointError(MedpipeError):
    """A missing, corrupt, unsafe or incompatible checkpoint."""


class OutputError(MedpipeError):
    """An output location that cannot be written."""


class RemoteError(MedpipeError):
    """A remote service (a DICOMweb server) that cannot be reached, refuses a request or answers unexpectedly."""


class TrainingError(MedpipeError):
    """A training run that cannot go on (non-finite loss, an unusable environment)."""


class ResourceError(MedpipeError):
    """Not enough memory, shared memory or disk for the work asked."""
