"""nnU-Net-style DynUNet topology: kernel sizes and strides from patch size and spacing."""

from __future__ import annotations


def dynunet_topology(patch_size: tuple[int, ...], spacing: tuple[float, ...], depth: int) -> tuple[list, list]:
    """nnU-Net-style kernels and strides: stride 2 along an axis while it is not much coarser than the finest
    axis and its size allows; 3x3x3 kernels, 1 along axes that are too anisotropic at that level."""
    sizes, spac = list(patch_size), list(spacing)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    for _ in range(depth - 1):
        finest = min(spac)
        stride = [2 if (s <= 2 * finest and n >= 8) else 1 for s, n in zip(spac, sizes, strict=False)]
        kernels.append([3 if s <= 2 * finest else 1 for s in spac])
        strides.append(stride)
        sizes = [n // st for n, st in zip(sizes, stride, strict=False)]
        spac = [s * st for s, st in zip(spac, stride, strict=False)]
    kernels.append([3, 3, 3])
    return kernels, strides
