"""``medpipe import-nnunet`` and ``medpipe infer-nnunet`` (deprecated): nnU-Net v2 result folders, read safely and
run exactly. ``medpipe import nnunet`` (a package) and ``medpipe infer PACKAGE`` replace them; these stay for the
folder workflow and the direct run on a result folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medpipe.cli.app import app, handled, out
from medpipe.cli.options import Device

Folds = Annotated[list[str] | None, typer.Option("--folds", "-f", help="Folds to use (repeat); default: all found.")]


@app.command("import-nnunet", deprecated=True)
def import_nnunet(
    results: Annotated[Path, typer.Argument(help="RESULTS/DatasetXXX_Name/TRAINER__PLANS__CONFIG folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for nnunet.json + fold_<k>.safetensors.")],
    folds: Folds = None,
) -> None:
    """Import an nnU-Net v2 model into a folder (deprecated: use `medpipe import nnunet RESULTS -o NAME.zip`)."""
    from medpipe.models.importers.nnunet import IMPORT_MANIFEST
    from medpipe.models.importers.nnunet import import_nnunet as run_import

    with handled():
        folder = run_import(results, out_dir, folds)
    out.print(f"imported {results} -> {folder / IMPORT_MANIFEST}", markup=False, highlight=False)


@app.command("infer-nnunet", deprecated=True)
def infer_nnunet(
    model: Annotated[Path, typer.Argument(help="An import-nnunet folder, or an nnU-Net result folder.")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files (<case>_0000.nii.gz ...), folders, DICOM folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for <case>.nii.gz.")],
    folds: Folds = None,
    tta: Annotated[bool, typer.Option(help="Mirroring test-time augmentation over the model's axes.")] = True,
    postprocess: Annotated[bool, typer.Option(help="Apply the postprocessing nnU-Net recorded (JSON).")] = False,
    accumulate: Annotated[str, typer.Option(help="Tile accumulation: float16 (as nnU-Net) or float32.")] = "float16",
    device: Device = "auto",
) -> None:
    """Segment scans with an import-nnunet folder or an nnU-Net result folder, as nnUNetv2_predict would
    (deprecated: use `medpipe infer NAME.zip`)."""
    from medpipe.inference.nnunet import predict_nnunet
    from medpipe.runtime import resolve_device

    with handled():
        results = predict_nnunet(model, inputs, out_dir, folds=folds, tta=tta, accumulate=accumulate,
                                 postprocess=postprocess, device=resolve_device(device))
    for r in results:
        secs = sum(r.seconds.values())
        out.print(f"{r.case_id}: {r.output} ({secs:.1f} s)", markup=False, highlight=False)
