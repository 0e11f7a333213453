"""medpipe: a MONAI-based pipeline for 3D CT/MRI segmentation with exact geometry.

Heavy modules (torch, MONAI) are imported lazily so that ``medpipe --help`` is instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate"]


def evaluate(*args: Any, **kwargs: Any) -> Any:
    """Score predictions against references; see :func:`medpipe.evaluate.evaluate`."""
    from medpipe.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
