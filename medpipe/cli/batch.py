"""``medpipe batch MODEL INPUT... -o OUT`` (run, the default subcommand) and ``medpipe batch status OUT``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from medpipe.cli.app import app, err_console, handled, out
from medpipe.cli.options import Device, Insecure, NetrcFile, Retries, SegType, parse_folds
from medpipe.errors import ConfigError

if TYPE_CHECKING:
    # the Context TyperGroup.parse_args is declared with: typer vendors click (typer._click), and its contexts are
    # that Context, not click.Context
    from typer._click.core import Context


class RunByDefault(TyperGroup):
    """``medpipe batch ARGS`` means ``medpipe batch run ARGS`` unless the first word names a subcommand (a model
    folder literally called ``status`` is written ``./status``)."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


batch_app = typer.Typer(cls=RunByDefault, no_args_is_help=True,
                        help="Resumable batch inference: a per-case ledger in OUT, local workers or Slurm arrays.")
app.add_typer(batch_app, name="batch")


def _sbatch_options(items: list[str] | None) -> dict[str, str]:
    extra = {}
    for item in items or []:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch {item!r}: expected KEY=VALUE", hint="e.g. --sbatch account=radiology")
        extra[key] = value
    return extra


@batch_app.command("run")
def batch_run(
    model: Annotated[Path, typer.Argument(help="Run folder (best.pt), a checkpoint file, a package (.zip), or a "
                                               "folder of fold_*/ run folders (an ensemble).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder and ledger.")],
    inputs: Annotated[list[Path] | None, typer.Argument(help="NIfTI files, folders of them, DICOM folders.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="CSV/JSON list of cases (case_id, inputs; or a series on a "
                                                       "DICOMweb server: dicomweb_url, study_uid, series_uid).")
                        ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Local CPU worker processes.")] = 1,
    gpus: Annotated[str | None, typer.Option(help="Local: one worker per GPU: all, or a list like 0,1.")] = None,
    launcher: Annotated[str, typer.Option(help="local or slurm.")] = "local",
    case_timeout: Annotated[float | None, typer.Option(min=0.1, help="Seconds before a hanging case is ended "
                                                       "and marked failed.")] = None,
    lease: Annotated[float, typer.Option(min=1.0, help="Seconds a claim holds without renewal (a dead worker's "
                                         "case is taken over after this).")] = 60.0,
    chunk: Annotated[int, typer.Option(min=1, help="Slurm: cases per array task.")] = 50,
    slurm_partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    slurm_gpus_per_task: Annotated[int | None, typer.Option(min=0, help="GPUs per array task.")] = None,
    slurm_cpus_per_task: Annotated[int | None, typer.Option(min=1, help="CPUs per array task.")] = None,
    slurm_mem_gb: Annotated[float | None, typer.Option(min=0.1, help="Memory per array task (GB).")] = None,
    slurm_array_parallelism: Annotated[int, typer.Option(min=1, help="Array tasks running at once.")] = 64,
    slurm_time: Annotated[int, typer.Option(min=1, help="Time limit per array task (minutes).")] = 240,
    sbatch: Annotated[list[str] | None, typer.Option(help="More sbatch options, KEY=VALUE (repeatable).")] = None,
    slurm_python: Annotated[str | None, typer.Option(help="How array tasks start Python, e.g. 'apptainer exec "
                                                     "--nv medpipe.sif python' (default: this Python).")] = None,
    detach: Annotated[bool, typer.Option(help="Slurm: return after submitting (see `medpipe batch status`).")] = False,
    ensemble: Annotated[list[Path] | None, typer.Option(
        "--model", help="Another run folder to ensemble with MODEL (repeatable).")] = None,
    folds: Annotated[str | None, typer.Option(
        "--folds", help="Folds of a fold_*/ folder to ensemble: '0,2' or '0 2'; default all.")] = None,
    tta: Annotated[str | None, typer.Option(help="Mirror TTA: none | flip | all.")] = None,
    save_probabilities: Annotated[bool, typer.Option(
        help="Also write <case>_probabilities.nii.gz (uint8, value/255, one frame per label).")] = False,
    save_uncertainty: Annotated[bool, typer.Option(
        help="Also write <case>_uncertainty.nii.gz (entropy of the mean, mutual information; value/255).")] = False,
    output_format: Annotated[str, typer.Option(
        "--format", help="Comma list of nifti, dicom-seg, rtstruct (DICOM inputs; the NIfTI mask is always written)."
    )] = "nifti",
    seg_type: Annotated[SegType, typer.Option(help="DICOM SEG: binary (viewers) or labelmap (compact).")] = "binary",
    engine: Annotated[str, typer.Option(help="torch, or onnxruntime (packages made with --onnx; CPU).")] = "torch",
    min_lesion_ml: Annotated[float | None, typer.Option(
        min=0.0, help="Lesion table: leave out components below this volume (mL; default: the config's).")] = None,
    device: Device = "auto",
    overlap: Annotated[float | None, typer.Option(min=0.0, max=0.95, help="Sliding-window overlap.")] = None,
    sw_batch_size: Annotated[int | None, typer.Option(min=1, help="Windows per forward pass.")] = None,
    series: Annotated[str | None, typer.Option(help="DICOM: which series (number or UID).")] = None,
    allow_tilt: Annotated[bool, typer.Option(help="DICOM: resample gantry-tilted stacks.")] = False,
    allow_uneven: Annotated[bool, typer.Option(help="DICOM: resample uneven slice spacing.")] = False,
    allow_non_hu: Annotated[bool, typer.Option(help="CT models: segment inputs that do not look like HU.")] = False,
    netrc_file: NetrcFile = None,
    insecure: Insecure = False,
    retries: Retries = 3,
) -> None:
    """Segment many cases; rerun the same command to resume (only what is not done is computed)."""
    from medpipe.batch.run import run_batch
    from medpipe.batch.slurm import SlurmOptions
    from medpipe.cli.render import BatchProgress, render_batch_status
    from medpipe.inference.dicom_outputs import parse_formats

    with handled():
        options: dict[str, Any] = {
            "device": device, "overlap": overlap, "sw_batch_size": sw_batch_size, "allow_non_hu": allow_non_hu,
            "dicom_options": {"series": series, "allow_tilt": allow_tilt, "allow_uneven": allow_uneven},
            "models": [str(m) for m in ensemble or []], "folds": parse_folds(folds), "tta": tta,
            "save_probabilities": save_probabilities, "save_uncertainty": save_uncertainty,
            "formats": list(parse_formats(output_format)), "seg_type": seg_type, "engine": engine,
            "min_lesion_ml": min_lesion_ml,
            # manifest cases on a DICOMweb server; credentials stay in the environment / the netrc file
            "dicomweb": {"netrc": str(netrc_file.resolve()) if netrc_file else None, "insecure": insecure,
                         "retries": retries}}
        if insecure:
            err_console.print("[yellow]note[/]: TLS certificate verification is off (--insecure)")
        slurm = SlurmOptions(slurm_partition, slurm_gpus_per_task, slurm_cpus_per_task, slurm_mem_gb,
                             slurm_array_parallelism, slurm_time, _sbatch_options(sbatch), slurm_python)
        with BatchProgress(err_console) as progress:
            result = run_batch(model, list(inputs or []), out_dir, manifest=manifest, workers=workers, gpus=gpus,
                               launcher=launcher, chunk=chunk, slurm=slurm, detach=detach,
                               case_timeout_s=case_timeout, lease_s=lease, infer_options=options,
                               on_event=progress.update)
    if result.status is None:
        out.print(f"submitted {len(result.job_ids)} array task(s) for {result.n_to_run} case(s): "
                  f"{result.job_ids[0].split('_')[0] if result.job_ids else '-'}; follow with "
                  f"`medpipe batch status {escape(str(out_dir))}`")
        return
    out.print(render_batch_status(result.status))
    out.print(f"report: {escape(str(out_dir / 'batch.html'))}")
    if not result.ok:
        raise typer.Exit(1)


@batch_app.command("status")
def batch_status_cmd(
    out_dir: Annotated[Path, typer.Argument(help="A batch output folder.")],
    report: Annotated[bool, typer.Option("--report", help="Also write OUT/batch.json and OUT/batch.html.")] = False,
) -> None:
    """Done / failed / running / pending, throughput, ETA and the failed cases with their reasons."""
    from medpipe.batch.report import write_report
    from medpipe.batch.status import batch_status
    from medpipe.cli.render import render_batch_status

    with handled():
        status = write_report(out_dir) if report else batch_status(out_dir)
    out.print(render_batch_status(status))
    if report:
        out.print(f"report: {escape(str(out_dir / 'batch.html'))}")
