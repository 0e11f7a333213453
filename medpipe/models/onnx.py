"""ONNX export of a fold (legacy TorchScript-free exporter, dynamic batch and spatial axes), its verification
against PyTorch, and an ONNX Runtime session wrapped as a module so the sliding window can call it.

``onnx`` and ``onnxruntime`` are the optional extra ``medpipe[onnx]``; they are imported only here.
"""

from __future__ import annotations

import importlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medpipe.errors import CheckpointError, MedpipeError

#: The largest |ONNX Runtime - PyTorch| difference in logits accepted at packaging time.
ONNX_TOLERANCE = 1e-4
OPSET = 17


def _require(module: str) -> Any:

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MedpipeError(f"{module} is not installed", hint="pip install 'medpipe[onnx]'") from err


@dataclass(frozen=True)
class OnnxCheck:
    """The packaging-time check of one fold: max |difference| of logits on a seeded test patch."""

    fold: int
    patch_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float = ONNX_TOLERANCE

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= self.tolerance


def export_onnx(model: nn.Module, in_channels: int, patch_size: tuple[int, ...]) -> bytes:
    """The model as ONNX bytes: input ``image`` (B, C, X, Y, Z), output ``logits`` (B, K, X, Y, Z); batch and
    spatial axes are dynamic. Uses ``torch.onnx.export(dynamo=False)`` (the dynamo exporter's DynUNet graph does
    not run in ONNX Runtime today)."""
    _require("onnx")
    buf = io.BytesIO()
    dummy = torch.zeros(1, in_channels, *patch_size)
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the legacy exporter's deprecation notice
        # torch's annotation of f lists paths only; the legacy (dynamo=False) exporter writes to file-like objects
        torch.onnx.export(model.eval(), (dummy,), buf,  # type: ignore[arg-type]
                          dynamo=False, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET)
    return buf.getvalue()


def ort_session(onnx_bytes: bytes, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session for the model bytes (``threads`` 0: ONNX Runtime's default)."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except (RuntimeError, ValueError) as err:  # onnxruntime raises its own Fail/InvalidGraph (RuntimeError)
        raise CheckpointError(f"ONNX Runtime cannot load the model: {str(err)[:200]}") from err


def verify_onnx(model: nn.Module, onnx_bytes: bytes, fold: int, in_channels: int,
                patch_size: tuple[int, ...], seed: int = 0) -> OnnxCheck:
    """Run PyTorch and ONNX Runtime on the same seeded test patch (1, C, *patch) and compare logits."""
    gen = torch.Generator().manual_seed(seed)
    patch = torch.randn(1, in_channels, *patch_size, generator=gen)
    with torch.no_grad():
        ref = model.eval()(patch).numpy()
    got = ort_session(onnx_bytes).run(["logits"], {"image": patch.numpy()})[0]
    diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    return OnnxCheck(fold, tuple(patch.shape), diff)


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind ``nn.Module.forward``: (B, C, X, Y, Z) float tensor in, logits out (on
    the input's device). Used by the ``onnxruntime`` engine in place of the PyTorch network."""

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        super().__init__()
        self.session = ort_session(onnx_bytes, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(["logits"], {"image": arr})[0]
        return torch.from_numpy(out).to(x.device)
