"""Explanation maps in network space: a class activation map and SmoothGrad for one label of a segmentation
network, the score being the label's logit summed inside a mask of that label, computed window by window around
the structure and kept to the body.

MONAI's ``monai.visualize.GradCAM`` and ``SmoothGrad`` back-propagate ``logits[:, class].sum()``: over every voxel
of the output, for a segmentation network "the whole image's kidney-ness", dominated by the far larger background
where the score is low but summed anyway. Here the score is summed inside the target mask only
(:class:`MaskedScore`). Windows of the model's ROI size tile the mask's bounding box (plus a margin); each window is
one forward and backward pass per map (batch 1), so memory is that of one window whatever the volume; maps of
overlapping windows are averaged. Attribution outside the body (:func:`body_support`: air, padding, outside the
scan's field of view) is set to 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from medpipe.errors import InputError
from medpipe.explain.cam import forward_shapes, layer_map

#: SmoothGrad variants: ``gradxinput`` = positive part of (mean gradient over noisy copies) x input; ``positive`` =
#: positive part of the mean gradient; ``magnitude`` = root mean square of the gradients (MONAI's default).
SMOOTHGRAD_KINDS = ("gradxinput", "positive", "magnitude")


class MaskedScore(torch.nn.Module):
    """``model`` with its (B, K, X, Y, Z) logits summed inside ``mask`` (1, 1, X, Y, Z): output (B, K)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if isinstance(logits, list | tuple):  # deep supervision heads: the full-resolution output
            logits = logits[0]
        if self.mask is None:
            raise InputError("no target mask set for the explanation")
        return (logits * self.mask).sum(dim=(2, 3, 4))


def _convolutions(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.conv._ConvNd) for m in module.modules())


