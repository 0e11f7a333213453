"""Rich renderings of long work and results for the CLI (no logic: only display)."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
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

from medpipe.batch.status import BatchEvent, BatchStatus
from medpipe.datasets.check import CheckReport
from medpipe.evaluation.detection import DetectionResult
from medpipe.evaluation.report import caption_text, fmt_stat, label_title
from medpipe.evaluation.result import ClassificationSummary, EvaluationResult
from medpipe.inference.batch import CaseResult, InferResult
from medpipe.io.dicom.convert import ConvertResult
from medpipe.io.dicomweb import PullResult, PushResult
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
        self.cache_task: TaskID | None = None
        self.check_task: TaskID | None = None
        self.val_task: TaskID | None = None
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
            self.console.print(escape(ev.message))
        elif ev.kind == "notice":
            self.console.print(f"[yellow]note[/]: {escape(ev.message)}")
        elif ev.kind == "step":
            if self.task is None:
                total = ev.steps * (ev.epochs - ev.epoch + 1)
                self.task = self.progress.add_task("train", total=total, info="")
            self.progress.update(self.task, advance=1, description=f"epoch {ev.epoch}/{ev.epochs}",
                                 info=f"loss {ev.loss:.3f}{self.dice}")
        elif ev.kind == "val_case":
            if self.val_task is None or ev.step == 1:
                if self.val_task is not None:
                    self.progress.remove_task(self.val_task)
                self.val_task = self.progress.add_task("validating", total=ev.steps, info="cases")
            self.progress.update(self.val_task, completed=ev.step)
        elif ev.kind == "phase":
            self.console.print(escape(ev.message))
        elif ev.kind == "check":
            if self.check_task is None:
                self.check_task = self.progress.add_task("checking data", total=ev.steps, info="cases")
            self.progress.update(self.check_task, completed=ev.step)
        elif ev.kind == "cache":
            if self.cache_task is None:
                self.cache_task = self.progress.add_task("caching", total=ev.steps, info="cases")
            self.progress.update(self.cache_task, completed=ev.step)
        elif ev.kind == "validation":
            what = "" if set(ev.dice) <= {"auc", "accuracy"} else "Dice "  # classification: AUC, accuracy
            self.dice = f" | val {what}" + " ".join(f"{escape(k)} {v:.3f}" for k, v in ev.dice.items())
            if self.task is not None:  # the bar shows the latest validation, also after the last step
                loss = f"loss {ev.loss:.3f}" if ev.loss is not None else ""
                self.progress.update(self.task, info=loss + self.dice)

    def on_case(self, res: CaseResult, i: int, n: int) -> None:
        """Callback for :func:`medpipe.infer.infer`."""
        if self.case_task is None:
            self.case_task = self.progress.add_task("segmenting", total=n, info="")
        self.progress.update(self.case_task, completed=i, info=f"{escape(res.case_id)}: {res.status}")


@contextlib.contextmanager
def check_progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    """A per-case bar for ``medpipe dataset check``; yields the ``on_case(case_id, done, total)`` callback."""
    progress = Progress(TextColumn("[bold]checking"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console, transient=True)
    task: list[TaskID] = []

    def on_case(case_id: str, done: int, total: int) -> None:
        if not task:
            task.append(progress.add_task("check", total=total, info=""))
        progress.update(task[0], completed=done, info=escape(case_id))

    with progress:
        yield on_case


@contextlib.contextmanager
def case_progress(console: Console, verb: str) -> Iterator[Callable[[CaseResult, int, int], None]]:
    """A per-case progress bar; yields the callback for the library."""
    progress = Progress(TextColumn(f"[bold]{verb}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[case]}"), TimeElapsedColumn(), console=console)
    task: list[TaskID] = []

    def on_case(res: CaseResult, i: int, n: int) -> None:
        if not task:
            task.append(progress.add_task(verb, total=n, case=""))
        progress.update(task[0], completed=i, case=f"{escape(res.case_id)}: {res.status}")

    with progress:
        yield on_case


def render_infer(console: Console, result: InferResult) -> None:
    """A table of cases with status, seconds and the mask written (or the error). Columns no case fills (lesions
    and QC for a classifier, seconds where they were not timed) are left out."""
    table = Table(title="medpipe infer", show_lines=False)
    timed = any(c.seconds for c in result.cases)
    lesions = any(c.lesions is not None for c in result.cases)
    qcs = any(c.qc is not None for c in result.cases)
    columns = ["case", "status"] + ["seconds"] * timed + ["lesions"] * lesions + ["QC"] * qcs
    for col in [*columns, "mask / error" if lesions or qcs else "output / error"]:
        table.add_column(col)
    style = {"ok": "green", "skipped": "cyan", "failed": "red"}
    for c in result.cases:
        shown = (c.error or "") if c.status == "failed" else str(c.mask or "")
        if c.push is not None and c.push.ok:
            shown += f" (SEG pushed to {c.push.server})"
        if c.note:
            shown += f" ({c.note})"
        # one reason per line: a case with three reasons stays a readable row, on a terminal and in a log file
        reasons = "\n".join(escape(r) for r in str(c.qc["qc_reasons"]).split("; ")) if c.qc else ""
        qc = "" if c.qc is None else ("[yellow]review[/]:\n" + reasons if c.qc["review"] else "ok")
        row = [escape(c.case_id), f"[{style[c.status]}]{c.status}[/]"] + [f"{c.seconds:.1f}"] * timed
        row += ["" if c.lesions is None else str(c.lesions)] * lesions + [qc] * qcs
        table.add_row(*row, escape(shown))
    console.print(table)


def render_table(result: EvaluationResult) -> Table:
    """Per-label summary for the terminal: Dice mean ± sd, HD95/ASSD median [IQR] (mm), NSD, empty counts."""
    tol = result.settings.nsd_tolerance_mm
    table = Table(title=f"Evaluation: {len(result.cases)} case(s), preset {result.settings.preset}",
                  caption=escape(caption_text(result)), caption_justify="left")
    for col, just in (("label", "left"), ("n", "right"), ("Dice", "right"), ("HD95 mm", "right"),
                      ("ASSD mm", "right"), ("NSD", "right"), ("empty both/ref/pred", "center")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    lesion = any(e.lesions is not None for e in result.summary.values())
    if lesion:
        table.add_column("lesion Dice", justify="right")
        table.add_column("lesions TP/FN/FP", justify="center")
    for key, entry in result.summary.items():
        empty = entry.empty
        t = tol.get(key)
        cells = [escape(label_title(key, entry.label_name)), str(entry.n_cases), fmt_stat(entry, "dice"),
                 fmt_stat(entry, "hd95_mm", "median"), fmt_stat(entry, "assd_mm", "median"),
                 fmt_stat(entry, "nsd") + (f" @{t:g} mm" if t is not None else ""),
                 f"{empty['both']}/{empty['ref']}/{empty['pred']}"]
        if lesion:
            les = entry.lesions
            cells += [fmt_stat(entry, "lesion_dice"), f"{les.tp}/{les.fn}/{les.fp}" if les else "0/0/0"]
        table.add_row(*cells)
    return table


def render_info(result: InfoResult) -> Any:
    """A rich renderable (a table and a line on skipped files) for ``medpipe info``."""
    table = Table(title=escape(f"{result.path} ({result.kind})"), title_justify="left", show_lines=True)
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
            *(escape(x) for x in (v.label, v.description, v.modality, size, spacing, v.orientation or "?", v.plane,
                                  v.storage)), problems
        )
    parts: list[Any] = [table]
    if result.kind == "dicom":
        skipped = ", ".join(f"{n} {reason}" for reason, n in result.skipped.items()) or "none"
        parts.append(Text(f"{result.n_files} files; skipped: {skipped}"))
    return Group(*parts)


def render_convert(result: ConvertResult) -> Any:
    """A rich renderable for ``medpipe convert``: written files, failed volumes (red), skipped files."""
    table = Table(title=escape(f"converted into {result.out_dir}"), title_justify="left")
    for name in ("Series", "Description", "File", "Size", "Spacing (mm)", "Orient.", "Type", "Repairs"):
        table.add_column(name, overflow="fold")
    for v in result.written:
        table.add_row(
            escape(v.label),
            escape(v.description),
            escape(v.nifti.name),
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
    orientations = Counter(c.orientation for c in fp.cases)
    if len(orientations) > 1:
        lines.append(Text("voxel orders vary (" + ", ".join(f"{o} {n}" for o, n in orientations.most_common())
                          + "): normal, every case is reoriented to RAS; only a slice axis out of line is warned"))
    median = list(fp.spacing_mm.median) if fp.spacing_mm else None
    lines.append(Text(f"{report.dataset.format} dataset, {fp.dataset.n_cases} cases, channels "
                      f"{', '.join(fp.dataset.channels)}, modality {fp.modality}, median spacing (RAS) "
                      f"{median} mm: {len(report.errors)} errors, "
                      f"{len(report.warnings)} warnings"))
    return Group(*lines)


def render_pull(result: PullResult) -> Any:
    """``medpipe pull``: one row per series (folder, instances downloaded / already present)."""
    table = Table(title=escape(f"pulled study {result.study_uid} from {result.server}"), title_justify="left")
    for name in ("Series UID", "Folder", "Instances", "Downloaded", "Already there"):
        table.add_column(name, overflow="fold")
    for s in result.series:
        table.add_row(s.series_uid, escape(str(s.folder)), str(s.n_instances), str(s.n_downloaded), str(s.n_present))
    return table


def render_push(result: PushResult, max_rows: int = 40) -> Any:
    """``medpipe push``: the instances that were not stored (red) and a one-line summary."""
    lines: list[Any] = []
    for i in result.failed[:max_rows]:
        lines.append(Text(f"not stored: {i.file} ({i.sop_instance_uid}): {i.reason}", style="bold red"))
    if len(result.failed) > max_rows:
        lines.append(Text(f"... {len(result.failed) - max_rows} more (--json lists every instance)"))
    n = len(result.instances)
    style = "green" if result.ok else "bold red"
    lines.append(Text(f"stored {result.n_stored} of {n} instance(s) on {result.server}", style=style))
    return Group(*lines)


def render_model_card(card: dict[str, Any]) -> Any:
    """The model card of a package (``PackageContents.to_json()``): model, inputs, preprocessing, labels, folds
    with validation metrics, provenance and licence."""
    m = card["manifest"]
    pre, sw, arch = m["preprocessing"], m["sliding_window"], m["architecture"]
    head = Table(title=escape(f"{m['name']}  ({card['path']}, {card['size_bytes'] / 1e6:.1f} MB, sha256 verified)"),
                 title_justify="left", show_header=False)
    head.add_column("field", style="bold")
    head.add_column("value", overflow="fold")
    norms = "; ".join(f"ch{n['channel']} {n['kind']} {n.get('params') or ''}".strip() for n in pre["normalisation"])
    rows = [
        ("format", m["format"]),
        ("architecture", f"{arch['name']}{' (slice-wise 2D)' if arch.get('slice_wise') else ''} "
                         + ", ".join(f"{k}={v}" for k, v in arch["args"].items() if k in
                                     ("channels", "filters", "strides", "feature_size", "init_filters",
                                      "features_per_stage"))),
        ("inputs", ", ".join(f"{c['index']}: {c['name']} ({c['modality']})" for c in m["channels"])),
        ("preprocessing", _preprocessing_line(pre)),
        ("normalisation", norms),
        ("sliding window", f"patch {'x'.join(map(str, sw['patch_size_vox']))}, overlap {sw['overlap']:g}, "
                           f"{sw['blend']} blend"),
        ("output", f"{m['output']['activation']}; TTA axes {m['output'].get('tta_axes') or 'none'}"),
        ("regions", ", ".join(f"{r['name']}={r['labels']}" for r in m.get("regions", [])) or "none"),
        ("postprocessing", str(m.get("postprocessing") or "none")),
        ("source", ", ".join(f"{k}: {v}" for k, v in m.get("source", {}).items()) or "?"),
        ("licence", m.get("licence", "unspecified")),
        ("software", ", ".join(f"{k} {v}" for k, v in m.get("software", {}).items())),
    ]
    for key, value in rows:
        head.add_row(key, escape(str(value)))
    labels = Table(title="labels", title_justify="left")
    for col in ("value", "name", "colour", "SNOMED category", "SNOMED type"):
        labels.add_column(col)
    for lab in m["labels"]:
        r, g, b = lab["color"]
        swatch = Text("■ ", style=f"rgb({r},{g},{b})") + f"#{r:02x}{g:02x}{b:02x}"
        labels.add_row(str(lab["value"]), escape(lab["name"]), swatch, _code(lab.get("category")),
                       _code(lab.get("type")))
    folds = Table(title="folds", title_justify="left")
    for col in ("fold", "weights", "onnx", "validation"):
        folds.add_column(col, overflow="fold")
    for f in m["folds"]:
        metrics = ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} -" for k, v in f["metrics"].items())
        folds.add_row(str(f["fold"]), escape(f["weights"]), escape(f.get("onnx") or "-"), escape(metrics or "-"))
    return Group(head, labels, folds)


def _preprocessing_line(pre: dict[str, Any]) -> str:
    spacing = " x ".join(f"{s:g}" for s in pre["target_spacing_mm"])
    if pre["kind"] != "nnunet":
        return (f"{pre['kind']}: orientation {pre['orientation']}, spacing {spacing} mm, "
                f"crop to foreground {'yes' if pre['crop_foreground'] else 'no'}")
    p = pre["params"]
    res = p["resampling"]
    return (f"nnunet: file voxel order transposed {p['transpose_forward']}, crop to non-zero, spacing {spacing} mm, "
            f"resampling data order {res['data']['order']} (z {res['data']['order_z']}), logits order "
            f"{res['probabilities']['order']} (z {res['probabilities']['order_z']}), separate z above anisotropy "
            f"{p['anisotropy_threshold']:g}; tiles step {p['tile_step_size']:g}, Gaussian sigma "
            f"{p['gaussian_sigma_scale']:g} x patch, {p['accumulate']} accumulation")


def _code(code: dict[str, str] | None) -> str:
    return escape(f"{code['value']} {code['meaning']}") if code else "-"


class BatchProgress:
    """``medpipe batch``: a bar over the cases (done + failed), with running/failed counts; crashes, timeouts and
    submissions as lines above it."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console)
        self.task: TaskID | None = None

    def __enter__(self) -> BatchProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, ev: BatchEvent) -> None:
        """Callback for :func:`medpipe.batch.run.run_batch`."""
        c = ev.counts
        if ev.kind in ("crash", "timeout"):
            self.progress.console.print(f"[yellow]{ev.kind}[/]: {escape(ev.message)}", highlight=False)
        elif ev.kind == "submitted":
            self.progress.console.print(f"submitted {escape(ev.message)}", highlight=False)
        if self.task is None:
            self.task = self.progress.add_task("batch", total=c.total, info="")
        self.progress.update(self.task, total=c.total, completed=c.done + c.failed,
                             info=f"{c.running} running, {c.failed} failed")


