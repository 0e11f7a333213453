"""``medpipe dataset check``, ``medpipe plan`` and ``medpipe sample-data``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medpipe.cli.app import app, err_console, handled, out
from medpipe.cli.options import load_cli_config

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
    allow_duplicates: Annotated[bool, typer.Option("--allow-duplicates", help="Identical images are warnings, not "
                                                   "errors (recorded in the fingerprint's overrides).")] = False,
    qc_dir: Annotated[Path | None, typer.Option("--qc-dir", help="Write overlay PNGs of implausible labels, and "
                                                "of labels on another grid than their image, here (default: "
                                                "<fingerprint>-qc/ beside --out).")] = None,
) -> None:
    """Integrity report before training (missing files, channels, grids, label values, NaN/Inf, outliers,
    duplicates) and the dataset fingerprint. Exit code 1 when there are errors."""
    from medpipe.cli.render import check_progress, render_check
    from medpipe.datasets import check_dataset, save_fingerprint

    with handled():
        cfg = load_cli_config(labels_from) if labels_from else None
        if qc_dir is None and fingerprint is not None:
            qc_dir = fingerprint.with_name(fingerprint.name.split(".")[0] + "-qc")
        with check_progress(err_console) as on_case:
            report = check_dataset(root, fmt, labels=cfg.labels if cfg else None,
                                   channels=cfg.channels if cfg else None, allow_duplicates=allow_duplicates,
                                   qc_dir=qc_dir, on_case=on_case)
        if fingerprint is not None:
            save_fingerprint(report, fingerprint)
    out.print(render_check(report))
    if fingerprint is not None:
        out.print(f"fingerprint: {escape(str(fingerprint))}")
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
        out.print(f"  - {escape(note)}")
    shown = escape(str(out_yaml))
    out.print(f"[green]plan[/]: {shown} (train it with `medpipe train {shown} --out RUN`)")


@app.command("sample-data")
def sample_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write kits/, brats/ and cls/ into.")],
    seed: Annotated[int, typer.Option(min=0, help="Random seed (same seed, same bytes).")] = 0,
    n_ct: Annotated[int, typer.Option(min=0, help="Number of KiTS-style CT cases.")] = 12,
    n_mri: Annotated[int, typer.Option(min=0, help="Number of BraTS-style MRI cases.")] = 10,
    n_cls: Annotated[int, typer.Option(min=0, help="Number of classification CT cases (tumour / none).")] = 200,
) -> None:
    """Generate the synthetic KiTS-style CT, BraTS-style MRI and CT classification sample sets."""
    from medpipe.datasets.synthetic import generate_sample_data

    with handled():
        s = generate_sample_data(out_dir, seed=seed, n_ct=n_ct, n_mri=n_mri, n_cls=n_cls)
    out.print(f"wrote {len(s.files)} files ({s.total_bytes / 1e6:.1f} MB): {len(s.ct_case_ids)} CT cases in "
              f"{escape(str(s.kits_dir))}, {len(s.mri_case_ids)} MRI cases in {escape(str(s.brats_dir))}"
              + (f", {len(s.cls_case_ids)} classification cases in {escape(str(s.cls_dir))}" if s.cls_case_ids else ""))
