"""``medpipe evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from medpipe.cli.app import app, handled, out
from medpipe.cli.options import load_cli_config, parse_labels, parse_tolerances
from medpipe.errors import ConfigError

#: Options of one task only: refused with the other ``--task`` (by their parameter names).
_SEGMENTATION_ONLY = ("preset", "labels", "config", "image", "resample", "nsd_tol", "surface", "lesions",
                      "detection", "match", "iou", "distance_mm", "min_lesion_ml")
_CLASSIFICATION_ONLY = ("classes", "n_bootstrap", "seed")


@app.command()
def evaluate(
    ctx: typer.Context,
    pred: Annotated[Path, typer.Argument(help="Predicted mask, or a folder of them; classification: "
                                               "predictions.csv or its folder.")],
    ref: Annotated[Path, typer.Argument(help="Reference mask, or a folder (matched by case name); "
                                              "classification: a case,label CSV.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    task: Annotated[Literal["segmentation", "classification"], typer.Option(
        help="segmentation (masks) or classification (class probabilities).")] = "segmentation",
    preset: Annotated[str, typer.Option(help="default, brats (WT/TC/ET) or kits (HEC).")] = "default",
    labels: Annotated[str | None, typer.Option(help='Label names, e.g. "1=kidney,2=tumor".')] = None,
    config: Annotated[Path | None, typer.Option(help="Pipeline YAML whose label names to use.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Images (file/folder) for overlay pictures.")] = None,
    resample: Annotated[bool, typer.Option("--resample", help="Resample predictions onto the "
                                                                   "reference grid (nearest).")] = False,
    nsd_tol: Annotated[str | None, typer.Option(help='NSD tolerance in mm: "2" or per label "1=1.0,2=2.5".')] = None,
    surface: Annotated[str, typer.Option(help="surfel (surface-distance, default) or voxel (MONAI).")] = "surfel",
    lesions: Annotated[bool | None, typer.Option("--lesions/--no-lesions", help="Lesion-wise scoring.")] = None,
    detection: Annotated[bool, typer.Option(help="Lesion detection: TP/FP/FN, sensitivity, F1, FROC.")] = False,
    match: Annotated[str, typer.Option(help="Detection matching: overlap (IoU > --iou) or centroid.")] = "overlap",
    iou: Annotated[float, typer.Option(min=0.0, max=0.99, help="Detection: IoU threshold (overlap).")] = 0.1,
    distance_mm: Annotated[float, typer.Option(min=0.0, help="Detection: centroid distance (mm).")] = 10.0,
    min_lesion_ml: Annotated[float, typer.Option(min=0.0, help="Detection: smallest lesion (mL).")] = 0.0,
    classes: Annotated[str | None, typer.Option(help='Classification: names for prob_0, prob_1, ... columns, '
                                                      'e.g. "absent,present".')] = None,
    n_bootstrap: Annotated[int, typer.Option(min=0, help="Classification: bootstrap resamples for the AUC "
                                                         "95 % interval.")] = 1000,
    seed: Annotated[int, typer.Option(help="Classification: bootstrap seed.")] = 0,
) -> None:
    """Dice, IoU, HD95, ASSD, NSD, volumes per case and label; metrics.csv, summary.json and report.html.
    With --task classification: accuracy, balanced accuracy, sensitivity/specificity, ROC AUC with a bootstrap
    interval; summary.json, cases.csv, roc.png, confusion.png and report.html."""
    from medpipe.cli.render import render_classification, render_detection, render_table

    with handled():
        _refuse_other_task_options(ctx, task)
        if task == "classification":
            from medpipe.evaluation.classify import evaluate_classification

            summary = evaluate_classification(
                pred, ref, out_dir, n_bootstrap=n_bootstrap, seed=seed,
                classes=[c.strip() for c in classes.split(",")] if classes else None)
            out.print(render_classification(summary))
            out.print(f"report: {escape(str(out_dir / 'report.html'))}")
            return
        from medpipe.evaluation.detection import MatchRule
        from medpipe.evaluation.evaluate import evaluate as run_evaluate

        names = parse_labels(labels) if labels else (load_cli_config(config).labels if config else None)
        rule = MatchRule(match, iou, distance_mm, min_lesion_ml) if detection else None  # type: ignore[arg-type]
        result = run_evaluate(
            pred, ref, out_dir, labels=names, preset=preset, image=image, resample=resample, surface=surface,
            nsd_tolerance_mm=parse_tolerances(nsd_tol) if nsd_tol else None, lesions=lesions, detection=rule,
        )
        out.print(render_table(result))
        if result.detection is not None:
            out.print(render_detection(result.detection))
    out.print(f"report: {escape(str(out_dir / 'report.html'))}")


def _refuse_other_task_options(ctx: typer.Context, task: str) -> None:
    """A ConfigError naming the first option given on the command line that belongs to the other task."""
    other = "classification" if task == "segmentation" else "segmentation"
    refused = _CLASSIFICATION_ONLY if task == "segmentation" else _SEGMENTATION_ONLY
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        if param.name in refused and source is not None and source.name != "DEFAULT":
            raise ConfigError(f"{param.opts[0]} does not apply to --task {task}",
                              hint=f"leave it out, or use --task {other}")
