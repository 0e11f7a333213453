"""``medpipe infer`` on nnU-Net packages: nnU-Net's preprocessing, tiling and export inside medpipe's predictor.

:class:`NnunetPackagePredictor` is a :class:`~medpipe.inference.predictor.Predictor` whose three stages are
nnU-Net's (:mod:`medpipe.inference.nnunet`): ``prepare`` = read order, transpose, crop to non-zero, normalise,
resample; ``run_network`` = Gaussian tiles at nnU-Net's step with mirroring over the passes asked for, folds
averaged in logit space; ``finish`` = logits resampled back to the crop, labels (argmax, or regions painted in
``regions_class_order``), pasted, transposed back, postprocessing from the manifest. The mask is therefore the
one ``medpipe infer-nnunet`` (and ``nnUNetv2_predict``) writes; everything after it — the NIfTI writer, DICOM
outputs, lesion tables, QC, probability maps, the sidecar — is medpipe's ordinary output path.

Scores for QC and ``--save-probabilities`` are the per-label scores of the resampled logits
(:func:`medpipe.labels.label_scores`: softmax, or nnU-Net's region decoding) on the crop box, which is a
sub-grid of the source grid, so writing them onto the source grid is exact. Mirrored passes are averaged in logit
space inside each tile, as nnU-Net does, so there are no per-pass probabilities: the mutual information of
``--save-uncertainty`` is 0 (the entropy of the mean is real).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medpipe.config import PipelineConfig, config_from_dict
from medpipe.errors import InputError
from medpipe.inference.inputs import LoadedCase
from medpipe.inference.models import LoadedModel, ModelSet
from medpipe.inference.nnunet import (
    header_spacing,
    keep_largest_components,
    logits_to_labels,
    sliding_window_logits,
)
from medpipe.inference.predictor import EnsembleScores, Prediction, Predictor
from medpipe.inference.sidecar import EnsembleInfo, MemberRef, SegmentDetails
from medpipe.inference.tta import mirror_passes
from medpipe.labels import label_scores
from medpipe.models.importers.nnunet_package import load_nnunet_package
from medpipe.models.importers.nnunet_preprocess import CaseGeometry, preprocess, resample
from medpipe.models.importers.nnunet_record import NnunetRecord
from medpipe.models.manifest import Manifest
from medpipe.models.package import is_package, manifest_kind, read_package
from medpipe.runtime import resolve_device


@dataclass(frozen=True)
class NnunetCase:
    """A case after nnU-Net's preprocessing: (C, ...) float32 in nnU-Net's axis order, and how to undo it."""

    data: torch.Tensor
    geometry: CaseGeometry

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)


def package_config(manifest: Manifest, record: NnunetRecord) -> PipelineConfig:
    """The pipeline config that medpipe's output path reads for an nnU-Net package: labels, regions, channels,
    modality, the CT window (nnU-Net's 0.5/99.5 percentile clip: CT models get medpipe's HU check), mirror
    axes, and the sliding window as it runs (patch in nnU-Net's axes, 1 - tile step, Gaussian)."""
    ct = record.normalization_schemes[0] == "CTNormalization"
    props = record.intensity_properties[0] or {}
    patch = list(record.patch_size) if len(record.patch_size) == 3 else [1, *record.patch_size]
    raw: dict[str, Any] = {
        "name": manifest.name, "modality": "CT" if ct else "MR", "channels": list(record.channel_names),
        "labels": {lab.value: lab.name for lab in manifest.labels},
        "data": {"format": "nnunet"},
        "transforms": {"intensity": "ct_window" if ct else "zscore_nonzero",
                       **({"hu_window": [props["percentile_00_5"], props["percentile_99_5"]]} if ct and props else {}),
                       "mirror_axes": list(record.mirror_axes or ())},
        "inference": {"roi_size_vox": patch, "overlap": manifest.sliding_window.overlap, "sw_batch_size": 1,
                      "blend": "gaussian", "amp": False, "tta": "all" if record.mirror_axes else "none"},
    }
    if manifest.regions:
        raw["regions"] = [{"name": r.name, "labels": list(r.labels)} for r in manifest.regions]
    return config_from_dict(raw, source=f"{manifest.name} (nnU-Net package)")


class NnunetPackagePredictor(Predictor):
    """An nnU-Net package loaded for ``medpipe infer`` (one network per fold). ``tta``: none | flip | all
    (default all = nnU-Net's mirroring over the axes its checkpoint allows); ``overlap`` sets the tile step
    (1 - overlap; nnU-Net's is 0.5)."""

    def __init__(self, path: Path, device: str = "auto", overlap: float | None = None, *,
                 folds: Sequence[int] | None = None, tta: str | None = None) -> None:
        self.device = resolve_device(device)
        self.engine = "torch"
        contents = read_package(path)
        record, networks = load_nnunet_package(contents, folds, self.device)
        if overlap is not None:
            record = _with_step(record, 1.0 - overlap)
        self.record = record
        self.arch_name = contents.manifest.architecture.name
        cfg = package_config(contents.manifest, record)
        overrides = {"tta": tta, "overlap": overlap}
        self.cfg = cfg.with_overrides(inference={k: v for k, v in overrides.items() if v is not None})
        members = tuple(LoadedModel(net, self.cfg, Path(path), contents.manifest_sha256, fold)
                        for fold, net in networks.items())
        self.model_set = ModelSet(members, package_sha256=contents.manifest_sha256)
        self.checkpoint = Path(path)
        self.model = members[0].network
        self.models = [m.network for m in members]
        self.training_range = None
        self.model_sha256 = contents.manifest_sha256
        self.label_values = list(range(self.cfg.num_classes))
        self.mirror_axes = tuple(record.mirror_axes or ())
        self.passes = mirror_passes(self.cfg.inference.tta, self.mirror_axes)
        self._pre = None

    def prepare(self, case: LoadedCase) -> NnunetCase:  # type: ignore[override]
        """nnU-Net's preprocessing of a read case (medpipe reads (C, I, J, K); nnU-Net's readers give (C, K, J, I)
        with the NIfTI pixdim reversed)."""
        if case.array.shape[0] != self.record.num_input_channels:
            raise InputError(f"case '{case.case_id}' has {case.array.shape[0]} channels, the model "
                             f"{self.record.num_input_channels}")
        image = np.ascontiguousarray(case.array.transpose(0, 3, 2, 1))
        spacing = tuple(reversed(header_spacing(case.files) or case.grid.spacing_mm))
        data, geometry = preprocess(image, spacing, self.record)
        return NnunetCase(torch.from_numpy(data), geometry)

    @torch.inference_mode()
    def run_network(self, net_img: NnunetCase) -> EnsembleScores:  # type: ignore[override]
        """Fold-averaged logits (float16, as nnU-Net accumulates) on the preprocessed grid, on the CPU."""
        combos = [p for p in self.passes if p]
        x = net_img.data.to(self.device)
        total: torch.Tensor | None = None
        for network in self.models:
            out = sliding_window_logits(network, x, self.record, tta=bool(combos), combos=combos).cpu()
            total = out if total is None else total + out
        if total is None:  # pragma: no cover - a package has at least one fold
            raise InputError("the package has no folds")
        if len(self.models) > 1:
            total /= len(self.models)
        return EnsembleScores(total, None, len(self.models) * len(self.passes),
                              "device" if self.device.startswith("cuda") else "cpu")

    def finish(self, case: LoadedCase, net_img: NnunetCase, ens: EnsembleScores,  # type: ignore[override]
               timings: dict[str, float] | None = None) -> Prediction:
        """nnU-Net's export: the mask on the case's grid, and the label scores on the crop box."""
        t0 = time.perf_counter()
        record, geom = self.record, net_img.geometry
        current = list(record.target_spacing)
        if len(current) < len(geom.shape_after_cropping):
            current = [geom.spacing_transposed[0], *current]
        logits = resample(ens.mean.numpy(), geom.shape_after_cropping, current, geom.spacing_transposed,
                          *record.resampling_probabilities)
        seg = logits_to_labels(logits, record)
        full = np.zeros(geom.shape_before_cropping, dtype=np.uint8 if record.max_label < 255 else np.uint16)
        full[tuple(slice(a, b) for a, b in geom.bbox)] = seg
        full = full.transpose(record.transpose_backward)
        for step in record.postprocessing:
            full = keep_largest_components(full, step["kwargs"].get("labels_or_regions", []))
        labels = np.ascontiguousarray(full.transpose(2, 1, 0))
        scores = self._scores_on_crop(torch.from_numpy(logits), geom, case)
        t = timings or {}
        spacing = tuple(float(s) for s in current)
        details = SegmentDetails(net_img.shape[1:], spacing, ens.rung, float(t.get("preprocess", 0.0)),
                                 float(t.get("inference", 0.0)), round(time.perf_counter() - t0, 3), self.engine,
                                 len(self.models), "float16", self.describe())
        return Prediction(labels, scores, ens.entropy_sum, ens.n_passes, details)

    def _scores_on_crop(self, logits: torch.Tensor, geom: CaseGeometry, case: LoadedCase) -> MetaTensor:
        """Label scores (num_classes, I, J, K) of the crop box, with the affine of that box on the source grid."""
        scores = label_scores(logits, self.cfg)
        tb = self.record.transpose_backward
        scores = scores.permute(0, *[a + 1 for a in tb])  # nnU-Net's axes -> the file's (K, J, I)
        scores = scores.permute(0, 3, 2, 1).contiguous()  # -> (I, J, K)
        box_kji = [geom.bbox[tb[b]] for b in range(3)]
        start_ijk = [float(box_kji[2 - i][0]) for i in range(3)]
        shift = np.eye(4)
        shift[:3, 3] = start_ijk
        affine = torch.as_tensor(np.asarray(case.grid.affine, dtype=np.float64) @ shift)
        return MetaTensor(scores, meta={"affine": affine})

    def describe(self) -> EnsembleInfo:
        members = tuple(MemberRef(m.checkpoint.name, m.sha256, m.fold, self.arch_name) for m in self.model_set.models)
        return EnsembleInfo(members, tuple(self.model_set.folds), self.cfg.inference.tta, self.mirror_axes,
                            tuple(tuple(p) for p in self.passes), len(self.models) * len(self.passes))


def _with_step(record: NnunetRecord, step: float) -> NnunetRecord:
    if not 0.0 < step <= 1.0:
        raise InputError(f"--overlap {1.0 - step:g}: nnU-Net tiles need an overlap in [0, 1)")
    return dataclasses.replace(record, tile_step_size=step)


def predictor_for(runs: Sequence[Path], device: str = "auto", overlap: float | None = None,
                  sw_batch_size: int | None = None, engine: str = "torch", *, folds: Sequence[int] | None = None,
                  tta: str | None = None) -> Predictor:
    """The predictor for what ``medpipe infer`` was given: an nnU-Net package alone gets
    :class:`NnunetPackagePredictor`; anything else the ordinary :class:`Predictor`."""
    if len(runs) == 1 and is_package(Path(runs[0])) and manifest_kind(Path(runs[0])) == "nnunet":
        if engine != "torch":
            raise InputError(f"--engine {engine}: nnU-Net packages run with PyTorch", path=runs[0],
                             hint="use --engine torch")
        if sw_batch_size is not None:
            raise InputError("--sw-batch-size: nnU-Net packages run one tile at a time (its mirrored copies as one "
                             "batch)", path=runs[0], hint="leave --sw-batch-size out")
        return NnunetPackagePredictor(Path(runs[0]), device, overlap, folds=folds, tta=tta)
    return Predictor(list(runs), device, overlap, sw_batch_size, engine, folds=folds, tta=tta)
