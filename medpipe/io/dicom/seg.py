"""DICOM Segmentation (SEG) output with highdicom, in the source series' study and frame of reference.

* ``binary`` (default): a BINARY SEG, one frame per segment and slice that holds it (empty frames omitted), what
  OHIF, 3D Slicer and Weasis read. ``labelmap``: a LABELMAP SEG (one 8/16-bit frame per slice, RLE lossless),
  compact (about 40x smaller) but read by fewer viewers.
* Segment n (1..N) is the n-th foreground label in ascending value; each carries the label's name, SNOMED CT
  category and type, colour, and the algorithm (medpipe, its version, the model name and sha256).
* The mask is placed by highdicom's geometry (:mod:`medpipe.io.dicom.derived`): on the source grid every frame
  references its source image; on a repaired grid (``--allow-tilt``/``--allow-uneven``) the SEG carries its own
  plane positions and references the source series, and a source image only where a frame lies in its plane
  (Spatial Locations Preserved NO: after a tilt repair the plane is the image's, shifted in-plane).
* Study, patient and frame of reference come from the source (a SEG carries patient data, as a PACS needs); the
  series and instance UIDs are new. Written to a temporary file, then renamed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medpipe.errors import OutputError
from medpipe.io.atomic import atomic_path
from medpipe.io.dicom.derived import SourceSeries, mask_volume, read_source
from medpipe.io.geometry import Grid
from medpipe.labels import LabelInfo
from medpipe.runtime import __version__

SegType = Literal["binary", "labelmap"]
SEG_TYPES: tuple[str, ...] = ("binary", "labelmap")
OUTPUT_FORMAT = "medpipe-dicom-output/1"
#: What highdicom and rt-utils raise on inputs they cannot encode (turned into an OutputError naming the file).
LIBRARY_ERRORS = (ValueError, TypeError, KeyError, AttributeError, RuntimeError)
#: Series number of derived series: the source's plus this (or this alone).
SERIES_NUMBER_OFFSET = 1000
#: highdicom's warning about a one-component person name quotes the name (patient data): never let it out.
_PERSON_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


@dataclass(frozen=True)
class Algorithm:
    """What made the mask: recorded as the segments' algorithm identification."""

    model_name: str
    model_sha256: str
    version: str = __version__

    def parameters(self) -> dict[str, str]:
        return {"model": self.model_name, "model_sha256": self.model_sha256}


@dataclass(frozen=True)
class DicomOutput:
    """A written DICOM SEG or RTSTRUCT, for the sidecar (no patient data: names, counts and new UIDs only)."""

    file: str
    kind: str
    series_uid: str
    sop_instance_uid: str
    segments: dict[int, str]
    grid: str
    frames: int = 0
    frames_referencing_source: int = 0
    notes: tuple[str, ...] = ()
    format: str = OUTPUT_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"format": self.format, "file": self.file, "kind": self.kind, "series_uid": self.series_uid,
               "sop_instance_uid": self.sop_instance_uid,
               "segments": {str(k): v for k, v in self.segments.items()}, "grid": self.grid,
               "frames": self.frames, "frames_referencing_source": self.frames_referencing_source,
               "notes": list(self.notes), **self.extra}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DicomOutput:
        known = {"format", "file", "kind", "series_uid", "sop_instance_uid", "segments", "grid", "frames",
                 "frames_referencing_source", "notes"}
        return cls(file=data["file"], kind=data["kind"], series_uid=data["series_uid"],
                   sop_instance_uid=data["sop_instance_uid"],
                   segments={int(k): v for k, v in data["segments"].items()}, grid=data["grid"],
                   frames=int(data.get("frames", 0)),
                   frames_referencing_source=int(data.get("frames_referencing_source", 0)),
                   notes=tuple(data.get("notes", ())), format=data.get("format", OUTPUT_FORMAT),
                   extra={k: v for k, v in data.items() if k not in known})


def segment_numbers(labels: np.ndarray, table: Sequence[LabelInfo]) -> np.ndarray:
    """Label values -> segment numbers 1..N (table order); a value missing from the table is an error."""
    values = np.asarray([info.value for info in table], dtype=np.int64)
    top = int(max(int(labels.max()) if labels.size else 0, int(values.max()) if values.size else 0))
    lut = np.zeros(top + 1, dtype=np.uint16 if len(table) > 255 else np.uint8)
    lut[values] = np.arange(1, len(table) + 1)
    present = np.unique(labels)
    unknown = sorted(set(present.tolist()) - {0} - set(values.tolist()))
    if unknown:
        raise OutputError(f"mask holds label values {unknown} that the label table does not describe")
    return lut[labels]


