"""Rich renderings of long work and results for the CLI (no logic: only display)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from medpipe.infer import CaseResult, InferResult
from medpipe.train import TrainEvent


class TrainProgress:
    """One live display: a bar over all training steps (running loss, latest validation Dice) and, for the
    whole pipeline, a second bar over the cases being segmented."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.task: TaskID | None = None
        self.case_task: TaskID | None = None
        self.dice = ""
        self.console = console

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, ev: TrainEvent) -> None:
        """Callback for :func:`medpipe.train.train`."""
        if ev.kind == "start":
            self.console.print(ev.message)
        elif ev.kind == "notice":
            self.console.print(f"[yellow]note[/]: {ev.message}")
        elif ev.kind == "step":
            if self.task is None:
                total = ev.steps * (ev.epochs - ev.epoch + 1)
                self.task = self.progress.add_task("train", total=total, info="")
            self.progress.update(self.task, advance=1, description=f"epoch {ev.epoch}/{ev.epochs}",
                                 info=f"loss {ev.loss:.3f}{self.dice}")
        elif ev.kind == "validation":
            self.dice = " | val Dice " + " ".join(f"{k} {v:.3f}" for k, v in ev.dice.items())

    def on_case(self, res: CaseResult, i: int, n: int) -> None:
        """Callback for :func:`medpipe.infer.infer`."""
        if self.case_task is None:
            self.case_task = self.progress.add_task("segmenting", total=n, info="")
        self.progress.update(self.case_task, completed=i, info=f"{res.case_id}: {res.status}")


@contextlib.contextmanager
def case_progress(console: Console, verb: str) -> Iterator[Callable[[CaseResult, int, int], None]]:
    """A per-case progress bar; yields the callback for the library."""
    progress = Progress(TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[case]}"), TimeElapsedColumn(), console=console)
    task: list[TaskID] = []

    def on_case(res: CaseResult, i: int, n: int) -> None:
        if not task:
            task.append(progress.add_task(verb, total=n, case=""))
        progress.update(task[0], completed=i, case=f"{res.case_id}: {res.status}")

    with progress:
        yield on_case


def render_infer(console: Console, result: InferResult) -> None:
    """A table of cases with status, seconds and the mask written (or the error)."""
    table = Table(title="medpipe infer", show_lines=False)
    for col in ("case", "status", "seconds", "mask / error"):
        table.add_column(col)
    style = {"ok": "green", "skipped": "cyan", "failed": "red"}
    for c in result.cases:
        table.add_row(c.case_id, f"[{style[c.status]}]{c.status}[/]", f"{c.seconds:.1f}",
                      str(c.mask) if c.mask else (c.error or ""))
    console.print(table)
