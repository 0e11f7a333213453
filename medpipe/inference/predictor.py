"""The predictor: a loaded model plus its preprocessing, sliding-window logits and export onto the source grid."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import KeepLargestConnectedComponent

from medpipe.config import PipelineConfig
from medpipe.errors import CheckpointError
from medpipe.inference.export import labels_on_grid
from medpipe.inference.inputs import LoadedCase
from medpipe.inference.sidecar import SegmentDetails
from medpipe.labels import label_scores
from medpipe.models.checkpoint import load_checkpoint, model_from_loaded
from medpipe.models.package import is_package, load_package_models
from medpipe.models.trainrange import TrainingRange
from medpipe.runtime import resolve_device, sha256_file
from medpipe.transforms import preprocess


def find_checkpoint(run: Path) -> Path:
    """A run folder's ``best.pt`` (else ``last.pt``), or a checkpoint file given directly."""
    if run.is_file() or is_package(run):
        return run
    if not run.is_dir():
        raise CheckpointError("run folder or checkpoint not found", path=run)
    for name in ("best.pt", "last.pt"):
        if (run / name).is_file():
            return run / name
    raise CheckpointError("run folder has no checkpoint (best.pt or last.pt)", path=run, hint="train first")


class Predictor:
    """A loaded model plus its preprocessing: segments one case at a time."""

    def __init__(self, checkpoint: Path, device: str = "auto", overlap: float | None = None,
                 sw_batch_size: int | None = None, engine: str = "torch") -> None:
        # ONNX Runtime runs on the CPU: "auto" means the CPU for that engine
        self.device = resolve_device("cpu" if engine == "onnxruntime" and device == "auto" else device)
        self.checkpoint = checkpoint
        self.engine = engine
        #: What the model was trained on (None for packages and for checkpoints written before medpipe stored it).
        self.training_range: TrainingRange | None = None
        if is_package(checkpoint):  # a medpipe package: one network per fold, probabilities averaged
            self.models, cfg, self.model_sha256 = load_package_models(checkpoint, self.device, engine)
        else:
            if engine != "torch":
                raise CheckpointError(f"--engine {engine} needs a package with ONNX files", path=checkpoint,
                                      hint="medpipe package RUN_DIR --onnx -o model.zip")
            ckpt = load_checkpoint(checkpoint)
            model, cfg = model_from_loaded(ckpt, checkpoint, self.device)
            self.models = [model]
            self.model_sha256 = sha256_file(checkpoint)
            self.training_range = TrainingRange.from_json(ckpt.get("training_range", {}))
        self.model = self.models[0]
        overrides = {"overlap": overlap, "sw_batch_size": sw_batch_size}
        self.cfg: PipelineConfig = cfg.with_overrides(
            inference={k: v for k, v in overrides.items() if v is not None}
        )
        self.label_values = list(range(cfg.num_classes))
        self._pre: Any = None

    def logits(self, image: torch.Tensor, model: torch.nn.Module | None = None) -> tuple[torch.Tensor, str]:
        """Sliding-window logits for a (1, C, X, Y, Z) network-space tensor; returns (logits, memory rung)."""
        inf = self.cfg.inference
        net = self.model if model is None else model
        use_amp = inf.amp and self.device.startswith("cuda")

        def run(out_device: str) -> torch.Tensor:
            with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
                return sliding_window_inference(  # type: ignore[return-value]
                    image.to(self.device), roi_size=inf.roi_size_vox, sw_batch_size=inf.sw_batch_size,
                    predictor=net, overlap=inf.overlap, mode=inf.blend, sw_device=self.device,
                    device=out_device,
                )

        if not self.device.startswith("cuda"):
            return run(self.device), "cpu"
        try:
            return run(self.device), "gpu"
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return run("cpu"), "gpu-windows-cpu-aggregation"

    def segment(self, case: LoadedCase) -> tuple[np.ndarray, SegmentDetails]:
        """Mask (I, J, K) on the case's source grid, and timings/details for the sidecar."""
        if self._pre is None:
            self._pre = preprocess(self.cfg, with_label=False, load=False)
        t0 = time.perf_counter()
        img = MetaTensor(torch.from_numpy(case.array), meta={"affine": torch.as_tensor(case.grid.affine)})
        net_img = self._pre({"image": img})["image"]
        t1 = time.perf_counter()
        scores = []
        for model in self.models:  # folds of a package: mean of the per-fold label scores
            logits, rung = self.logits(net_img[None], model)
            scores.append(label_scores(logits[0].float(), self.cfg))  # softmax, or decoded sigmoid regions
        probs = scores[0] if len(scores) == 1 else torch.stack(scores).mean(dim=0)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        probs_mt = MetaTensor(probs.to(self.device), meta={"affine": net_img.affine.to(torch.float64)})
        labels = labels_on_grid(probs_mt, case.grid, self.label_values)
        labels = self._postprocess(labels)
        t3 = time.perf_counter()
        details = SegmentDetails(tuple(int(v) for v in net_img.shape[1:]), tuple(self.cfg.transforms.spacing_mm), rung,
                                 round(t1 - t0, 3), round(t2 - t1, 3), round(t3 - t2, 3), self.engine,
                                 len(self.models))
        return labels, details

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        keep = self.cfg.inference.keep_largest
        if not keep:
            return labels
        kept = KeepLargestConnectedComponent(applied_labels=list(keep), independent=True)(
            torch.as_tensor(labels[None].astype(np.int64)))
        return np.asarray(kept[0]).astype(labels.dtype)
