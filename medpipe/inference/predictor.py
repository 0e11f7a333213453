"""The predictor: a loaded model set plus its preprocessing, ensembled sliding-window scores and export onto the
source grid.

Scores (softmax, or decoded sigmoid regions: :func:`medpipe.labels.label_scores`) of every model and every mirror
pass are added into one running sum where the window outputs are stitched (the device, or the host on the last rung
of the memory ladder); the mask is the argmax of the mean. With more than one pass the sum of the passes' entropies
is kept too, so that the mutual information (pass disagreement) costs nothing more.

A scan with more voxels than ``inference.max_slab_voxels`` is read, preprocessed and run in slabs along its slice
axis (:mod:`medpipe.inference.slabs`); the slabs' cores are stitched into the same network-grid scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import KeepLargestConnectedComponent

from medpipe.config import PipelineConfig
from medpipe.inference.export import labels_on_grid
from medpipe.inference.inputs import LoadedCase
from medpipe.inference.models import ModelSet, find_checkpoint, load_model_set
from medpipe.inference.sidecar import EnsembleInfo, SegmentDetails, SlabSplit
from medpipe.inference.slabs import Slab, SlabPlan, make_plan, slab_image
from medpipe.inference.tta import flip_spatial, mirror_passes
from medpipe.labels import label_scores
from medpipe.models.trainrange import TrainingRange
from medpipe.runtime import resolve_device
from medpipe.transforms import preprocess

__all__ = ["EnsembleScores", "Prediction", "Predictor", "find_checkpoint"]

#: The memory ladder on CUDA, tried in order after an out-of-memory error: stitch on the device; stitch into a
#: device buffer flushed to the host slab by slab (MONAI's buffered mode, as SlidingWindowInfererAdapt); stitch
#: on the host. On CPU there is one rung, ``cpu``.
RUNGS = ("device", "buffered", "host")


@dataclass(frozen=True)
class EnsembleScores:
    """The mean scores (C, X, Y, Z) on the network grid, and what produced them."""

    mean: torch.Tensor
    #: Sum over passes of each pass's entropy (X, Y, Z), or None with a single pass.
    entropy_sum: torch.Tensor | None
    n_passes: int
    rung: str


@dataclass(frozen=True)
class Prediction:
    """One case's result: the mask on the source grid, the network-grid scores (affine in ``scores.affine``)
    and the details that go into the sidecar."""

    labels: np.ndarray
    scores: MetaTensor
    entropy_sum: torch.Tensor | None
    n_passes: int
    details: SegmentDetails


class Predictor:
    """A loaded model set plus its preprocessing: segments one case at a time.

    ``checkpoint``: a checkpoint, a run folder, a folder of ``fold_*/`` run folders, several of these, or a
    loaded :class:`ModelSet` (:func:`medpipe.inference.models.load_model_set`). ``folds`` picks folds; ``tta``
    overrides ``inference.tta`` (none | flip | all)."""

    def __init__(self, checkpoint: Path | Sequence[Path] | ModelSet, device: str = "auto",
                 overlap: float | None = None, sw_batch_size: int | None = None, engine: str = "torch", *,
                 folds: Sequence[int] | None = None, tta: str | None = None) -> None:
        # ONNX Runtime runs on the CPU: "auto" means the CPU for that engine
        self.device = resolve_device("cpu" if engine == "onnxruntime" and device == "auto" else device)
        self.engine = engine
        self.model_set = (checkpoint if isinstance(checkpoint, ModelSet)
                          else load_model_set(checkpoint, folds, self.device, engine))
        first = self.model_set.models[0]
        self.checkpoint = first.checkpoint
        self.model = first.network
        self.models = [m.network for m in self.model_set.models]
        #: What the first model was trained on (None for packages and for older checkpoints).
        self.training_range: TrainingRange | None = first.training_range
        overrides = {"overlap": overlap, "sw_batch_size": sw_batch_size, "tta": tta}
        self.cfg: PipelineConfig = first.cfg.with_overrides(
            inference={k: v for k, v in overrides.items() if v is not None}
        )
        self.model_sha256 = self.model_set.sha256
        self.label_values = list(range(self.cfg.num_classes))
        allowed = set(self.cfg.transforms.mirror_axes)
        for m in self.model_set.models[1:]:
            allowed &= set(m.cfg.transforms.mirror_axes)
        self.mirror_axes = tuple(sorted(allowed))
        self.passes = mirror_passes(self.cfg.inference.tta, self.mirror_axes)
        self._pre: Any = None

    # ----- scores on the network grid -----------------------------------------------------------------------
    def logits(self, image: torch.Tensor, network: torch.nn.Module | None = None,
               first_rung: int = 0) -> tuple[torch.Tensor, str]:
        """Sliding-window logits for a (1, C, X, Y, Z) network-space tensor; returns (logits, memory rung).
        On CUDA the ladder (:data:`RUNGS`) starts at ``first_rung``."""
        inf = self.cfg.inference
        net = network if network is not None else self.model
        use_amp = inf.amp and self.device.startswith("cuda")

        # fp16 stitching on CUDA: MONAI stitches in the input's dtype, so an fp16 input halves the output buffers
        x = image.to(self.device, dtype=torch.float16 if use_amp else image.dtype)

        def run(out_device: str, buffer_steps: int | None = None) -> torch.Tensor:
            shape = list(image.shape[2:])
            with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                return sliding_window_inference(  # type: ignore[return-value]
                    x, roi_size=inf.roi_size_vox, sw_batch_size=inf.sw_batch_size,
                    predictor=net, overlap=inf.overlap, mode=inf.blend, sw_device=self.device,
                    device=out_device, buffer_steps=buffer_steps, buffer_dim=shape.index(max(shape)),
                )

        if not self.device.startswith("cuda"):
            return run(self.device), "cpu"
        for i in range(first_rung, len(RUNGS)):
            try:
                if RUNGS[i] == "device":
                    return run(self.device), "device"
                if RUNGS[i] == "buffered":
                    return run("cpu", buffer_steps=1), "buffered"
                return run("cpu"), "host"
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if i == len(RUNGS) - 1:
                    raise
        raise RuntimeError("unreachable")  # pragma: no cover

    def scores(self, image: torch.Tensor, first_rung: int = 0, slab: tuple[int, Slab] | None = None
               ) -> EnsembleScores:
        """Mean scores over every model and mirror pass of a (1, C, X, Y, Z) network-space image (on CUDA the
        memory ladder starts at rung ``first_rung``). ``slab`` (split axis, slab) when ``image`` is one slab of a
        split case: each pass runs on its part of the slab (:meth:`Slab.extent`) and only the core is kept."""
        total: torch.Tensor | None = None
        entropy_sum: torch.Tensor | None = None
        n_total = len(self.model_set.models) * len(self.passes)
        rung_index, rung = first_rung, "cpu"
        for member in self.model_set.models:
            for axes in self.passes:
                x, core = image, None
                if slab is not None:
                    ax, part = slab
                    at, n = part.extent(ax in axes)
                    x, core = image.narrow(ax + 2, at, n), (ax + 1, part.core_lo - part.lo - at)
                logits, rung = self.logits(flip_spatial(x, axes), member.network, rung_index)
                rung_index = RUNGS.index(rung) if rung in RUNGS else 0
                s = flip_spatial(label_scores(logits[0], self.cfg), axes)
                del logits
                if core is not None and slab is not None:
                    s = s.narrow(core[0], core[1], slab[1].core_hi - slab[1].core_lo)
                if total is None:
                    total = s
                else:
                    total = total.to(s.device)
                    total += s
                if n_total > 1:
                    h = entropy(s)
                    entropy_sum = h if entropy_sum is None else entropy_sum.to(h.device) + h
        if total is None:  # pragma: no cover - passes and models are never empty
            raise RuntimeError("no pass ran")
        return EnsembleScores(total / n_total, entropy_sum, n_total, rung)

    # ----- one case -----------------------------------------------------------------------------------------
    def split_scores(self, plan: SlabPlan) -> EnsembleScores:
        """Mean scores of a split case: each slab preprocessed and run in turn, its core copied into scores of
        the whole network grid (C, X, Y, Z)."""
        mean: torch.Tensor | None = None
        entropy_sum: torch.Tensor | None = None
        rung_index, rung, n_passes = 0, "cpu", 1
        ax = plan.axis
        for slab in plan.slabs:
            ens = self.scores(slab_image(self.cfg, plan, slab)[None], rung_index, (ax, slab))
            rung, n_passes = ens.rung, ens.n_passes
            rung_index = RUNGS.index(rung) if rung in RUNGS else 0
            n = slab.core_hi - slab.core_lo
            part = ens.mean
            if mean is None:
                mean = part.new_empty((part.shape[0], *plan.grid.shape))
            mean = mean.to(part.device)
            mean.narrow(ax + 1, slab.core_lo, n).copy_(part)
            if ens.entropy_sum is not None:
                h = ens.entropy_sum
                entropy_sum = (h.new_empty(plan.grid.shape) if entropy_sum is None else entropy_sum).to(h.device)
                entropy_sum.narrow(ax, slab.core_lo, n).copy_(h)
            del ens
        if mean is None:  # pragma: no cover - a plan has at least two slabs
            raise RuntimeError("no slab ran")
        return EnsembleScores(mean, entropy_sum, n_passes, rung)

    def prepare(self, case: LoadedCase) -> MetaTensor | SlabPlan:
        """The case preprocessed onto the network grid: (C, X, Y, Z) with its affine (the read stage); for a scan
        larger than ``inference.max_slab_voxels``, the plan of its slabs (whole-volume statistics gathered in a
        streaming pass; each slab is preprocessed when the network runs it)."""
        plan = make_plan(self.cfg, case.array, case.grid, tuple({a for p in self.passes for a in p}))
        if plan is not None:
            return plan
        if self._pre is None:
            self._pre = preprocess(self.cfg, with_label=False, load=False)
        array = case.array.astype(np.float32, copy=False)  # integer voxels (``keep_integers``) as float32
        img = MetaTensor(torch.from_numpy(array), meta={"affine": torch.as_tensor(case.grid.affine)})
        return self._pre({"image": img})["image"]

    def finish(self, case: LoadedCase, net_img: MetaTensor | SlabPlan, ens: EnsembleScores,
               timings: dict[str, float] | None = None) -> Prediction:
        """Export the mean scores onto the case's source grid (the mask) and collect the details."""
        t2 = time.perf_counter()
        probs_mt = MetaTensor(ens.mean, meta={"affine": net_img.affine.to(torch.float64)})
        split = None
        if isinstance(net_img, SlabPlan):
            split = SlabSplit(len(net_img.slabs), net_img.axis, net_img.margin_vox, self.cfg.inference.max_slab_voxels)
        labels = labels_on_grid(probs_mt, case.grid, self.label_values)
        labels = self._postprocess(labels)
        t = timings or {}
        details = SegmentDetails(
            tuple(int(v) for v in ens.mean.shape[1:]), tuple(self.cfg.transforms.spacing_mm), ens.rung,
            float(t.get("preprocess", 0.0)), float(t.get("inference", 0.0)), round(time.perf_counter() - t2, 3),
            self.engine, len(self.model_set.models),
            "float16" if self.cfg.inference.amp and self.device.startswith("cuda") else "float32", self.describe(),
            split,
        )
        return Prediction(labels, probs_mt, ens.entropy_sum, ens.n_passes, details)

    def run_network(self, net_img: MetaTensor | SlabPlan) -> EnsembleScores:
        """The ensemble's mean scores of a preprocessed case, or of a split case slab by slab (the device stage)."""
        ens = (self.split_scores(net_img) if isinstance(net_img, SlabPlan)
               else self.scores(torch.as_tensor(net_img)[None]))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return ens

    def predict(self, case: LoadedCase) -> Prediction:
        """Mask on the case's source grid plus the network-grid mean scores and sidecar details."""
        t0 = time.perf_counter()
        net_img = self.prepare(case)
        t1 = time.perf_counter()
        ens = self.run_network(net_img)
        t2 = time.perf_counter()
        return self.finish(case, net_img, ens, {"preprocess": round(t1 - t0, 3), "inference": round(t2 - t1, 3)})

    def segment(self, case: LoadedCase) -> tuple[np.ndarray, SegmentDetails]:
        """Mask (I, J, K) on the case's source grid, and timings/details for the sidecar."""
        pred = self.predict(case)
        return pred.labels, pred.details

    def describe(self) -> EnsembleInfo:
        """Models, folds and mirror passes, for the sidecar."""
        return EnsembleInfo(tuple(m.describe() for m in self.model_set.models), tuple(self.model_set.folds),
                            self.cfg.inference.tta, tuple(self.mirror_axes), tuple(tuple(p) for p in self.passes),
                            len(self.model_set.models) * len(self.passes))

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        keep = self.cfg.inference.keep_largest
        if not keep:
            return labels
        kept = KeepLargestConnectedComponent(applied_labels=list(keep), independent=True)(
            torch.as_tensor(labels[None].astype(np.int64)))
        return np.asarray(kept[0]).astype(labels.dtype)


def as_distribution(scores: torch.Tensor) -> torch.Tensor:
    """Scores (C, ...) as a distribution over C: softmax scores unchanged; decoded region scores (which can be
    -1 for labels no region decodes to) clipped to [0, 1] and renormalised."""
    p = scores.clamp(0.0, 1.0)
    return p / p.sum(dim=0, keepdim=True).clamp_min(1e-12)


def entropy(scores: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats (X, Y, Z) of per-voxel distributions (C, X, Y, Z)."""
    p = as_distribution(scores)
    return -(p * p.clamp_min(1e-12).log()).sum(dim=0)
