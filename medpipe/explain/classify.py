"""Class activation maps of a 3D classification network (MONAI's DenseNet121 or ResNet, whole-volume input): Grad-CAM
for a given or the predicted class, upsampled to the input grid.

The score is the class logit (one number per volume, so no mask is needed). The default layer is the last module
whose output is still a spatial feature map (more than one voxel): MONAI's ResNet ``layer4``, DenseNet121
``class_layers.relu``, i.e. the input of the global pooling, as in Selvaraju et al. (2017). For a network that ends
in global average pooling and one linear layer, the Grad-CAM and HiResCAM weightings at that layer give the same
map up to a constant factor.
"""

from __future__ import annotations

import numpy as np
import torch

from medpipe.errors import InputError
from medpipe.explain.cam import forward_shapes, layer_map


def classifier_layer(network: torch.nn.Module, image: torch.Tensor) -> str:
    """The default class-activation layer of ``network`` for ``image`` (C, X, Y, Z): the last module, in the order
    modules finish their forward pass, whose output is a (B, C, X, Y, Z) feature map of more than one voxel."""
    seen = forward_shapes(network, image[None].float())
    names = [n for n, _, o in seen if len(o) == len(image.shape) + 1 and int(np.prod(o[2:])) > 1]
    if not names:
        raise InputError("no spatial feature map in this network for a class activation map",
                         hint="name a layer (a name from network.named_modules())")
    return names[-1]


def classifier_cam(network: torch.nn.Module, image: torch.Tensor, class_index: int | None = None,
                   layer: str | None = None, weighting: str = "gradcam") -> tuple[np.ndarray, int, str]:
    """Grad-CAM of ``network`` (returning (B, classes) logits) on ``image`` (C, X, Y, Z) for ``class_index`` (the
    predicted class, the argmax of the logits, when None) at ``layer`` (:func:`classifier_layer` when None).

    Returns the map (X, Y, Z) on the input grid, scaled to [0, 1] by its maximum (all 0 when nothing is
    positive), the class explained and the layer used."""
    network.eval()
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    x = image[None].float().to(device)
    name = layer or classifier_layer(network, image.to(device))
    with torch.no_grad():
        logits = network(x)
    if logits.ndim != 2:
        raise InputError(f"the network returns {tuple(logits.shape)}, expected (batch, classes) logits")
    if class_index is None:
        class_index = int(logits[0].argmax())
    if not 0 <= class_index < int(logits.shape[1]):
        raise InputError(f"class {class_index} out of range: the network has {int(logits.shape[1])} classes")
    chosen = class_index
    cam, _ = layer_map(network, x, lambda out: out[0, chosen], name, weighting)
    arr = cam.cpu().numpy().astype(np.float32)
    peak = float(arr.max())
    return (arr / peak if peak > 0 else arr), chosen, name
