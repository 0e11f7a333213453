"""PNG overlays of an explanation map: axial, coronal and sagittal planes through the target structure's centre,
in radiological display (patient's right on the left), the map as a heat overlay and the target as a contour."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np

from medpipe.io.geometry import Grid


def overlay_png(image: np.ndarray, heat: np.ndarray, target: np.ndarray, grid: Grid, title: str,
                outline: str = "target region") -> bytes:
    """``image``, ``heat`` (in [0, 1]) and bool ``target``: (I, J, K) arrays on ``grid``; ``outline``: what the
    cyan contour of ``target`` is, for the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ornt = nib.orientations.io_orientation(grid.affine)
    img, hm, tg = (nib.orientations.apply_orientation(a, ornt) for a in (image, heat, target.astype(np.uint8)))
    sp = np.asarray(grid.spacing_mm)[np.argsort(ornt[:, 0])]
    centre = (np.round(np.argwhere(tg).mean(axis=0)).astype(int) if tg.any()
              else np.asarray(tg.shape) // 2)
    lo, hi = np.percentile(img, [0.5, 99.5])
    fig = Figure(figsize=(13, 4.8), facecolor="#111111", layout="constrained")
    views = [("axial", 2, sp[1] / sp[0], ("R", "L", "A", "P")), ("coronal", 1, sp[2] / sp[0], ("R", "L", "S", "I")),
             ("sagittal", 0, sp[2] / sp[1], ("A", "P", "S", "I"))]
    shown = None
    for i, (name, axis, aspect, (left, right, top, bottom)) in enumerate(views):
        ax = fig.add_subplot(1, 3, i + 1)
        take: list[slice | int] = [slice(None)] * 3
        take[axis] = int(centre[axis])
        ax.imshow(img[tuple(take)].T, cmap="gray", origin="lower", vmin=lo, vmax=hi, aspect=aspect,
                  interpolation="nearest")
        h = hm[tuple(take)].T
        shown = ax.imshow(np.ma.masked_less(h, 0.05), cmap="inferno", origin="lower", vmin=0, vmax=1, alpha=0.6,
                          aspect=aspect, interpolation="bilinear")
        m = tg[tuple(take)].T
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors=["#42d4f4"], linewidths=1.2)
        ax.invert_xaxis()
        ax.set_axis_off()
        ax.set_title(f"{name} {int(centre[axis])}", color="#dddddd", fontsize=10)
        for x, y, text in ((0.02, 0.5, left), (0.98, 0.5, right), (0.5, 0.98, top), (0.5, 0.02, bottom)):
            ax.text(x, y, text, transform=ax.transAxes, color="#ffcc00", fontsize=9, ha="center", va="center")
    if shown is not None:
        bar = fig.colorbar(shown, ax=fig.axes, shrink=0.8, pad=0.01)
        bar.ax.tick_params(colors="#dddddd", labelsize=8)
    fig.suptitle(f"{title} (cyan: {outline})", color="#dddddd", fontsize=11)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, facecolor=fig.get_facecolor())
    return buf.getvalue()
