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
    """A progress bar over all training steps, with the running loss and the latest validation Dice."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[dice]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
        )
        self.task: TaskID | None = None
        self.console = console

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, ev: TrainEvent) -> None:
        if ev.kind == "start":
            self.console.print(ev.message)
            return
        if ev.kind == "step":
            if self.task is None:
                total = ev.steps * (ev.epochs - ev.epoch + 1)
                self.task = self.progress.add_task("train", total=total, epoch=ev.epoch, loss="-", dice="")
            self.progress.update(self.task, advance=1, epoch=f"{ev.epoch}/{ev.epochs}", loss=f"{ev.loss:.3f}")
        elif ev.kind == "validation" and self.task is not None:
            text = " ".join(f"{k} {v:.3f}" for k, v in ev.dice.items())
            self.progress.update(self.task, dice=f"val Dice {text}")


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
