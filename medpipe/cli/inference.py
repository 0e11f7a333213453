"""``medpipe infer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medpipe.cli.app import app, err_console, handled, out
from medpipe.cli.options import Device, parse_folds
from medpipe.errors import MedpipeError


@app.command()
def infer(
    run: Annotated[Path, typer.Argument(help="Run folder (best.pt), a checkpoint file, or a folder of fold_*/ "
                                             "run folders (an ensemble).")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files, folders of them, or DICOM folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for <case>.nii.gz + <case>.json.")],
    model: Annotated[list[Path] | None, typer.Option(
        "--model", help="Another run folder to ensemble with RUN (repeatable).")] = None,
    folds: Annotated[str | None, typer.Option(
        "--folds", help="Folds of a fold_*/ folder to ensemble: '0,2' or '0 2'; default all.")] = None,
    tta: Annotated[str | None, typer.Option(
        help="Mirror TTA: none | flip | all (flips only along the axes the model was trained as symmetric).")] = None,
    save_probabilities: Annotated[bool, typer.Option(
        help="Also write <case>_probabilities.nii.gz (uint8, value/255, one frame per label).")] = False,
    save_uncertainty: Annotated[bool, typer.Option(
        help="Also write <case>_uncertainty.nii.gz (entropy of the mean, mutual information; value/255).")] = False,
    device: Device = "auto",
    overlap: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Sliding-window overlap.")] = None,
    sw_batch_size: Annotated[int | None, typer.Option(min=1, help="Windows per forward pass.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Recompute cases that are already done.")] = False,
    series: Annotated[str | None, typer.Option(help="DICOM: which series (number or UID).")] = None,
    allow_tilt: Annotated[bool, typer.Option(help="DICOM: resample gantry-tilted stacks.")] = False,
    allow_uneven: Annotated[bool, typer.Option(help="DICOM: resample uneven slice spacing.")] = False,
    allow_non_hu: Annotated[bool, typer.Option(help="CT models: segment inputs that do not look like HU.")] = False,
) -> None:
    """Segment scans; masks land exactly on each input's grid."""
    from medpipe.cli.render import case_progress, render_infer
    from medpipe.inference.batch import infer as run_infer

    dicom_options = {"series": series, "allow_tilt": allow_tilt, "allow_uneven": allow_uneven}
    with handled():
        with case_progress(err_console, "segmenting") as on_case:
            result = run_infer([run, *(model or [])], inputs, out_dir, device=device, overlap=overlap,
                               sw_batch_size=sw_batch_size, overwrite=overwrite, dicom_options=dicom_options,
                               allow_non_hu=allow_non_hu, on_case=on_case, folds=parse_folds(folds), tta=tta,
                               save_probabilities=save_probabilities, save_uncertainty=save_uncertainty)
        render_infer(out, result)
        if len(result.cases) == 1 and result.n_failed:
            raise MedpipeError(result.cases[0].error or "failed")
    if result.n_failed:
        raise typer.Exit(1)
