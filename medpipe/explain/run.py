"""``medpipe explain``: a class activation map (HiResCAM by default) and SmoothGrad for one label of a trained model
on one scan, written as NIfTI on the scan's own grid and as PNG overlays (three planes through the structure), plus
a JSON record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from medpipe.errors import InputError
from medpipe.explain.cam import WEIGHTINGS
from medpipe.explain.classify import classifier_cam
from medpipe.explain.figures import overlay_png
from medpipe.explain.maps import explain_network
from medpipe.inference.inputs import LoadedCase, collect_inputs, load_case
from medpipe.inference.predictor import Predictor, find_checkpoint
from medpipe.io.atomic import atomic_path, ensure_writable_dir, write_bytes_atomic, write_json_atomic
from medpipe.io.geometry import Grid, grid_of, require_same_grid
from medpipe.io.nifti import load_label, nifti_image
from medpipe.labels import label_scores
from medpipe.runtime import versions
from medpipe.transforms import classification_preprocess, preprocess

EXPLAIN_FORMAT_VERSION = 2


@dataclass(frozen=True)
class ExplainResult:
    """What was explained and where the maps are. ``target``: how the scored region was chosen."""

    case: str
    label: int
    label_name: str
    target: str
    target_voxels_network: int
    layer: str
    windows: int
    smoothgrad_samples: int
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: class activation weighting (``hirescam`` or ``gradcam``) and whether ``layer`` was chosen automatically
    weighting: str = "hirescam"
    layer_chosen: str = "automatic"
    smoothgrad_kind: str = "gradxinput"
    #: the maps' maxima before scaling to [0, 1] (network grid), by map kind; 0 means the map is all zero
    raw_max: dict[str, float] = field(default_factory=dict)
    format_version: int = EXPLAIN_FORMAT_VERSION

    @property
    def empty_maps(self) -> list[str]:
        """Map kinds that are zero everywhere (nothing of the score is attributed: e.g. a negative weighted sum)."""
        return [k for k, v in self.raw_max.items() if v <= 0.0]

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "case": self.case, "label": self.label,
                "label_name": self.label_name, "target": self.target,
                "target_voxels_network": self.target_voxels_network, "layer": self.layer,
                "layer_chosen": self.layer_chosen, "weighting": self.weighting, "windows": self.windows,
                "smoothgrad_samples": self.smoothgrad_samples, "smoothgrad_kind": self.smoothgrad_kind,
                "raw_max": self.raw_max, "empty_maps": self.empty_maps, "files": self.files, "seconds": self.seconds,
                "maps": "0 outside the body; scaled to [0, 1] by their maximum; resampled (linear) onto the "
                        "scan's grid"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ExplainResult:
        version = int(d.get("format_version", 0))
        if version != EXPLAIN_FORMAT_VERSION:
            raise InputError(f"explanation record format {version}, expected {EXPLAIN_FORMAT_VERSION}")
        return cls(str(d["case"]), int(d["label"]), str(d["label_name"]), str(d["target"]),
                   int(d["target_voxels_network"]), str(d["layer"]), int(d["windows"]), int(d["smoothgrad_samples"]),
                   {str(k): str(v) for k, v in d["files"].items()}, float(d["seconds"]), str(d["weighting"]),
                   str(d["layer_chosen"]), str(d["smoothgrad_kind"]),
                   {str(k): float(v) for k, v in d["raw_max"].items()}, version)


def resolve_label(label: str | int, labels: dict[int, str]) -> int:
    """A label value from a value or a name of the model's label map (background refused)."""
    text = str(label)
    value = int(text) if text.isdigit() else next((k for k, v in labels.items() if v == text), None)
    if value is None or value not in labels or value == 0:
        choices = ", ".join(f"{k}={v}" for k, v in labels.items() if k)
        raise InputError(f"label {label!r} is not a foreground label of this model", hint=f"use one of {choices}")
    return value


def _channel(seg: Predictor, label: int) -> int:
    if not seg.cfg.regions:
        return label
    for j, (_, _, value) in enumerate(seg.cfg.region_order()):
        if value == label:
            return j
    raise InputError(f"no region of this model decodes to label {label}")


