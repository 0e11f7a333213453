"""Report rendering: rich table, CSV columns, self-contained HTML with embedded figures, overlay PNG."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console

from medpipe.cli.render import render_table
from medpipe.evaluation.evaluate import evaluate
from tests.conftest import make_affine

AFFINE = make_affine(perm=(1, 0, 2), flips=(-1, 1, 1), spacing=(1.2, 0.9, 2.5))


def _case(tmp: Path, name: str, shift: int) -> None:
    ref = np.zeros((20, 22, 10), np.int16)
    ref[5:14, 6:15, 2:8] = 1
    ref[8:11, 9:12, 4:6] = 3
    pred = np.roll(ref, shift, axis=1)
    image = (ref * 40 + np.random.default_rng(0).normal(100, 10, ref.shape)).astype(np.float32)
    for folder, data in (("ref", ref), ("pred", pred), ("img", image)):
        (tmp / folder).mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, AFFINE), str(tmp / folder / f"{name}.nii.gz"))


def test_report_files_table_and_overlays(tmp_path: Path) -> None:
    _case(tmp_path, "good", 0)
    _case(tmp_path, "bad", 3)
    result = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", labels={1: "kidney", 3: "tumour"},
                      image=tmp_path / "img")
    assert set(result.overlays) == {"good", "bad"}
    png = result.overlays["bad"]
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    text = (tmp_path / "out" / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # box plots + one overlay per case
    assert all(base64.b64decode(b).startswith(b"\x89PNG") for b in images)
    assert "src=\"http" not in text and "<link" not in text and "<script" not in text
    assert text.index('id="case-bad"') < text.index('id="case-good"')  # worst case first
    console = Console(width=200, record=True)
    console.print(render_table(result))
    out = console.export_text()
    assert "1 kidney" in out and "3 tumour" in out and "0/0/0" in out


def test_lesion_table_and_csv_for_brats(tmp_path: Path) -> None:
    ref = np.zeros((30, 30, 30), np.int16)
    ref[5:12, 5:12, 5:12] = 2
    ref[7:10, 7:10, 7:10] = 3
    pred = ref.copy()
    pred[20:25, 20:25, 20:25] = 2  # a false-positive lesion (WT)
    for folder, data in (("ref", ref), ("pred", pred)):
        (tmp_path / folder).mkdir()
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / folder / "c.nii.gz"))
    result = evaluate(tmp_path / "pred", tmp_path / "ref", tmp_path / "out", preset="brats")
    wt = result.rows[0]
    assert wt.label_name == "WT" and wt.lesions is not None and wt.lesions.fp == 1 and wt.lesions.tp == 1
    assert wt.lesions.dice == 0.5  # (1 + 0) / (1 lesion + 1 false positive)
    assert (tmp_path / "out" / "lesions.csv").read_text().count("\n") == 4  # header + WT, TC, ET lesions
    assert "Lesion-wise" in (tmp_path / "out" / "report.html").read_text()
    assert result.summary[1].lesions is not None and result.summary[1].lesions.fp_per_case == 1.0
