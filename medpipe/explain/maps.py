"""Explanation maps in network space: Grad-CAM and SmoothGrad for one label of a segmentation network, with the
class score summed inside a mask of that label, computed window by window around the structure.

MONAI's ``monai.visualize.GradCAM`` and ``SmoothGrad`` back-propagate ``logits[:, class].sum()``: over every voxel
of the output. For a segmentation network that explains "the whole image's kidney-ness", dominated by the far
larger background where the score is low but summed anyway. Here the network is wrapped (:class:`MaskedScore`)
so that its output is, per class, the logit summed inside the target mask only; MONAI's classes then do the rest
(hooks, channel weights = spatially averaged gradients, ReLU, upsampling; noisy copies and gradient magnitudes).
Windows of the model's ROI size tile the mask's bounding box (plus a margin); each window is one forward and
backward pass, so memory is that of one window whatever the volume. Maps of overlapping windows are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.visualize import GradCAM, SmoothGrad

from medpipe.errors import InputError


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


def default_layer(model: torch.nn.Module, roi_size_vox: tuple[int, int, int], in_channels: int) -> str:
    """The target layer for Grad-CAM: the last module (in the order modules finish their forward pass) whose
    output has half the input's resolution, i.e. the decoder block one level above the output. Full-resolution
    layers give little more than gradient x input; the deepest layers (1/8 resolution and below) are too coarse
    for organs of a few centimetres."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [mod.register_forward_hook(lambda _m, _i, o, n=name: seen.append(
        (n, tuple(o.shape[2:]) if isinstance(o, torch.Tensor) else ()))) for name, mod in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(torch.zeros((1, in_channels, *roi_size_vox), device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    half = tuple(-(-s // 2) for s in roi_size_vox)
    names = [n for n, shape in seen if shape == half]
    if not names:
        raise InputError("no layer at half the input resolution for Grad-CAM", hint="name one with --layer")
    return names[-1]


@dataclass(frozen=True)
class NetworkMaps:
    """Maps on the network grid (X, Y, Z), both scaled to [0, 1] by their maximum; ``windows``: passes made."""

    gradcam: np.ndarray
    smoothgrad: np.ndarray
    layer: str
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


def explain_network(model: torch.nn.Module, image: torch.Tensor, target: np.ndarray, channel: int,
                    roi: tuple[int, int, int], *, layer: str | None = None, margin_vox: int = 8,
                    overlap: float = 0.25, n_samples: int = 8, noise: float = 0.15, seed: int = 0) -> NetworkMaps:
    """Grad-CAM and SmoothGrad for output ``channel`` of ``model`` on ``image`` (C, X, Y, Z, network space), the
    score being that channel's logit summed inside ``target`` (X, Y, Z bool). Volumes smaller than ``roi`` are
    zero-padded. ``noise``: SmoothGrad noise sd as a fraction of each window's intensity range."""
    if not target.any():
        raise InputError("the target mask is empty: nothing to explain")
    model.eval()
    shape = tuple(int(s) for s in image.shape[1:])
    pad = [max(0, r - s) for r, s in zip(roi, shape, strict=True)]
    img = torch.nn.functional.pad(image.float(), [0, pad[2], 0, pad[1], 0, pad[0]])
    tgt = np.pad(target, [(0, p) for p in pad])
    wrapped = MaskedScore(model)
    name = layer or default_layer(model, roi, int(image.shape[0]))
    cam = GradCAM(nn_module=wrapped, target_layers=f"model.{name}", postprocessing=lambda x: x)
    smooth = SmoothGrad(wrapped, stdev_spread=noise, n_samples=n_samples, magnitude=True, verbose=False)
    acc_cam, acc_sg, count = (np.zeros(tgt.shape, np.float32) for _ in range(3))
    torch.manual_seed(seed)
    starts = [s for s in windows(tgt, roi, margin_vox, overlap)
              if tgt[s[0]:s[0] + roi[0], s[1]:s[1] + roi[1], s[2]:s[2] + roi[2]].any()]
    for x, y, z in starts:
        box = (slice(x, x + roi[0]), slice(y, y + roi[1]), slice(z, z + roi[2]))
        wrapped.mask = torch.from_numpy(tgt[box])[None, None].float().to(img.device)
        patch = img[(slice(None), *box)][None].contiguous()
        acc_cam[box] += cam(patch, class_idx=channel)[0, 0].detach().cpu().numpy()
        acc_sg[box] += smooth(patch.clone(), index=channel)[0].norm(dim=0).detach().cpu().numpy()
        count[box] += 1
    out = []
    for acc in (acc_cam, acc_sg):
        m = np.divide(acc, count, out=np.zeros_like(acc), where=count > 0)[:shape[0], :shape[1], :shape[2]]
        out.append(m)
    peaks = (float(out[0].max()), float(out[1].max()))
    scaled = [m / p if p > 0 else m for m, p in zip(out, peaks, strict=True)]
    return NetworkMaps(scaled[0], scaled[1], name, len(starts), peaks)
