"""How outputs made from a DICOM series are named: by series label and description, never by patient data or
folder names (``medpipe convert`` and ``medpipe infer`` name series the same way)."""

from __future__ import annotations

import re


def output_stem(label: str, description: str) -> str:
    """``series3_t1_fl2d_sag``: the series label and a file-name-safe description (at most 60 characters)."""
    slug = re.sub(r"[^A-Za-z0-9-]+", "_", description).strip("_")[:60].strip("_")
    safe_label = re.sub(r"[^A-Za-z0-9-]+", "_", label)
    return f"series{safe_label}_{slug}" if slug else f"series{safe_label}"
