"""``medpipe pull`` and ``medpipe push``: DICOMweb (QIDO-RS/WADO-RS in, STOW-RS out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medpipe.cli.app import app, err_console, handled, out
from medpipe.cli.options import Insecure, NetrcFile, Retries, dicomweb_options

Url = Annotated[str, typer.Argument(help="DICOMweb root, e.g. https://pacs.example/dicom-web (no credentials in it).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _warn_insecure(insecure: bool) -> None:
    if insecure:
        err_console.print("[yellow]note[/]: TLS certificate verification is off (--insecure)")


@app.command()
def pull(
    url: Url,
    study: Annotated[str, typer.Option("--study", help="Study Instance UID.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for <SeriesUID>/<SOPInstanceUID>.dcm.")],
    series: Annotated[str | None, typer.Option("--series", help="Only this Series Instance UID.")] = None,
    netrc_file: NetrcFile = None,
    insecure: Insecure = False,
    retries: Retries = 3,
    as_json: AsJson = False,
) -> None:
    """Download a study (or one series) from a DICOMweb server; instances already there are kept."""
    from medpipe.cli.render import render_pull
    from medpipe.io.dicomweb import pull as run_pull

    _warn_insecure(insecure)
    with handled():
        result = run_pull(url, study, series, out_dir=out_dir, options=dicomweb_options(netrc_file, insecure, retries))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        out.print(render_pull(result))


@app.command()
def push(
    url: Url,
    files: Annotated[list[Path], typer.Argument(help="DICOM files, or folders (every DICOM file inside).")],
    study: Annotated[str | None, typer.Option("--study", help="Store into this study only (the server refuses "
                                                               "instances of other studies).")] = None,
    netrc_file: NetrcFile = None,
    insecure: Insecure = False,
    retries: Retries = 3,
    as_json: AsJson = False,
) -> None:
    """Upload DICOM files with STOW-RS; each instance counts as stored only when the server confirms it."""
    from medpipe.cli.render import render_push
    from medpipe.io.dicomweb import push as run_push

    _warn_insecure(insecure)
    with handled():
        result = run_push(url, files, study_uid=study, options=dicomweb_options(netrc_file, insecure, retries))
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        out.print(render_push(result))
    if not result.ok:
        raise typer.Exit(1)
