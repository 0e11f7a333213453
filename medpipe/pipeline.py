"""The whole job in one call: train on a config's dataset, segment its held-out cases, score them.

``RUN_DIR/model`` holds the training run, ``RUN_DIR/predictions`` the masks (+ sidecars) of the validation
cases, ``RUN_DIR/report`` the evaluation (metrics.csv, summary.json, report.html). For ``task: classification``
the predictions are ``predictions.csv`` (+ sidecars), ``RUN_DIR/references/labels.csv`` holds the validation
cases' classes and the report is :func:`medpipe.evaluation.classify.evaluate_classification`'s.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpipe.config import PipelineConfig
from medpipe.datasets.classes import load_task_dataset
from medpipe.errors import OutputError
from medpipe.evaluation.evaluate import evaluate
from medpipe.inference.batch import CaseResult, InferResult, infer
from medpipe.io.atomic import write_text_atomic
from medpipe.training.run import TrainEvent, TrainResult, train
from medpipe.training.state import resumable


@dataclass(frozen=True)
class PipelineResult:
    train: TrainResult
    infer: InferResult
    evaluation: Any
    run_dir: Path


#: The sub-folders ``medpipe run`` creates (and the only ones ``--force`` removes).
PIPELINE_PARTS = ("model", "inputs", "predictions", "references", "report")


class AlreadyFinished(OutputError):
    """``medpipe run`` into a folder whose job is complete: nothing to redo (``report`` holds the report)."""

    def __init__(self, run_dir: Path) -> None:
        self.report = run_dir / "report" / "report.html"
        super().__init__(f"this job has already finished: the report is {self.report}", path=run_dir,
                         hint="nothing to redo; pass --force to start over")


def check_run_folder(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Decide at once, before any work, what a run into ``run_dir`` means: a new job (empty folder), nothing to
    do (:class:`AlreadyFinished`), a resume (``--resume``), or a fresh start (``--force`` removes the parts a
    previous job wrote). An unfinished job without ``--resume`` is refused, naming what it holds."""
    run_dir = Path(run_dir)
    if force:
        for part in PIPELINE_PARTS:
            target = run_dir / part
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)
        return
    if (run_dir / "report" / "summary.json").is_file():
        raise AlreadyFinished(run_dir)
    started = [p for p in PIPELINE_PARTS if (run_dir / p).exists()]
    if started and not resume:
        what = "an unfinished training run" if resumable(run_dir / "model") else "parts of a job: " + ", ".join(started)
        raise OutputError(f"folder holds {what}", path=run_dir,
                          hint="--resume to continue it, --force to start over, or choose a new --out")


def run_pipeline(cfg: PipelineConfig, run_dir: Path, *, data_root: Path | None = None, epochs: int | None = None,
                 device: str = "auto", resume: bool = False, force: bool = False,
                 on_train: Callable[[TrainEvent], None] | None = None,
                 on_case: Callable[[CaseResult, int, int], None] | None = None) -> PipelineResult:
    """Train -> infer the validation split -> evaluate against its labels. A folder that already holds a finished
    job raises :class:`AlreadyFinished` before any work (see :func:`check_run_folder`)."""
    check_run_folder(run_dir, resume=resume, force=force)
    model_dir = run_dir / "model"
    trained = train(cfg, model_dir, data_root=data_root, epochs=epochs, device=device,
                    resume=resume and (model_dir / "last.pt").is_file(), on_event=on_train)
    split = json.loads((model_dir / "split.json").read_text())
    root = data_root if data_root is not None else Path(cfg.data.root)
    cases = {c.case_id: c for c in load_task_dataset(cfg, root).cases}
    val = [cases[cid] for cid in split["val"]]
    pred_dir, ref_dir = run_dir / "predictions", run_dir / "references"
    ref_dir.mkdir(parents=True, exist_ok=True)
    if cfg.is_classification:
        return _classification_job(cfg, run_dir, trained, val, split["classes"], device, on_case)
    inputs: list[Path] = []
    for case in val:
        # Stage held-out cases under their case id (layouts like KiTS name every image imaging.nii.gz).
        for chan, image in zip(cfg.channels, case.images, strict=False):
            name = f"{case.case_id}.nii.gz" if len(case.images) == 1 else f"{case.case_id}_{chan}.nii.gz"
            inputs.append(_link(image, run_dir / "inputs" / name))
        if case.label is not None:
            _link(case.label, ref_dir / f"{case.case_id}.nii.gz")
    inferred = infer(model_dir, inputs, pred_dir, device=device, on_case=on_case)
    report = evaluate(pred_dir, ref_dir, run_dir / "report", labels=cfg.labels,
                      image=run_dir / "inputs" if len(cfg.channels) == 1 else None)
    return PipelineResult(trained, inferred, report, run_dir)


def _stage_inputs(cfg: PipelineConfig, case: Any, run_dir: Path) -> list[Path]:
    """Held-out case images linked under their case id (layouts like KiTS name every image imaging.nii.gz)."""
    return [_link(image, run_dir / "inputs" / (f"{case.case_id}.nii.gz" if len(case.images) == 1
                                               else f"{case.case_id}_{chan}.nii.gz"))
            for chan, image in zip(cfg.channels, case.images, strict=False)]


def _classification_job(cfg: PipelineConfig, run_dir: Path, trained: TrainResult, val: list[Any],
                        classes: dict[str, int], device: str,
                        on_case: Callable[[CaseResult, int, int], None] | None) -> PipelineResult:
    """Classify the held-out cases and score them against the classes training used (split.json)."""
    from medpipe.evaluation.classify import evaluate_classification

    inputs = [p for case in val for p in _stage_inputs(cfg, case, run_dir)]
    truth = run_dir / "references" / "labels.csv"
    write_text_atomic(truth, "case,label\n" + "".join(f"{c.case_id},{cfg.classes[classes[c.case_id]]}\n"
                                                      for c in val))
    inferred = infer(run_dir / "model", inputs, run_dir / "predictions", device=device, on_case=on_case)
    report = evaluate_classification(run_dir / "predictions", truth, run_dir / "report", classes=cfg.classes)
    return PipelineResult(trained, inferred, report, run_dir)


def _link(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(Path(src).resolve())
    return dest
