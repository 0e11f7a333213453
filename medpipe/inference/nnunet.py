"""Run an imported nnU-Net v2 model the way ``nnUNetv2_predict`` does, and write masks through medpipe's export.

Sliding window: the preprocessed volume is padded (centred, zeros) to at least the patch size; tiles start at
nnU-Net's steps for step size 0.5; every tile's logits (averaged over the mirrored copies when TTA is on) are
weighted by nnU-Net's Gaussian (sigma = patch / 8, peak 10) and accumulated; the sum is divided by the summed
weights. ``accumulate="float16"`` (the default) does this in half precision exactly like nnU-Net 2.x on CPU;
``"float32"`` accumulates in single precision (may flip near-tie voxels relative to nnU-Net). Folds are averaged.
The mirrored copies of a tile go through the network as one batch (same sums, in nnU-Net's order).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from medpipe.errors import InputError
from medpipe.inference.export import write_mask
from medpipe.inference.inputs import collect_inputs, load_case
from medpipe.models.importers.nnunet import ImportedNnunet, build_network, load_imported
from medpipe.models.importers.nnunet_preprocess import preprocess, resample
from medpipe.models.importers.nnunet_record import NnunetRecord


def gaussian_weights(patch: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """nnU-Net's tile weights: a centred delta blurred with sigma = patch/8, scaled to peak 10, zeros lifted."""
    tmp = np.zeros(tuple(patch))
    tmp[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(tmp, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g /= np.max(g) / 10
    weights = torch.from_numpy(g).to(dtype=dtype)
    zero = weights == 0
    if bool(zero.any()):
        weights[zero] = torch.min(weights[~zero])
    return weights


def tile_starts(image: Sequence[int], patch: Sequence[int], step: float) -> list[list[int]]:
    """Start index of every tile per axis: as few tiles as cover the image with at most ``step * patch`` apart."""
    out = []
    for size, tile in zip(image, patch, strict=True):
        n = int(np.ceil((size - tile) / (tile * step))) + 1
        stride = (size - tile) / (n - 1) if n > 1 else 0.0
        out.append([int(np.round(stride * i)) for i in range(n)])
    return out


def _pad_to(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the trailing ``len(patch)`` axes of (C, ...) to at least ``patch``, centred (extra voxel after)."""
    spatial = data.shape[1:]
    offset = len(spatial) - len(patch)
    target = [*spatial[:offset], *[max(p, s) for p, s in zip(patch, spatial[offset:], strict=True)]]
    below = [(t - s) // 2 for t, s in zip(target, spatial, strict=True)]
    above = [t - s - b for t, s, b in zip(target, spatial, below, strict=True)]
    if not any(below) and not any(above):
        return data, tuple(slice(0, s) for s in spatial)
    pad: list[int] = []
    for b, a in zip(reversed(below), reversed(above), strict=True):
        pad += [b, a]
    return (torch.nn.functional.pad(data, pad, "constant", 0.0),
            tuple(slice(b, b + s) for b, s in zip(below, spatial, strict=True)))


def _tiles(shape: Sequence[int], patch: Sequence[int], step: float) -> list[tuple[Any, ...]]:
    if len(patch) == len(shape) - 1:  # a 2D configuration: every slice of the first axis
        starts = tile_starts(shape[1:], patch, step)
        return [(slice(None), d, *[slice(s, s + p) for s, p in zip(c, patch, strict=True)])
                for d in range(shape[0]) for c in itertools.product(*starts)]
    starts = tile_starts(shape, patch, step)
    return [(slice(None), *[slice(s, s + p) for s, p in zip(c, patch, strict=True)])
            for c in itertools.product(*starts)]


def mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """nnU-Net's mirrored passes: every non-empty subset of the mirror axes, smallest first (its summation order)."""
    axes = list(mirror_axes or ())
    return [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _predict_tile(network: torch.nn.Module, x: torch.Tensor, combos: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Logits of one (1, C, ...) tile, averaged with its flips along each of ``combos`` (spatial axes) in nnU-Net's
    order; the flipped copies go through the network as one batch."""
    if not combos:
        return network(x)
    dims = [tuple(a + 2 for a in c) for c in combos]
    batch = torch.cat([x, *[torch.flip(x, d) for d in dims]])
    out = network(batch)
    pred = out[:1].clone()
    for i, d in enumerate(dims):
        pred += torch.flip(out[i + 1:i + 2], d)
    pred /= len(dims) + 1
    return pred


def sliding_window_logits(network: torch.nn.Module, data: torch.Tensor, record: NnunetRecord, *, tta: bool,
                          accumulate: torch.dtype = torch.float16,
                          combos: Sequence[tuple[int, ...]] | None = None) -> torch.Tensor:
    """(C, ...) preprocessed volume -> (K, ...) logits on the same grid, nnU-Net's tiling and blending.
    ``tta``: average over :func:`mirror_combinations` of the record's mirror axes (or over ``combos`` if given)."""
    patch = record.patch_size
    padded, revert = _pad_to(data, patch)
    weights = gaussian_weights(patch, accumulate).to(data.device)
    logits = torch.zeros((record.num_outputs, *padded.shape[1:]), dtype=accumulate, device=data.device)
    counts = torch.zeros(padded.shape[1:], dtype=accumulate, device=data.device)
    passes = (combos if combos is not None else mirror_combinations(record.mirror_axes)) if tta else []
    for sl in _tiles(padded.shape[1:], patch, record.tile_step_size):
        x = padded[sl][None].contiguous()
        pred = _predict_tile(network, x, passes)[0]
        pred *= weights
        logits[sl] += pred
        counts[sl[1:]] += weights
    torch.div(logits, counts, out=logits)
    return logits[(slice(None), *revert)]


def logits_to_labels(logits: np.ndarray, record: NnunetRecord) -> np.ndarray:
    """(K, ...) logits -> integer labels: sigmoid > 0.5 painted in regions_class_order, else the argmax label."""
    if record.has_regions:
        probs = torch.sigmoid(torch.from_numpy(np.asarray(logits)).float()).numpy()
        seg = np.zeros(probs.shape[1:], dtype=np.uint16)
        for i, c in enumerate(record.regions_class_order or ()):
            seg[probs[i] > 0.5] = c
        return seg
    values = np.asarray(record.all_labels)
    return values[np.asarray(logits).argmax(0)]


def keep_largest_components(seg: np.ndarray, labels_or_regions: Sequence[Any]) -> np.ndarray:
    """nnU-Net's remove_all_but_largest_component for each label (or region) listed."""
    for item in labels_or_regions:
        values = list(item) if isinstance(item, (list, tuple)) else [item]
        mask = np.isin(seg, values)
        lab, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(seg.ndim, seg.ndim))
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            seg[mask & (lab != int(np.argmax(sizes)))] = 0
    return seg


def header_spacing(files: Sequence[Path]) -> tuple[float, ...] | None:
    """NIfTI pixdim spacing, as nnU-Net's readers take it (affine column norms differ in the last float32 bits,
    which flips nnU-Net's round-half-even shape rule on exact halves)."""
    if not files or not str(files[0]).endswith((".nii", ".nii.gz")):
        return None

    zooms = cast(nib.Nifti1Image, nib.load(str(files[0]))).header.get_zooms()[:3]
    return tuple(float(z) for z in zooms)


@dataclass
class CaseResult:
    case_id: str
    output: Path
    seconds: dict[str, float] = field(default_factory=dict)


class NnunetPredictor:
    """An imported model ready to segment cases (one network, one state dict per fold)."""

    def __init__(self, model: ImportedNnunet, *, tta: bool = True, accumulate: str = "float16",
                 postprocess: bool = False, device: str = "cpu") -> None:
        self.record = model.record
        self.weights = model.weights
        self.tta = tta
        self.postprocess = postprocess
        self.device = torch.device(device)
        self.accumulate = {"float16": torch.float16, "float32": torch.float32}[accumulate]
        self.network = build_network(self.record).to(self.device).eval()

    @torch.inference_mode()
    def logits(self, data: np.ndarray) -> torch.Tensor:
        """Preprocessed (C, ...) -> fold-averaged (K, ...) logits (accumulation dtype)."""
        x = torch.from_numpy(data).to(self.device)
        total: torch.Tensor | None = None
        for state in self.weights.values():
            self.network.load_state_dict(state)
            out = sliding_window_logits(self.network, x, self.record, tta=self.tta, accumulate=self.accumulate).cpu()
            total = out if total is None else total + out
        if total is None:
            raise InputError("the imported model has no folds")
        if len(self.weights) > 1:
            total /= len(self.weights)
        return total

    def segment(self, image: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        """(C, Z, Y, X) image in SimpleITK axis order with its spacing -> (Z, Y, X) labels on the same grid."""
        data, geom = preprocess(image, spacing_zyx, self.record)
        logits = self.logits(data).numpy()
        current = list(self.record.target_spacing)
        if len(current) < len(geom.shape_after_cropping):
            current = [geom.spacing_transposed[0], *current]
        logits = resample(logits, geom.shape_after_cropping, current, geom.spacing_transposed,
                          *self.record.resampling_probabilities)
        seg = logits_to_labels(logits, self.record)
        dtype = np.uint8 if self.record.max_label < 255 else np.uint16
        full = np.zeros(geom.shape_before_cropping, dtype=dtype)
        full[tuple(slice(a, b) for a, b in geom.bbox)] = seg
        full = full.transpose(self.record.transpose_backward)
        for step in self.record.postprocessing if self.postprocess else ():
            full = keep_largest_components(full, step["kwargs"].get("labels_or_regions", []))
        return full

    def predict_files(self, inputs: list[Path], out_dir: Path) -> list[CaseResult]:
        """Segment NIfTI files / folders / DICOM folders; masks go to ``out_dir/<case>.nii.gz`` (geometry-checked)."""
        channels = self.record.channel_names if len(self.record.channel_names) > 1 else ("0000",)
        results = []
        for case in collect_inputs(inputs, tuple(channels)):
            t0 = time.perf_counter()
            loaded = load_case(case, self.record.num_input_channels)
            # medpipe reads (C, I, J, K); nnU-Net's readers hand the network (C, K, J, I) with reversed spacing
            image = np.ascontiguousarray(loaded.array.transpose(0, 3, 2, 1))
            spacing = tuple(reversed(header_spacing(loaded.files) or loaded.grid.spacing_mm))
            t1 = time.perf_counter()
            labels = self.segment(image, spacing).transpose(2, 1, 0)
            t2 = time.perf_counter()
            case_id = case.case_id[:-5] if case.case_id.endswith("_0000") else case.case_id
            out = write_mask(out_dir / f"{case_id}.nii.gz", labels, loaded.grid)
            t3 = time.perf_counter()
            results.append(CaseResult(case_id, out, {"read": t1 - t0, "segment": t2 - t1, "write": t3 - t2}))
        return results


def predict_nnunet(model_path: str | Path, inputs: list[Path], out_dir: str | Path, *, folds: list[str] | None = None,
                   tta: bool = True, accumulate: str = "float16", postprocess: bool = False,
                   device: str = "cpu") -> list[CaseResult]:
    """Library entry: segment ``inputs`` with an import folder or an nnU-Net result folder."""
    model = load_imported(model_path, folds)
    predictor = NnunetPredictor(model, tta=tta, accumulate=accumulate, postprocess=postprocess, device=device)
    return predictor.predict_files([Path(p) for p in inputs], Path(out_dir))
