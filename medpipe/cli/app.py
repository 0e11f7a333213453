"""The ``medpipe`` command line. Each command parses, makes ONE library call and renders the result.

Errors from the library (:class:`medpipe.errors.MedpipeError`) are printed as one line and exit with code 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from medpipe.errors import MedpipeError

app = typer.Typer(
    name="medpipe",
    help="3D CT/MRI segmentation: DICOM/NIfTI in, masks on the scanner's grid out, metrics you can trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

Device = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu or cuda.")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _state["debug"] = debug
    if not debug:
        # Import-time noise from MONAI's optional GPU DICOM decoder, irrelevant to medpipe's own DICOM reader.
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Turn library errors into one red line on stderr and exit code 1 (a traceback only with --debug)."""
    try:
        yield
    except MedpipeError as err:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {err}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _config(path: Path) -> Any:
    from medpipe.config import load_config

    return load_config(path)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (pipelines/*.yaml).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder for checkpoints and logs.")],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder (overrides data.root).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Overrides training.epochs.")] = None,
    device: Device = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last.pt.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Resume even if config or data changed.")] = False,
    fold: Annotated[int | None, typer.Option("--fold", help="Cross-validation fold (overrides data.fold; -1: "
                                             "hold-out split).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="Dataset layout (overrides data.format): auto, "
                                            "kits, brats2023, brats2021, msd, nnunet, list.")] = None,
) -> None:
    """Train a segmentation model; writes best.pt / last.pt, metrics.csv and a training curve.

    Multi-GPU / multi-node: the same command under ``torchrun --nproc_per_node=N -m medpipe.cli train ...``."""
    from medpipe.cli.render import TrainProgress
    from medpipe.training.run import train as run_train

    with handled():
        cfg = _config(config)
        with TrainProgress(err_console) as progress:
            result = run_train(cfg, out_dir, data_root=data, epochs=epochs, device=device, resume=resume,
                               force=force, fold=fold, fmt=fmt, on_event=progress.update)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    out.print(f"[green]done[/]: best mean validation Dice {result.best_dice:.4f} at epoch {result.best_epoch}; "
              f"checkpoints in {result.run_dir}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (pipelines/*.yaml).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for model/, predictions/ and report/.")],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder (overrides data.root).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Overrides training.epochs.")] = None,
    device: Device = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training run.")] = False,
) -> None:
    """The whole job: train, segment the held-out cases on their original grids, and score them."""
    from medpipe.cli.render import TrainProgress, render_infer, render_table
    from medpipe.pipeline import run_pipeline

    with handled():
        cfg = _config(config)
        with TrainProgress(err_console) as progress:
            result = run_pipeline(cfg, out_dir, data_root=data, epochs=epochs, device=device, resume=resume,
                                  on_train=progress.update, on_case=progress.on_case)
        render_infer(out, result.infer)
        out.print(render_table(result.evaluation))
    out.print(f"[green]done[/]: model in {out_dir / 'model'}, masks in {out_dir / 'predictions'}, "
              f"report in {out_dir / 'report' / 'report.html'}")


@app.command()
def infer(
    run: Annotated[Path, typer.Argument(help="Run folder (best.pt) or a checkpoint file.")],
    inputs: Annotated[list[Path], typer.Argument(help="NIfTI files, folders of them, or DICOM folders.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for <case>.nii.gz + <case>.json.")],
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
            result = run_infer(run, inputs, out_dir, device=device, overlap=overlap, sw_batch_size=sw_batch_size,
                               overwrite=overwrite, dicom_options=dicom_options, allow_non_hu=allow_non_hu,
                               on_case=on_case)
        render_infer(out, result)
        if len(result.cases) == 1 and result.n_failed:
            raise MedpipeError(result.cases[0].error or "failed")
    if result.n_failed:
        raise typer.Exit(1)


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted mask, or a folder of them.")],
    ref: Annotated[Path, typer.Argument(help="Reference mask, or a folder (matched by case name).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")],
    preset: Annotated[str, typer.Option(help="default, brats (WT/TC/ET) or kits (HEC).")] = "default",
    labels: Annotated[str | None, typer.Option(help='Label names, e.g. "1=kidney,2=tumor".')] = None,
    config: Annotated[Path | None, typer.Option(help="Pipeline YAML whose label names to use.")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Images (file/folder) for overlay pictures.")] = None,
    resample: Annotated[bool, typer.Option(help="Resample predictions onto the reference grid (nearest).")] = False,
    nsd_tol: Annotated[str | None, typer.Option(help='NSD tolerance in mm: "2" or per label "1=1.0,2=2.5".')] = None,
    surface: Annotated[str, typer.Option(help="surfel (surface-distance, default) or voxel (MONAI).")] = "surfel",
    lesions: Annotated[bool | None, typer.Option("--lesions/--no-lesions", help="Lesion-wise scoring.")] = None,
) -> None:
    """Dice, IoU, HD95, ASSD, NSD, volumes per case and label; metrics.csv, summary.json and report.html."""
    from medpipe.cli.render import render_table
    from medpipe.evaluation.evaluate import evaluate as run_evaluate
    from medpipe.evaluation.evaluate import parse_labels, parse_tolerances

    with handled():
        names = parse_labels(labels) if labels else (_config(config).labels if config else None)
        result = run_evaluate(
            pred, ref, out_dir, labels=names, preset=preset, image=image, resample=resample, surface=surface,
            nsd_tolerance_mm=parse_tolerances(nsd_tol) if nsd_tol else None, lesions=lesions,
        )
        out.print(render_table(result))
    out.print(f"report: {out_dir / 'report.html'}")


dataset_app = typer.Typer(help="Dataset tools: integrity check and fingerprint.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("check")
def dataset_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder (or a .csv/.json list of cases).")],
    fmt: Annotated[str, typer.Option("--format", help="Layout: auto, kits, brats2023, brats2021, msd, nnunet, "
                                     "list.")] = "auto",
    labels_from: Annotated[Path | None, typer.Option("--labels-from", help="Pipeline YAML whose labels and "
                                                     "channels to check against.")] = None,
    fingerprint: Annotated[Path | None, typer.Option("--out", "-o", help="Write the fingerprint JSON here.")] = None,
) -> None:
    """Integrity report before training (missing files, channels, grids, label values, NaN/Inf, outliers,
    duplicates) and the dataset fingerprint. Exit code 1 when there are errors."""
    from medpipe.cli.render import render_check
    from medpipe.datasets import check_dataset, save_fingerprint

    with handled():
        cfg = _config(labels_from) if labels_from else None
        report = check_dataset(root, fmt, labels=cfg.labels if cfg else None, channels=cfg.channels if cfg else None)
        if fingerprint is not None:
            save_fingerprint(report, fingerprint)
    out.print(render_check(report))
    if fingerprint is not None:
        out.print(f"fingerprint: {fingerprint}")
    if report.errors:
        raise typer.Exit(1)


@app.command()
def plan(
    root: Annotated[Path, typer.Argument(help="Dataset folder (or a .csv/.json list of cases).")],
    out_yaml: Annotated[Path, typer.Option("--out", "-o", help="Pipeline YAML to write.")],
    fmt: Annotated[str, typer.Option("--format", help="Dataset layout (default: detect).")] = "auto",
    gpu_mem_gb: Annotated[float, typer.Option("--gpu-mem-gb", min=2.0, help="GPU memory budget for one "
                                              "training step.")] = 8.0,
) -> None:
    """Configure training from the dataset fingerprint (spacing, patch, batch, network, normalisation)."""
    from medpipe.datasets.plan import plan_dataset

    with handled():
        result = plan_dataset(root, out_yaml, fmt=fmt, gpu_mem_gb=gpu_mem_gb)
    for note in result.notes:
        out.print(f"  - {note}")
    out.print(f"[green]plan[/]: {out_yaml} (train it with `medpipe train {out_yaml} --out RUN`)")


@app.command("sample-data")
def sample_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write kits/ and brats/ into.")],
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same bytes).")] = 0,
    n_ct: Annotated[int, typer.Option(min=0, help="Number of KiTS-style CT cases.")] = 12,
    n_mri: Annotated[int, typer.Option(min=0, help="Number of BraTS-style MRI cases.")] = 10,
) -> None:
    """Generate the synthetic KiTS-style CT and BraTS-style MRI sample sets."""
    from medpipe.datasets.synthetic import generate_sample_data

    with handled():
        s = generate_sample_data(out_dir, seed=seed, n_ct=n_ct, n_mri=n_mri)
    out.print(f"wrote {len(s.files)} files ({s.total_bytes / 1e6:.1f} MB): {len(s.ct_case_ids)} CT cases in "
              f"{s.kits_dir}, {len(s.mri_case_ids)} MRI cases in {s.brats_dir}")


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="A NIfTI file or a DICOM folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What is in a NIfTI file or DICOM folder (series, size, spacing, orientation, problems)."""
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
    series: Annotated[str | None, typer.Option(help="Convert only this series (number, label or UID).")] = None,
    allow_tilt: Annotated[bool, typer.Option(help="Resample gantry-tilted stacks onto an orthogonal grid.")] = False,
    allow_uneven: Annotated[bool, typer.Option(help="Resample uneven slice spacing to equal spacing.")] = False,
    gzip: Annotated[bool, typer.Option("--gzip/--no-gzip", help="Write .nii.gz (default) or .nii.")] = True,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoder threads (default: CPU count).")] = None,
) -> None:
    """Convert DICOM series to NIfTI with a JSON sidecar of every geometry decision."""
    from medpipe.cli.render import render_convert
    from medpipe.io.dicom.convert import convert_dicom

    with handled():
        result = convert_dicom(dicom_dir, out_dir, series=series, allow_tilt=allow_tilt, allow_uneven=allow_uneven,
                               compress=gzip, workers=workers)
    out.print(render_convert(result))
    if not result.ok:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
