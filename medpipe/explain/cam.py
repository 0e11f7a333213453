"""Class activation maps from one layer: the hook that captures a layer's output and its gradient, the two weightings
(Grad-CAM's channel means, HiResCAM's element-wise products) and the upsampling to the input grid. Shared by the
segmentation maps (:mod:`medpipe.explain.maps`) and the classifier maps (:mod:`medpipe.explain.classify`).

Why not ``monai.visualize.GradCAM``: it has only the channel-mean weighting, and its ``ModelWithHooks`` leaves its
hooks on the network. Here a forward hook stores the layer's output and hands the rest of the network a copy, so
that the gradient of the score with respect to that output is taken with ``torch.autograd.grad`` (no ``.grad``
filled on the parameters) even when a later module works in place; the hook is removed afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from medpipe.errors import InputError

#: The weightings of a class activation map: ``hirescam`` = ReLU(Σ_c ∂s/∂A_c ⊙ A_c) (Draelos & Carin 2020),
#: ``gradcam`` = ReLU(Σ_c mean(∂s/∂A_c) A_c) (Selvaraju et al. 2017).
WEIGHTINGS = ("hirescam", "gradcam")


@contextmanager
def captured(model: torch.nn.Module, layer: str) -> Iterator[dict[str, torch.Tensor]]:
    """While open, each forward pass stores module ``layer``'s output as ``store["acti"]`` (the tensor the gradient
    is taken against); the network continues with a copy of it."""
    modules = dict(model.named_modules())
    if layer not in modules or not layer:
        some = ", ".join(n for n in list(modules)[1:8] if n)
        raise InputError(f"no layer {layer!r} in the network", hint=f"a name from model.named_modules(), e.g. {some}")
    store: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, _i: Any, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            store["acti"] = out
            return out.clone()
        return None

    handle = modules[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def layer_map(model: torch.nn.Module, x: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor], layer: str,
              weighting: str = "hirescam") -> tuple[torch.Tensor, torch.Tensor]:
    """The class activation map of ``layer`` for the scalar ``score(model(x))``, ``x`` (1, C, X, Y, Z): a
    (X, Y, Z) map >= 0 upsampled (trilinear) to the input grid, and the network's output (detached)."""
    if weighting not in WEIGHTINGS:
        raise InputError(f"unknown weighting {weighting!r}", hint=f"one of {', '.join(WEIGHTINGS)}")
    with captured(model, layer) as store, torch.enable_grad():
        out = model(x)
        if "acti" not in store:
            raise InputError(f"layer {layer!r} produced no tensor output in the forward pass")
        head = out[0] if isinstance(out, list | tuple) else out
        value = score(head)
        acti = store["acti"]
        (grad,) = torch.autograd.grad(value, acti, allow_unused=True)
    if grad is None:  # the score does not depend on this layer
        grad = torch.zeros_like(acti)
    spatial = tuple(range(2, acti.ndim))
    if weighting == "gradcam":
        cam = (grad.mean(dim=spatial, keepdim=True) * acti).sum(dim=1, keepdim=True)
    else:
        cam = (grad * acti).sum(dim=1, keepdim=True)
    cam = torch.relu(cam.detach().float())
    if tuple(cam.shape[2:]) != tuple(x.shape[2:]):
        cam = torch.nn.functional.interpolate(cam, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)
    return cam[0, 0], head.detach()


def forward_shapes(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, first input's shape, output's shape) of every named module whose input and output are tensors, in
    the order the modules finish their forward pass on ``x`` (in eval mode; the model's mode is restored)."""
    seen: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def record(name: str) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, inputs: Any, out: Any) -> None:
            first = inputs[0] if isinstance(inputs, tuple) and inputs else inputs
            if isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor):
                seen.append((name, tuple(first.shape), tuple(out.shape)))
        return hook

    hooks = [mod.register_forward_hook(record(name)) for name, mod in model.named_modules() if name]
    training = model.training
    model.eval()  # batch norm: no update of its running statistics, and batches of one are fine
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    return seen
