"""Rich renderings of long work and results for the CLI (no logic: only display)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
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
from rich.text import Text

from medpipe.datasets.check import CheckReport
from medpipe.evaluation.evaluate import EvaluationResult
from medpipe.evaluation.report import caption_text, fmt_stat, label_title
from medpipe.inference.batch import CaseResult, InferResult
from medpipe.io.dicom.convert import ConvertResult
from medpipe.io.inspect import InfoResult
from medpipe.training.events import TrainEvent


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
    for col in ("case", "status", "seconds", "QC", "mask / error"):
        table.add_column(col)
    style = {"ok": "green", "skipped": "cyan", "failed": "red"}
    for c in result.cases:
        qc = "" if c.qc is None else ("[yellow]review[/]: " + escape(c.qc["qc_reasons"]) if c.qc["review"] else "ok")
        table.add_row(c.case_id, f"[{style[c.status]}]{c.status}[/]", f"{c.seconds:.1f}", qc,
                      str(c.mask) if c.mask else (c.error or ""))
    console.print(table)


def render_table(result: EvaluationResult) -> Table:
    """Per-label summary for the terminal: Dice mean ± sd, HD95/ASSD median [IQR] (mm), NSD, empty counts."""
    tol = result.settings.get("nsd_tolerance_mm", {})
    table = Table(title=f"Evaluation: {len(result.cases)} case(s), preset {result.settings.get('preset')}",
                  caption=caption_text(result), caption_justify="left")
    for col, just in (("label", "left"), ("n", "right"), ("Dice", "right"), ("HD95 mm", "right"),
                      ("ASSD mm", "right"), ("NSD", "right"), ("empty both/ref/pred", "center")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    lesion = any("lesions" in e for e in result.summary.values())
    if lesion:
        table.add_column("lesion Dice", justify="right")
        table.add_column("lesions TP/FN/FP", justify="center")
    for key, entry in result.summary.items():
        empty = entry["empty"]
        t = tol.get(int(key)) if isinstance(tol, dict) else None  # type: ignore[call-overload]
        cells = [label_title(int(key), str(entry["label_name"])), str(entry["n_cases"]), fmt_stat(entry, "dice"),
                 fmt_stat(entry, "hd95_mm", "median"), fmt_stat(entry, "assd_mm", "median"),
                 fmt_stat(entry, "nsd") + (f" @{t:g} mm" if t is not None else ""),
                 f"{empty['both']}/{empty['ref']}/{empty['pred']}"]  # type: ignore[index]
        if lesion:
            les: dict[str, int] = entry.get("lesions") or {}  # type: ignore[assignment]
            cells += [fmt_stat(entry, "lesion_dice"), f"{les.get('tp', 0)}/{les.get('fn', 0)}/{les.get('fp', 0)}"]
        table.add_row(*cells)
    return table


def render_info(result: InfoResult) -> Any:
    """A rich renderable (a table and a line on skipped files) for ``medpipe info``."""
    table = Table(title=f"{result.path} ({result.kind})", title_justify="left", show_lines=True)
    for name in (
        "Series",
        "Description",
        "Modality",
        "Size",
        "Spacing (mm)",
        "Orient.",
        "Plane",
        "Storage",
        "Problems",
    ):
        table.add_column(name, overflow="fold")
    for v in result.volumes:
        size = "x".join(str(s) for s in v.size) if v.size else "?"
        spacing = " x ".join(f"{s:.4g}" for s in v.spacing_mm) if v.spacing_mm else "?"
        problems = Text("\n".join(v.problems), style="bold red") if v.problems else Text("none", style="green")
        table.add_row(
            v.label, v.description, v.modality, size, spacing, v.orientation or "?", v.plane, v.storage, problems
        )
    parts: list[Any] = [table]
    if result.kind == "dicom":
        skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped.items()) or "none"
        parts.append(Text(f"{result.n_files} files; skipped: {skipped}"))
    return Group(*parts)


def render_convert(result: ConvertResult) -> Any:
    """A rich renderable for ``medpipe convert``: written files, failed volumes (red), skipped files."""
    table = Table(title=f"converted into {result.out_dir}", title_justify="left")
    for name in ("Series", "Description", "File", "Size", "Spacing (mm)", "Orient.", "Type", "Repairs"):
        table.add_column(name, overflow="fold")
    for v in result.written:
        table.add_row(
            v.label,
            v.description,
            v.nifti.name,
            "x".join(str(s) for s in v.shape),
            " x ".join(f"{s:.4g}" for s in v.spacing_mm),
            v.orientation,
            v.dtype,
            ", ".join(v.repairs) or "none",
        )
    parts: list[Any] = [table]
    for f in result.failed:
        parts.append(Text(f"series {f.label} not converted: {f.message}", style="bold red"))
    skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped.items())
    if skipped:
        parts.append(Text(f"skipped files: {skipped}"))
    return Group(*parts)


def render_check(report: CheckReport, max_rows: int = 40) -> Any:
    """The issues (errors first), one per line, and a one-line summary, for the CLI."""
    fp = report.fingerprint
    lines: list[Any] = []
    ordered = sorted(report.issues, key=lambda i: (i.severity != "error", i.case_id))
    for i in ordered[:max_rows]:
        line = Text()
        line.append("error " if i.severity == "error" else "warn  ", style="red" if i.severity == "error" else "yellow")
        line.append(f"{i.case_id or '(dataset)'} ", style="bold")
        line.append(f"[{i.check}] {i.message}  ")
        line.append(i.path, style="dim")
        lines.append(line)
    if len(ordered) > max_rows:
        lines.append(Text(f"... {len(ordered) - max_rows} more in the fingerprint JSON (-o)"))
    lines.append(Text(f"{report.dataset.format} dataset, {fp['dataset']['n_cases']} cases, channels "
                      f"{', '.join(fp['dataset']['channels'])}, modality {fp['modality']}, median spacing (RAS) "
                      f"{fp['spacing_mm'].get('median')} mm: {len(report.errors)} errors, "
                      f"{len(report.warnings)} warnings"))
    return Group(*lines)