def render_batch_status(status: BatchStatus, max_failed: int = 30) -> Any:
    """Counts, throughput and ETA, then the failed cases with their reasons."""
    c = status.counts
    rate = f"{status.cases_per_hour:.0f} cases/hour" if status.cases_per_hour else "throughput: -"
    eta = f", ETA {status.eta_s / 60:.1f} min" if status.eta_s else ""
    parts: list[Any] = [Text.from_markup(
        f"[green]{c.done} done[/], [red]{c.failed} failed[/], [yellow]{c.running} running[/], {c.pending} pending "
        f"of {c.total} ({status.launcher}); {rate}{eta}")]
    if status.failed:
        table = Table(title="failed cases", title_justify="left")
        for col in ("case", "attempts", "reason"):
            table.add_column(col, overflow="fold")
        for r in status.failed[:max_failed]:
            table.add_row(escape(r.case_id), str(r.attempts), escape(r.reason or ""))
        parts.append(table)
        if len(status.failed) > max_failed:
            parts.append(Text(f"... {len(status.failed) - max_failed} more in batch.json"))
    return Group(*parts)


def render_detection(det: DetectionResult) -> Table:
    """Lesion detection per label: counts, sensitivity, precision, F1, FROC CPM; the rule and score as caption."""
    table = Table(title="Lesion detection", caption=escape(f"{det.rule.describe()}; FROC score: {det.score}"),
                  caption_justify="left")
    for col in ("label", "ref", "pred", "TP", "FP", "FN", "sensitivity", "precision", "F1", "CPM"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for d in det.labels:
        table.add_row(escape(label_title(d.label, d.label_name)),
                      *(str(v) for v in (d.n_ref, d.n_pred, d.tp, d.fp, d.fn)),
                      *(f"{v:.3f}" for v in (d.sensitivity, d.precision, d.f1, d.cpm)))
    return table


def render_classification(summary: ClassificationSummary) -> Table:
    """Per class (one-vs-rest) sensitivity, specificity and ROC AUC with its interval; accuracy, balanced accuracy
    and the overall AUC in the title; reference cases without a prediction in the caption."""
    m = summary.metrics

    def ci(lo: float, hi: float) -> str:
        return "" if math.isnan(lo) else f"{lo:.3f}–{hi:.3f}"

    what = f"{m.classes[1]} vs {m.classes[0]}" if len(m.classes) == 2 else "macro one-vs-rest"
    missing = summary.missing_predictions
    caption = (f"No prediction for {len(missing)} truth case(s): {', '.join(missing[:8])}"
               f"{' ...' if len(missing) > 8 else ''}" if missing else None)
    table = Table(title=f"Classification: {m.n} case(s), accuracy {m.accuracy:.3f}, balanced accuracy "
                        f"{m.balanced_accuracy:.3f}, AUC ({what}) {m.auc:.3f} [{ci(*m.auc_ci)}]",
                  caption=escape(caption) if caption else None, caption_justify="left")
    for col in ("class", "true cases", "predicted", "sensitivity", "specificity", "ROC AUC", "AUC 95 % CI"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in m.per_class:
        table.add_row(escape(c.name), str(c.n), str(sum(r[c.index] for r in m.confusion)),
                      *(f"{v:.3f}" for v in (c.sensitivity, c.specificity, c.auc)), ci(*c.auc_ci))
    return table