def segment_descriptions(table: Sequence[LabelInfo], algorithm: Algorithm) -> list[Any]:
    """highdicom segment descriptions for the label table (segment n = ``table[n-1]``)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ident = hd.AlgorithmIdentificationSequence(
        name="medpipe", family=codes.cid7162.ArtificialIntelligence, version=algorithm.version,
        parameters=algorithm.parameters(),
    )
    out = []
    for number, info in enumerate(table, start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=info.name[:64],
            segmented_property_category=hd.sr.CodedConcept(info.category.value, info.category.scheme,
                                                           info.category.meaning),
            segmented_property_type=hd.sr.CodedConcept(info.type.value, info.type.scheme, info.type.meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=ident,
            display_color=hd.color.CIELabColor.from_rgb(*info.color),
        ))
    return out


def _series_number(source: SourceSeries) -> int:
    number = source.datasets[0].get("SeriesNumber")
    return SERIES_NUMBER_OFFSET + (int(number) if number not in (None, "") else 0)


def build_seg(labels: np.ndarray, grid: Grid, source: SourceSeries, table: Sequence[LabelInfo],
              algorithm: Algorithm, *, seg_type: SegType = "binary", repaired: bool = False,
              workers: int = 0) -> Any:
    """The highdicom Segmentation of ``labels`` (I, J, K) on ``grid`` for ``source`` (not written)."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    if seg_type not in SEG_TYPES:
        raise OutputError(f"unknown SEG type {seg_type!r}", hint="use binary or labelmap")
    if not table:
        raise OutputError("the label table has no foreground labels: nothing to describe in a SEG")
    volume = mask_volume(segment_numbers(labels, table), grid, source, repaired=repaired)
    labelmap = seg_type == "labelmap"
    empty = not volume.array.any()
    description = f"medpipe {algorithm.model_name}"[:64]
    with warnings.catch_warnings():
        # a one-component PatientName (as anonymisers write it) is valid DICOM; highdicom's warning would print it
        warnings.filterwarnings("ignore", message=_PERSON_NAME_WARNING, category=UserWarning)
        return hd.seg.Segmentation(
            source_images=list(source.datasets),
            pixel_array=volume,
            segmentation_type=(hd.seg.SegmentationTypeValues.LABELMAP if labelmap
                               else hd.seg.SegmentationTypeValues.BINARY),
            segment_descriptions=segment_descriptions(table, algorithm),
            series_instance_uid=hd.UID(),
            series_number=_series_number(source),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medpipe",
            manufacturer_model_name=algorithm.model_name[:64] or "medpipe",
            software_versions=f"medpipe {algorithm.version}",
            device_serial_number=algorithm.model_sha256[:16] or "0",
            transfer_syntax_uid=RLELossless if labelmap else ExplicitVRLittleEndian,
            omit_empty_frames=not empty,  # an all-empty mask keeps its (empty) frames: a SEG needs at least one
            content_label="MEDPIPE",
            content_description=description,
            series_description=description,
            workers=workers,
        )


def write_seg(path: str | Path, labels: np.ndarray, grid: Grid, source_files: Sequence[Path],
              table: Sequence[LabelInfo], algorithm: Algorithm, *, seg_type: SegType = "binary",
              repaired: bool = False, workers: int = 0) -> DicomOutput:
    """Write a DICOM SEG of ``labels`` (I, J, K, on ``grid``) for the series in ``source_files`` (slice order).

    ``repaired``: the grid is medpipe's resampling of the series (tilt/uneven repair): the SEG then carries its
    own plane positions. Raises :class:`GeometryError` when an unrepaired grid is not the series grid.
    """
    path = Path(path)
    source = read_source(source_files)
    try:
        seg = build_seg(labels, grid, source, table, algorithm, seg_type=seg_type, repaired=repaired,
                        workers=workers)
    except LIBRARY_ERRORS as err:
        raise OutputError(f"highdicom could not build the SEG ({type(err).__name__}: {str(err)[:200]})",
                          path=path.name) from err
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    frames = list(seg.PerFrameFunctionalGroupsSequence)
    referencing = sum(bool(item.get("DerivationImageSequence")) for item in frames)  # type 2: may be present, empty
    notes = list(source.notes)
    if repaired:
        notes.append("the series was resampled (repair): the SEG lies on the repaired grid with its own plane "
                     "positions and references the source series; a frame references a source image only where it "
                     "lies in that image's plane, with Spatial Locations Preserved NO")
    return DicomOutput(
        file=path.name, kind=f"dicom-seg ({seg_type})", series_uid=str(seg.SeriesInstanceUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segments={n: info.name for n, info in enumerate(table, start=1)},
        grid="repaired" if repaired else "source", frames=len(frames), frames_referencing_source=referencing,
        notes=tuple(notes),
        extra={"segment_label_values": {str(n): info.value for n, info in enumerate(table, start=1)},
               **({"derived_uids": list(source.derived_uids)} if source.derived_uids else {})},
    )
