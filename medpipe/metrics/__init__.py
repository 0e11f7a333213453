"""Segmentation metrics in millimetres: overlap, surface distances, lesion-wise scores, regions and presets.

See ``docs/metrics.md`` for the definitions and the published implementations they match.
"""

from medpipe.metrics.empty import EmptyPolicy, empty_case
from medpipe.metrics.lesions import LesionRule, LesionScore, score_lesions
from medpipe.metrics.overlap import Overlap
from medpipe.metrics.regions import PRESETS, Preset, Region, get_preset
from medpipe.metrics.scoring import METRICS, MetricRow, score_arrays
from medpipe.metrics.summary import summarize
from medpipe.metrics.surface import SurfaceDistances, surface_distances

__all__ = [
    "METRICS",
    "PRESETS",
    "EmptyPolicy",
    "LesionRule",
    "LesionScore",
    "MetricRow",
    "Overlap",
    "Preset",
    "Region",
    "SurfaceDistances",
    "empty_case",
    "get_preset",
    "score_arrays",
    "score_lesions",
    "summarize",
    "surface_distances",
]
