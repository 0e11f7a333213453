"""Segmentation metrics in millimetres: overlap, surface distances, lesion-wise scores, regions and presets.

See ``docs/metrics.md`` for the definitions and the published implementations they match.
"""

from medpipe.evaluation.metrics.empty import EmptyPolicy, empty_case
from medpipe.evaluation.metrics.lesions import LesionRule, LesionScore, score_lesions
from medpipe.evaluation.metrics.overlap import Overlap
from medpipe.evaluation.metrics.regions import PRESETS, Preset, Region, get_preset
from medpipe.evaluation.metrics.scoring import METRICS, MetricRow, score_arrays
from medpipe.evaluation.metrics.surface import SurfaceDistances, surface_distances

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
    "surface_distances",
]
