"""``medpipe explain``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medpipe.cli.app import app, handled, out
from medpipe.cli.options import Device


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="Run folder (best.pt) or a checkpoint file.")],
    scan: Annotated[Path, typer.Argument(help="One scan: NIfTI file(s) of one case, or a DICOM folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the maps (NIfTI, PNG, JSON).")],
    label: Annotated[str | None, typer.Option(
        help="Segmentation models (required): label to explain, value or name (e.g. 1 or kidney).")] = None,
    class_: Annotated[str | None, typer.Option(
        "--class", help="Classifiers: class to explain, index or name; default: the predicted class.")] = None,
    device: Device = "auto",
    mask: Annotated[Path | None, typer.Option(help="Score inside this label map instead of the prediction.")] = None,
    layer: Annotated[str | None, typer.Option(
        help="Class activation layer (module name); default: the decoder's up-sampling into half resolution.")] = None,
    cam: Annotated[str | None, typer.Option(
        help="Class activation weighting: hirescam (element-wise) or gradcam; default hirescam for segmentation "
             "models, gradcam for classifiers.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="SmoothGrad: noisy copies per window.")] = 8,
    noise: Annotated[float, typer.Option(min=0.0, help="SmoothGrad: noise sd / intensity range.")] = 0.15,
) -> None:
    """A class activation map (HiResCAM or Grad-CAM) and SmoothGrad of one label, scored inside its mask; for a
    classifier, Grad-CAM of one class. NIfTI on the scan's grid + PNGs."""
    from medpipe.explain.run import explain as run_explain

    with handled():
        res = run_explain(run, scan, label, out_dir, device=device, target_mask=mask, layer=layer,
                          n_samples=samples, noise=noise, weighting=cam, class_name=class_)
    out.print(f"explained {res.label} {escape(res.label_name)} of {escape(res.case)}: {res.weighting} at layer "
              f"{escape(res.layer)} "
              f"({res.layer_chosen}), {res.windows} window(s), {res.seconds:.1f} s")
    for kind in res.empty_maps:
        out.print(f"[yellow]warning:[/] the {kind} map is zero everywhere (nothing positive to show)")
    for name in res.files.values():
        out.print(f"  {escape(str(out_dir / name))}")
