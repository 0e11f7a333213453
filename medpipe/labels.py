"""The one home of label semantics: label maps, regions (nnU-Net-style sigmoid outputs) and their decoding.

Tensor functions use tensor methods only, so this module imports no torch and stays cheap to import.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from medpipe.config import PipelineConfig


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