def default_layer(model: torch.nn.Module, roi_size_vox: tuple[int, int, int], in_channels: int) -> str:
    """The class-activation layer of a segmentation network: the decoder's up-sampling into half the input
    resolution, i.e. the outermost module that takes a coarser input to half resolution and holds at most one
    convolution (for MONAI's UNet ``...submodule.2.0``: the transposed convolution with its norm and activation).
    Without one, the last module whose output has half the input resolution. Full-resolution layers sit one
    convolution from the output, so their map is little more than the target mask itself; the deepest layers are
    too coarse for organs of a few centimetres."""
    param = next(model.parameters(), None)
    x = torch.zeros((1, in_channels, *roi_size_vox), device=param.device if param is not None else "cpu")
    seen = forward_shapes(model, x)
    half = tuple(-(-s // 2) for s in roi_size_vox)
    modules = dict(model.named_modules())
    ups = [n for n, i, o in seen if len(o) == 5 and o[2:] == half and len(i) == 5 and i[2:] != half
           and all(a <= b for a, b in zip(i[2:], half, strict=True)) and _convolutions(modules[n]) <= 1]
    if ups:
        return ups[-1]
    names = [n for n, _, o in seen if len(o) == 5 and o[2:] == half]
    if not names:
        raise InputError("no layer at half the input resolution for a class activation map",
                         hint="name one with --layer (a name from model.named_modules())")
    return names[-1]


def body_support(image: torch.Tensor, dilate_vox: int = 2, min_fraction: float = 0.05) -> np.ndarray:
    """Where attribution may lie, (X, Y, Z) bool for ``image`` (C, X, Y, Z): voxels that differ from the background
    in any channel, holes filled, dilated by ``dilate_vox``. A channel's background is its most frequent value when
    at least ``min_fraction`` of the voxels hold exactly it: air clipped by a CT window, the zeros that padding and
    resampling put outside the field of view, an MRI background that is exactly 0. A channel without such a value
    (continuous intensities everywhere, e.g. a scan cropped inside the body) restricts nothing; nor does a
    constant image."""
    arr = image.detach().float().cpu().numpy()
    differs = np.zeros(arr.shape[1:], bool)
    for channel in arr:
        values, counts = np.unique(channel, return_counts=True)
        if counts.max() < min_fraction * channel.size:
            return np.ones(arr.shape[1:], bool)
        differs |= channel != values[counts.argmax()]
    if not differs.any():
        return np.ones(arr.shape[1:], bool)
    filled = ndi.binary_fill_holes(differs)
    return ndi.binary_dilation(filled, iterations=dilate_vox) if dilate_vox > 0 else filled


@dataclass(frozen=True)
class NetworkMaps:
    """Maps on the network grid (X, Y, Z), both scaled to [0, 1] by their maximum (all 0 when the maximum is 0);
    ``windows``: windows explained; ``raw_max``: the maxima before scaling (CAM, SmoothGrad)."""

    cam: np.ndarray
    smoothgrad: np.ndarray
    layer: str
    weighting: str
    smoothgrad_kind: str
    windows: int
    raw_max: tuple[float, float]


def windows(mask: np.ndarray, roi: tuple[int, int, int], margin_vox: int, overlap: float) -> list[tuple[int, ...]]:
    """Window starts (x, y, z) of size ``roi`` covering the bounding box of ``mask`` plus ``margin_vox``, inside the
    (padded) volume; neighbouring windows overlap by ``overlap``."""
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(axis=0) - margin_vox, 0)
    hi = np.minimum(nz.max(axis=0) + 1 + margin_vox, mask.shape)
    starts = []
    for a in range(3):
        size, step = roi[a], max(1, int(roi[a] * (1 - overlap)))
        last = max(int(hi[a]) - size, int(lo[a]))
        axis = list(range(int(lo[a]), last + 1, step))
        if axis[-1] != last:
            axis.append(last)
        starts.append([max(0, min(s, mask.shape[a] - size)) for s in axis])
    return sorted({(x, y, z) for x in starts[0] for y in starts[1] for z in starts[2]})


def smoothgrad(model: torch.nn.Module, x: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor],
               n_samples: int, noise: float, kind: str, generator: torch.Generator) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017) of the scalar ``score(model(x))``, ``x`` (1, C, X, Y, Z): gradients with
    respect to ``n_samples`` noisy copies (Gaussian, sd = ``noise`` x the intensity range of ``x``), combined per
    ``kind`` (:data:`SMOOTHGRAD_KINDS`) and summed over channels: (X, Y, Z) >= 0."""
    sd = noise * float(x.max() - x.min())
    total = torch.zeros_like(x)
    for _ in range(n_samples):
        noisy = (x + sd * torch.randn(x.shape, generator=generator).to(x.device)).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(score(model(noisy)), noisy)
        total += grad * grad if kind == "magnitude" else grad
    mean = total / n_samples
    if kind == "magnitude":
        return mean.sqrt().sum(dim=1)[0]
    return torch.relu(mean * x if kind == "gradxinput" else mean).sum(dim=1)[0]


def explain_network(model: torch.nn.Module, image: torch.Tensor, target: np.ndarray, channel: int,
                    roi: tuple[int, int, int], *, layer: str | None = None, weighting: str = "hirescam",
                    smoothgrad_kind: str = "gradxinput", margin_vox: int = 8, overlap: float = 0.25,
                    n_samples: int = 8, noise: float = 0.15, seed: int = 0) -> NetworkMaps:
    """A class activation map (``weighting``, at ``layer`` or :func:`default_layer`) and SmoothGrad for output
    ``channel`` of ``model`` on ``image`` (C, X, Y, Z, network space), the score being that channel's logit summed
    inside ``target`` (X, Y, Z bool). Volumes smaller than ``roi`` are zero-padded. Both maps are 0 outside
    :func:`body_support`."""
    if not target.any():
        raise InputError("the target mask is empty: nothing to explain")
    if smoothgrad_kind not in SMOOTHGRAD_KINDS:
        raise InputError(f"unknown SmoothGrad kind {smoothgrad_kind!r}", hint=f"one of {', '.join(SMOOTHGRAD_KINDS)}")
    model.eval()
    shape = tuple(int(s) for s in image.shape[1:])
    pad = [max(0, r - s) for r, s in zip(roi, shape, strict=True)]
    img = torch.nn.functional.pad(image.float(), [0, pad[2], 0, pad[1], 0, pad[0]])
    tgt = np.pad(target, [(0, p) for p in pad])
    wrapped = MaskedScore(model)
    name = layer or default_layer(model, roi, int(image.shape[0]))
    if name not in dict(model.named_modules()) or not name:
        raise InputError(f"no layer {name!r} in the network", hint="a name from model.named_modules(), e.g. "
                         f"{default_layer(model, roi, int(image.shape[0]))}")
    acc_cam, acc_sg, count = (np.zeros(tgt.shape, np.float32) for _ in range(3))
    gen = torch.Generator().manual_seed(seed)
    starts = [s for s in windows(tgt, roi, margin_vox, overlap)
              if tgt[s[0]:s[0] + roi[0], s[1]:s[1] + roi[1], s[2]:s[2] + roi[2]].any()]
    for x, y, z in starts:
        box = (slice(x, x + roi[0]), slice(y, y + roi[1]), slice(z, z + roi[2]))
        wrapped.mask = torch.from_numpy(tgt[box])[None, None].float().to(img.device)
        patch = img[(slice(None), *box)][None].contiguous()
        cam, _ = layer_map(wrapped, patch, lambda scores: scores[:, channel].sum(), f"model.{name}", weighting)
        acc_cam[box] += cam.cpu().numpy()
        acc_sg[box] += smoothgrad(wrapped, patch, lambda scores: scores[:, channel].sum(), n_samples, noise,
                                  smoothgrad_kind, gen).detach().cpu().numpy()
        count[box] += 1
    support = body_support(image)
    out = []
    for acc in (acc_cam, acc_sg):
        m = np.divide(acc, count, out=np.zeros_like(acc), where=count > 0)[:shape[0], :shape[1], :shape[2]]
        out.append(np.where(support, m, 0.0).astype(np.float32))
    peaks = (float(out[0].max()), float(out[1].max()))
    scaled = [m / p if p > 0 else m for m, p in zip(out, peaks, strict=True)]
    return NetworkMaps(scaled[0], scaled[1], name, weighting, smoothgrad_kind, len(starts), peaks)