def _resample(arr: np.ndarray, src_affine: Any, dst: Grid, mode: str) -> np.ndarray:
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None],
                     meta={"affine": torch.as_tensor(np.asarray(src_affine), dtype=torch.float64)})
    out = SpatialResample(mode=mode, padding_mode="zeros", align_corners=False, dtype=np.float32)(
        img, dst_affine=torch.as_tensor(dst.affine, dtype=torch.float64), spatial_size=dst.shape)
    return np.asarray(torch.as_tensor(out)[0])


def write_map(path: Path, data: np.ndarray, grid: Grid) -> Path:
    """A float32 NIfTI map on ``grid`` (qform = sform), written atomically and re-read to check its grid."""
    img = nifti_image(data.astype(np.float32), grid.affine, "medpipe explanation map")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
        require_same_grid(grid_of(cast(nib.Nifti1Image, nib.load(str(tmp)))), grid, path, what="written map grid")
    return path


def explain(run: Path, scan: Path, label: str | int | None, out_dir: Path, *, device: str = "auto",
            target_mask: Path | None = None, layer: str | None = None, n_samples: int = 8, noise: float = 0.15,
            margin_mm: float = 10.0, weighting: str | None = None, smoothgrad_kind: str = "gradxinput",
            class_name: str | int | None = None) -> ExplainResult:
    """Explain label ``label`` of the segmentation model in ``run`` on ``scan`` into ``out_dir``; for a classifier
    (``task: classification``), class ``class_name`` (default: the predicted class) instead.

    Segmentation: the score explained is the label's logit summed inside the model's own predicted mask of that
    label (or inside ``target_mask``, a label map on the scan's grid, e.g. a reference segmentation or another
    model's output). ``weighting``: ``hirescam`` (default for segmentation) or ``gradcam`` (default for
    classifiers)."""
    t0 = time.perf_counter()
    if weighting is not None and weighting not in WEIGHTINGS:
        raise InputError(f"unknown class activation weighting {weighting!r}", hint=f"one of {', '.join(WEIGHTINGS)}")
    ensure_writable_dir(out_dir)
    seg = Predictor(find_checkpoint(run), device)
    case = _one_case(seg, scan)
    if seg.cfg.is_classification:
        if label is not None or target_mask is not None:
            raise InputError("--label and --mask are for segmentation models; this model is a classifier",
                             path=seg.checkpoint, hint="omit them (the predicted class is explained) or use --class")
        return _explain_classifier(seg, case, out_dir, class_name, layer, weighting or "gradcam", t0)
    if label is None:
        choices = ", ".join(f"{k}={v}" for k, v in seg.cfg.labels.items() if k)
        raise InputError("--label is required to explain a segmentation model", hint=f"one of {choices}")
    if class_name is not None:
        raise InputError("--class is for classifiers; this model segments", hint="use --label")
    weighting = weighting or "hirescam"
    value = resolve_label(label, seg.cfg.labels)
    name = seg.cfg.labels[value]
    pre = preprocess(seg.cfg, with_label=False, load=False)
    src = MetaTensor(torch.from_numpy(case.array), meta={"affine": torch.as_tensor(case.grid.affine)})
    net = pre({"image": src})["image"]
    net_affine = np.asarray(net.affine, dtype=float)
    net_grid = Grid(tuple(int(s) for s in net.shape[1:]), net_affine)  # type: ignore[arg-type]
    if target_mask is None:
        logits, _ = seg.logits(net[None])
        target = (label_scores(logits[0].float(), seg.cfg).argmax(dim=0) == value).cpu().numpy()
        how = "predicted mask of the label (network grid)"
    else:
        ref, info = load_label(target_mask)
        require_same_grid(Grid(ref.shape, info.affine), case.grid, target_mask, what="target mask grid")  # type: ignore[arg-type]
        target = _resample((ref == value).astype(np.float32), case.grid.affine, net_grid, "nearest") > 0.5
        how = f"label {value} of {target_mask.name}"
    if not target.any():
        raise InputError(f"no voxel of label {value} ({name}) to explain: the {how} is empty", path=scan,
                         hint="pass --mask with a segmentation of the structure")
    margin = int(np.ceil(margin_mm / min(seg.cfg.transforms.spacing_mm)))
    maps = explain_network(seg.model, net.as_tensor().to(seg.device), target, _channel(seg, value),
                           seg.cfg.inference.roi_size_vox, layer=layer, weighting=weighting,
                           smoothgrad_kind=smoothgrad_kind, margin_vox=margin, n_samples=n_samples, noise=noise)
    image = case.array[0]
    on_source = _resample(target.astype(np.float32), net_affine, case.grid, "nearest") > 0.5
    files: dict[str, str] = {}
    stem = f"{case.case_id}.{name}"
    for kind, arr in ((weighting, maps.cam), ("smoothgrad", maps.smoothgrad)):
        on_grid = np.clip(_resample(arr, net_affine, case.grid, "bilinear"), 0.0, 1.0)
        files[f"{kind}_nifti"] = write_map(out_dir / f"{stem}.{kind}.nii.gz", on_grid, case.grid).name
        png = overlay_png(image, on_grid, on_source, case.grid, f"{kind} · {value} {name}")
        write_bytes_atomic(out_dir / f"{stem}.{kind}.png", png)
        files[f"{kind}_png"] = f"{stem}.{kind}.png"
    result = ExplainResult(case.case_id, value, name, how, int(target.sum()), maps.layer, maps.windows, n_samples,
                           files, round(time.perf_counter() - t0, 3), weighting,
                           "given" if layer else "automatic", smoothgrad_kind,
                           {weighting: maps.raw_max[0], "smoothgrad": maps.raw_max[1]})
    write_json_atomic(out_dir / f"{stem}.explain.json", {**result.to_json(), "model": seg.checkpoint.name,
                                                          "model_sha256": seg.model_sha256,
                                                          "input_sha256": case.input_sha256, "versions": versions()})
    return result


