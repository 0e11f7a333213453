"""``medpipe package`` and ``medpipe import monai-bundle`` (the ``import`` group; other importers add to it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medpipe.cli.app import app, err_console, handled, out

import_app = typer.Typer(name="import", help="Turn models trained elsewhere into medpipe packages.",
                         no_args_is_help=True)
app.add_typer(import_app, name="import")

Output = Annotated[Path, typer.Option("--out", "-o", help="The package: NAME.zip (or a folder name).")]
Licence = Annotated[str | None, typer.Option("--licence", help="Licence of the model (SPDX id or text).")]


@app.command()
def package(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (one per fold) or one folder of fold_*/ runs.")],
    out_path: Output,
    onnx: Annotated[bool, typer.Option("--onnx", help="Also export each fold to ONNX (checked against PyTorch).")]
    = False,
    licence: Licence = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: the pipeline name).")] = None,
) -> None:
    """Package trained runs into one safe file: manifest + safetensors weights (+ ONNX)."""
    from medpipe.models.packaging import build_package

    with handled():
        result = build_package(runs, out_path, onnx=onnx, licence=licence or "unspecified", name=name)
    for check in result.onnx_checks:
        err_console.print(f"fold {check.fold}: ONNX matches PyTorch (max |diff| {check.max_abs_diff:.2g} on a "
                          f"{'x'.join(map(str, check.patch_shape))} test patch)")
    out.print(f"[green]wrote[/] {escape(str(result.path))} ({len(result.manifest.folds)} fold(s))")


@import_app.command("monai-bundle")
def import_monai_bundle(
    bundle: Annotated[Path, typer.Argument(help="A MONAI bundle folder (configs/inference.json, models/model.pt).")],
    out_path: Output,
    licence: Licence = None,
) -> None:
    """Translate a MONAI bundle (standard transforms and network) into a medpipe package, reading its config as
    data: expressions ($...) and custom code are refused."""
    from medpipe.models.monai_bundle import import_monai_bundle as run_import

    with handled():
        manifest = run_import(bundle, out_path, licence=licence)
    out.print(f"[green]wrote[/] {escape(str(out_path))} ({escape(manifest.architecture.name)}, "
              f"{len(manifest.labels)} labels)")


@import_app.command("nnunet")
def import_nnunet(
    results: Annotated[Path, typer.Argument(help="An nnU-Net v2 result folder: "
                                                 "RESULTS/DatasetXXX_Name/TRAINER__PLANS__CONFIG.")],
    out_path: Output,
    folds: Annotated[list[str] | None, typer.Option(
        "--folds", "-f", help="Folds to import (repeat, or '0,1'; 'all' for fold_all); default: every "
                              "fold_*/checkpoint_final.pth found.")] = None,
    licence: Licence = None,
    name: Annotated[str | None, typer.Option(help="Model name (default: DATASET__CONFIGURATION).")] = None,
) -> None:
    """Turn an nnU-Net v2 model into a medpipe package (plans, labels, weights as safetensors), reading its
    checkpoints with weights_only and its postprocessing from JSON: nothing is unpickled."""
    from medpipe.models.importers.nnunet_package import import_nnunet_package

    chosen = [f.strip() for item in folds for f in item.replace(",", " ").split()] if folds else None
    with handled():
        manifest = import_nnunet_package(results, out_path, chosen, licence=licence, name=name)
    out.print(f"[green]wrote[/] {escape(str(out_path))} ({escape(manifest.architecture.name)}, "
              f"{len(manifest.folds)} fold(s), {len(manifest.labels)} labels)")
