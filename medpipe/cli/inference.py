"""``medpipe infer``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medpipe.cli.app import app, err_console, handled, out
from medpipe.cli.options import Device, Insecure, NetrcFile, SegType, dicomweb_options, parse_folds
from medpipe.errors import MedpipeError


@app.command()
def infer(
    run: Annotated[Path, typer.Argument(help="Run folder (best.pt), a checkpoint file, a package (.zip), or a "
                                             "folder of fold_*/ run folders (an ensemble).")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files, folders of them, or DICOM folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for <case>.nii.gz, .json, .lesions.csv.")],
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Recompute cases that are already done.")] = False,
    series: Annotated[str | None, typer.Option(help="DICOM: which series, by the label `medpipe info` "
                                                           "shows (3, or 3-2 for number-acquisition) or its "
                                                           "SeriesInstanceUID.")] = None,
    allow_tilt: Annotated[bool, typer.Option("--allow-tilt", help="DICOM: resample gantry-tilted stacks.")] = False,
    allow_uneven: Annotated[bool, typer.Option("--allow-uneven", help="DICOM: resample uneven slice spacing.")] = False,
    allow_non_hu: Annotated[bool, typer.Option("--allow-non-hu", help="CT models: segment inputs that do not "
                                                                          "look like HU.")] = False,
    output_format: Annotated[str, typer.Option(
        "--format", help="Comma list of nifti, dicom-seg, rtstruct (DICOM inputs; the NIfTI mask is always written)."
    )] = "nifti",
    seg_type: Annotated[SegType, typer.Option(help="DICOM SEG: binary (viewers) or labelmap (compact).")] = "binary",
    push: Annotated[str | None, typer.Option("--push", help="DICOMweb root: send each case's <case>.seg.dcm "
                                                            "there (needs --format dicom-seg).")] = None,
    netrc_file: NetrcFile = None,
    insecure: Insecure = False,
    engine: Annotated[str, typer.Option(help="torch, or onnxruntime (packages made with --onnx; CPU).")] = "torch",
    min_lesion_ml: Annotated[float | None, typer.Option(
        min=0.0, help="Lesion table: leave out components below this volume (mL; default: the config's).")] = None,
) -> None:
    """Segment scans; masks land exactly on each input's grid. A classification run writes predictions.csv (one
    row of class probabilities per case) and a <case>.json sidecar each instead."""
    from medpipe.cli.render import case_progress, render_infer
    from medpipe.inference.batch import infer as run_infer
    from medpipe.inference.dicom_outputs import parse_formats
    from medpipe.inference.push import PushTarget, check_push_formats
    from medpipe.io.dicom.options import DicomOptions

    target = PushTarget(push, dicomweb_options(netrc_file, insecure, 3)) if push else None
    with handled():
        formats = parse_formats(output_format)
        check_push_formats(formats, target)
        with case_progress(err_console, "segmenting") as on_case:
            result = run_infer([run, *(model or [])], inputs, out_dir, device=device, overlap=overlap,
                               sw_batch_size=sw_batch_size, overwrite=overwrite,
                               dicom_options=DicomOptions(series, allow_tilt, allow_uneven),
                               allow_non_hu=allow_non_hu, formats=formats, seg_type=seg_type, push=target,
                               engine=engine, min_lesion_ml=min_lesion_ml, on_case=on_case,
                               folds=parse_folds(folds), tta=tta, save_probabilities=save_probabilities,
                               save_uncertainty=save_uncertainty)
        for note in result.notices:
            err_console.print(note, markup=False, highlight=False)
        if len(result.cases) == 1 and result.n_failed:  # one case: its error line alone (not a table too)
            raise MedpipeError(result.cases[0].error or "failed")
        render_infer(out, result)
    if result.n_failed:
        raise typer.Exit(1)
