"""Mirror test-time augmentation: which flips a predictor runs, and applying / inverting them.

A pass is a tuple of spatial axes (0, 1, 2 of the network's X, Y, Z) to flip; ``()`` is the plain pass. The
input is flipped along those axes, the network runs, and its scores are flipped back along the same axes (a
flip is its own inverse), so every pass's scores are on the unflipped network grid before they are averaged.
Only the axes the model allows (``transforms.mirror_axes``, recorded at training time) are ever flipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medpipe.errors import ConfigError

if TYPE_CHECKING:
    import torch

TTA_MODES = ("none", "flip", "all")


def mirror_passes(mode: str, allowed_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """The passes of ``mode``: ``none`` -> [()]; ``flip`` -> () plus one single-axis flip per allowed axis;
    ``all`` -> every subset of the allowed axes (2**n passes, 8 for three axes)."""
    axes = tuple(sorted(set(allowed_axes)))
    if mode == "none":
        return [()]
    if mode == "flip":
        return [(), *[(a,) for a in axes]]
    if mode == "all":
        return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]
    raise ConfigError(f"--tta {mode}: unknown mode", hint="one of none, flip, all")


def flip_spatial(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Flip the last three (spatial) dimensions of ``x`` (…, X, Y, Z) along ``axes``; ``()`` returns ``x``."""
    if not axes:
        return x
    return x.flip(dims=[x.ndim - 3 + a for a in axes])