def _one_case(seg: Predictor, scan: Path) -> LoadedCase:
    cases = collect_inputs([scan], seg.cfg.channels)
    if len(cases) != 1:
        raise InputError(f"expected one scan, found {len(cases)} cases", path=scan)
    return load_case(cases[0], seg.cfg.in_channels)


def resolve_class(cls: str | int, classes: tuple[str, ...]) -> int:
    """A class index from an index or a name of the classifier's classes."""
    text = str(cls)
    index = int(text) if text.isdigit() else (classes.index(text) if text in classes else None)
    if index is None or not 0 <= index < len(classes):
        raise InputError(f"class {cls!r} is not a class of this model",
                         hint="use one of " + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))
    return index


def _explain_classifier(seg: Predictor, case: LoadedCase, out_dir: Path, class_name: str | int | None,
                        layer: str | None, weighting: str, t0: float) -> ExplainResult:
    """Grad-CAM of a classifier for one class (given, or the predicted one) on the whole preprocessed volume,
    written on the scan's grid like the segmentation maps."""
    wanted = None if class_name is None else resolve_class(class_name, seg.cfg.classes)
    src = MetaTensor(torch.from_numpy(case.array), meta={"affine": torch.as_tensor(case.grid.affine)})
    net = classification_preprocess(seg.cfg, load=False)({"image": src})["image"]
    cam, index, used = classifier_cam(seg.model, net.as_tensor().to(seg.device), wanted, layer, weighting)
    name = seg.cfg.classes[index]
    on_grid = np.clip(_resample(cam, np.asarray(net.affine, dtype=float), case.grid, "bilinear"), 0.0, 1.0)
    stem = f"{case.case_id}.{name}"
    files = {f"{weighting}_nifti": write_map(out_dir / f"{stem}.{weighting}.nii.gz", on_grid, case.grid).name}
    png = overlay_png(case.array[0], on_grid, on_grid >= 0.5, case.grid, f"{weighting} · class {index} {name}",
                      outline="map >= 0.5")
    write_bytes_atomic(out_dir / f"{stem}.{weighting}.png", png)
    files[f"{weighting}_png"] = f"{stem}.{weighting}.png"
    how = "predicted class" if wanted is None else "given class"
    result = ExplainResult(case.case_id, index, name, how, 0, used, 1, 0, files, round(time.perf_counter() - t0, 3),
                           weighting, "given" if layer else "automatic", "none", {weighting: float(cam.max())})
    write_json_atomic(out_dir / f"{stem}.explain.json", {**result.to_json(), "model": seg.checkpoint.name,
                                                          "model_sha256": seg.model_sha256,
                                                          "input_sha256": case.input_sha256, "versions": versions()})
    return result
