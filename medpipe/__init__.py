"""medpipe: a MONAI-based pipeline for 3D CT/MRI segmentation with exact geometry.

The verbs are functions, exported lazily (PEP 562) so that ``import medpipe`` and ``medpipe --help`` stay instant:
``medpipe.train``, ``medpipe.infer``, ``medpipe.evaluate``, ``medpipe.run_pipeline``. Their stages live in the
packages ``io``, ``datasets``, ``models``, ``training``, ``inference`` and ``evaluation`` (docs/architecture.md).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from medpipe.runtime import __version__

__all__ = ["__version__", "evaluate", "infer", "run_pipeline", "train"]

_LAZY = {
    "train": "medpipe.training.run",
    "infer": "medpipe.inference.batch",
    "evaluate": "medpipe.evaluation.evaluate",
    "run_pipeline": "medpipe.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
