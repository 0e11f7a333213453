"""``medpipe train`` and ``medpipe run``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medpipe.cli.app import app, err_console, handled, out
from medpipe.cli.options import Device, load_cli_config


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
    smoke: Annotated[bool, typer.Option("--smoke", help="A quick check of data and setup before a long run: one "
                                        "epoch of 3 iterations, small patches, no cache, one validation case "
                                        "(minutes on a CPU; the model is not meant to be used).")] = False,
) -> None:
    """Train a segmentation (or, with task: classification, a classification) model; writes best.pt / last.pt,
    metrics.csv and a training curve.

    Multi-GPU / multi-node: the same command under ``torchrun --nproc_per_node=N -m medpipe.cli train ...``."""
    from medpipe.cli.render import TrainProgress
    from medpipe.training.run import train as run_train

    with handled():
        cfg = load_cli_config(config)
        with TrainProgress(err_console) as progress:
            result = run_train(cfg, out_dir, data_root=data, epochs=epochs, device=device, resume=resume,
                               force=force, fold=fold, fmt=fmt, on_event=progress.update, smoke=smoke)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    score = "ROC AUC" if cfg.is_classification else "mean validation Dice"
    out.print(f"[green]done[/]: best {score} {result.best_dice:.4f} at epoch {result.best_epoch}; "
              f"checkpoints in {escape(str(result.run_dir))}")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (pipelines/*.yaml).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for model/, predictions/ and report/.")],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset folder (overrides data.root).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Overrides training.epochs.")] = None,
    device: Device = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted job.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Start over: remove what an earlier job wrote into "
                                        "--out (model/, inputs/, predictions/, references/, report/).")] = False,
) -> None:
    """The whole job: train, segment the held-out cases on their original grids, and score them.

    Run again into the same folder: a finished job is recognised at once (its report is shown), an unfinished
    one is continued with --resume, --force starts over."""
    from medpipe.cli.render import TrainProgress, render_infer, render_table
    from medpipe.pipeline import AlreadyFinished, run_pipeline

    with handled():
        cfg = load_cli_config(config)
        try:
            with TrainProgress(err_console) as progress:
                result = run_pipeline(cfg, out_dir, data_root=data, epochs=epochs, device=device, resume=resume,
                                      force=force, on_train=progress.update, on_case=progress.on_case)
        except AlreadyFinished as done:
            out.print(f"[green]already done[/]: report in {escape(str(done.report))} (nothing to redo; --force "
                      "starts over)", soft_wrap=True)
            return
        render_infer(out, result.infer)
        if cfg.is_classification:
            from medpipe.cli.render import render_classification

            out.print(render_classification(result.evaluation))
        else:
            out.print(render_table(result.evaluation))
    what = "predictions.csv" if cfg.is_classification else "masks"
    where = escape(f"model in {out_dir / 'model'}, {what} in {out_dir / 'predictions'}, "
                   f"report in {out_dir / 'report' / 'report.html'}")
    out.print(f"[green]done[/]: {where}")
