"""``medpipe info`` and ``medpipe convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medpipe.cli.app import app, handled, out


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A NIfTI file, a DICOM folder or a medpipe package.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What is in a NIfTI file or DICOM folder (series, size, spacing, orientation, problems), or a package's
    model card."""
    if path.suffix.lower() == ".zip" or (path / "medpipe.json").is_file():
        from medpipe.cli.render import render_model_card
        from medpipe.models.package import package_info

        with handled():
            card = package_info(path).to_json()
        if as_json:
            typer.echo(json.dumps(card, indent=2))
        else:
            out.print(render_model_card(card))
        return
    from medpipe.cli.render import render_info
    from medpipe.io.inspect import info as run_info

    with handled():
        result = run_info(path)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        out.print(render_info(result))


@app.command()
def convert(
    dicom_dir: Annotated[Path, typer.Argument(help="DICOM folder (searched recursively).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for NIfTI + JSON sidecars.")],
    series: Annotated[str | None, typer.Option(help="Convert only this series (3, 3-2 or a UID).")] = None,
    allow_tilt: Annotated[bool, typer.Option("--allow-tilt", help="Resample gantry-tilted stacks "
                                                                   "onto an orthogonal grid.")] = False,
    allow_uneven: Annotated[bool, typer.Option("--allow-uneven", help="Resample uneven slice spacing "
                                                                       "to equal spacing.")] = False,
    gzip: Annotated[bool, typer.Option("--gzip/--no-gzip", help="Write .nii.gz (default) or .nii.")] = True,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoder threads (default: CPU count).")] = None,
) -> None:
    """Convert DICOM series to NIfTI with a JSON sidecar of every geometry decision."""
    from medpipe.cli.render import render_convert
    from medpipe.io.dicom.convert import convert_dicom
    from medpipe.io.dicom.options import DicomOptions

    with handled():
        result = convert_dicom(dicom_dir, out_dir, DicomOptions(series, allow_tilt, allow_uneven, workers),
                               compress=gzip)
    out.print(render_convert(result))
    if not result.ok:
        raise typer.Exit(1)
