"""What a newcomer trips over (issue 16): KiTS case folders as infer input, errors reported once, brackets in
names, help text, full-width output off a terminal, the final training bar and the training-curve colours."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.inference.inputs import collect_inputs, is_label_file
from medpipe.training.events import TrainEvent
from tests.cli.test_cli import kits, tiny_config  # noqa: F401  (module fixtures)

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, kits: Path) -> tuple[Path, str]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("run")
    res = runner.invoke(app, ["train", str(tiny_config(tmp, kits)), "--out", str(tmp / "run"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return tmp / "run", res.output


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_label_files_of_known_layouts_are_recognised(tmp_path: Path) -> None:
    for name in ("segmentation.nii.gz", "BraTS-GLI-00000-000-seg.nii.gz", "case_seg.nii", "x_segmentation.nii.gz"):
        assert is_label_file(tmp_path / name), name
    assert is_label_file(tmp_path / "labelsTr" / "case_001.nii.gz")
    for name in ("imaging.nii.gz", "case_0000.nii.gz", "BraTS-GLI-00000-000-t1n.nii.gz", "segment1.nii.gz"):
        assert not is_label_file(tmp_path / name), name


def test_kits_case_folder_segments_the_image_not_the_label(kits: Path) -> None:  # noqa: F811
    cases = collect_inputs([kits / "case_00000"], ("ct",))
    assert [(c.case_id, [f.name for f in c.files]) for c in cases] == [("case_00000", ["imaging.nii.gz"])]
    assert cases[0].note is not None and "imaging.nii.gz" in cases[0].note and "segmentation.nii.gz" in cases[0].note


def test_infer_on_kits_case_folder_says_which_file_was_the_image(trained_run: tuple[Path, str], kits: Path,  # noqa: F811
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["infer", str(trained_run[0]), str(kits / "case_00000"), "-o", str(out),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "image imaging.nii.gz" in text and "segmentation.nii.gz not segmented" in text
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_00000.nii.gz"]


def test_failed_case_is_reported_once(trained_run: tuple[Path, str], tmp_path: Path) -> None:
    import nibabel as nib

    bad = tmp_path / "broken.nii.gz"
    data = np.zeros((16, 16, 8), np.float32)
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(bad))
    res = runner.invoke(app, ["infer", str(trained_run[0]), str(bad), "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 1
    assert res.output.count("NaN") == 1, res.output


def test_names_with_brackets_and_long_names_are_shown_whole(trained_run: tuple[Path, str], kits: Path,  # noqa: F811
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    # "[arterial 3-2]" has the shape of a rich markup tag: unescaped, rich would swallow it (and the "[3-2]")
    long_name = "series[arterial 3-2]_" + "x" * 90
    shutil.copy(kits / "case_00001" / "imaging.nii.gz", folder / f"{long_name}.nii.gz")
    res = runner.invoke(app, ["infer", str(trained_run[0]), str(folder), "-o", str(tmp_path / "o"),
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert long_name in res.output  # not eaten as markup, not folded or cut at 80 columns
    assert "series_x" not in res.output  # nowhere (the results table's case cell included) without its brackets


def test_help_shows_flags_without_a_value_and_the_series_labels() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "--debug" in res.output and "<bool>" not in res.output
    res = runner.invoke(app, ["infer", "--help"])
    text = _flat(res.output)
    assert "<bool>" not in text and "--no-overwrite" not in text
    assert "3-2" in text and "SeriesInstanceUID" in text


def test_training_shows_caching_and_the_final_bar_shows_the_latest_dice(trained_run: tuple[Path, str]) -> None:
    assert "caching 5 cases in memory" in _flat(trained_run[1])
    assert "checking data" in _flat(trained_run[1])  # the pre-flight (reads every voxel) shows progress too
    from medpipe.cli.render import TrainProgress

    with TrainProgress(Console(file=io.StringIO(), width=200)) as progress:
        for i in range(2):
            progress.update(TrainEvent("step", 1, 1, i + 1, 2, 0.5))
        progress.update(TrainEvent("val_case", 0, 1, 1, 1))
        progress.update(TrainEvent("validation", 1, 1, dice={"kidney": 0.25}, loss=0.5))
        assert progress.task is not None
        info = progress.progress.tasks[0].fields["info"]
    assert "kidney 0.250" in info
    assert [t.description for t in progress.progress.tasks] == ["epoch 1/1", "validating"]


def test_training_curve_loss_and_dice_colours_differ() -> None:
    from matplotlib.colors import to_rgb

    from medpipe.training.runlog import curve_figure

    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_dice_kidney": 0.1 * e, "val_dice_mean": 0.1 * e}
            for e in (1, 2, 3)]
    fig = curve_figure(rows)
    loss_ax, dice_ax = fig.axes
    loss = np.array(to_rgb(loss_ax.lines[0].get_color()))
    dice = [np.array(to_rgb(line.get_color())) for line in dice_ax.lines]
    assert len(dice) == 2
    for d in dice:
        assert np.abs(d - loss).sum() > 0.6  # clearly different hues, not two blues


@pytest.mark.parametrize(("n", "fold", "n_folds", "why"), [(4, 0, 4, "4-fold"), (2, -1, 5, "hold-out")])
def test_plan_on_a_small_dataset_writes_a_split_train_accepts(tmp_path: Path, n: int, fold: int, n_folds: int,
                                                              why: str) -> None:
    from medpipe.config import load_config
    from medpipe.datasets.layouts import load_dataset
    from medpipe.datasets.splits import select_split
    from tests.datasets.test_layouts import make_layout

    root = make_layout(tmp_path / "k", "kits", n=n)
    out = tmp_path / "plan.yaml"
    res = runner.invoke(app, ["plan", str(root), "-o", str(out), "--gpu-mem-gb", "4"])
    assert res.exit_code == 0, res.output
    assert why in _flat(res.output) and why in out.read_text()
    cfg = load_config(out)
    assert (cfg.data.fold, cfg.data.n_folds) == (fold, n_folds)
    d = cfg.data
    train, val, _ = select_split(load_dataset(root, "auto").cases, fold=d.fold, n_folds=d.n_folds,
                                 val_fraction=d.val_fraction, seed=d.seed, splits_file=None)
    assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n


def test_dataset_check_on_the_sample_data_is_clean_but_a_misplaced_slice_axis_warns(tmp_path: Path) -> None:
    import nibabel as nib

    from tests.conftest import REPO

    res = runner.invoke(app, ["dataset", "check", str(REPO / "sample_data" / "kits")])
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "orientation" not in text and "0 warnings" in text and "voxel orders vary" in text
    root = tmp_path / "kits"
    for case in sorted((REPO / "sample_data" / "kits").iterdir())[:4]:
        shutil.copytree(case, root / case.name)
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):  # case 0 (IPL): a header that puts 2.5 mm along x
        img = nib.load(str(root / "case_00000" / name))
        bad = nib.Nifti1Image(np.asarray(img.dataobj), np.diag([-2.5, -0.8, 0.8, 1.0]), img.header)
        bad.set_qform(bad.affine, 1)
        bad.set_sform(bad.affine, 1)
        nib.save(bad, str(root / "case_00000" / name))
    res = runner.invoke(app, ["dataset", "check", str(root)])
    text = _flat(res.output)
    assert "case_00000 [orientation]" in text and "thick-slice axis" in text, text


def test_input_far_outside_the_training_range_gets_a_notice(trained_run: tuple[Path, str], kits: Path,  # noqa: F811
                                                            tmp_path: Path) -> None:
    import json

    import nibabel as nib

    from medpipe.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(trained_run[0] / "best.pt")
    assert ckpt["training_range"]["n_cases"] >= 3 and "CT" in ckpt["training_range"]["channels"]
    src = nib.load(str(kits / "case_00003" / "imaging.nii.gz"))
    # Same anatomy, but voxels 5x finer in the header and HU scaled up 10x: far outside what the model saw.
    far = nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32) * 10.0, src.affine @ np.diag([0.2, 0.2, 0.2, 1]))
    nib.save(far, str(tmp_path / "far.nii.gz"))
    out = tmp_path / "o"
    res = runner.invoke(app, ["infer", str(trained_run[0]), str(tmp_path / "far.nii.gz"), str(kits / "case_00003"),
                              "-o", str(out), "--device", "cpu", "--allow-non-hu"])
    assert res.exit_code == 0, res.output
    text = _flat(res.output)
    assert "outside the training range: spacing" in text and "intensities" in text
    side = json.loads((out / "far.json").read_text())
    assert any("spacing" in n for n in side["out_of_training_range"])
    assert json.loads((out / "case_00003.json").read_text())["out_of_training_range"] == []


def test_an_mr_series_given_to_a_ct_model_is_refused_as_mr(tmp_path: Path) -> None:
    from medpipe.config import config_from_dict
    from medpipe.models.checkpoint import save_checkpoint
    from medpipe.models.factory import build_model
    from tests.dicom_factory import write_series

    cfg = config_from_dict({"labels": {0: "background", 1: "organ"},
                            "transforms": {"spacing_mm": [1.0, 1.0, 2.0], "crop_foreground": False},
                            "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0},
                            "inference": {"roi_size_vox": [32, 32, 16], "sw_batch_size": 2, "overlap": 0.0}})
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, build_model(cfg), cfg)
    write_series(tmp_path / "dcm", modality="MR")
    res = runner.invoke(app, ["infer", str(ckpt), str(tmp_path / "dcm"), "-o", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    text = _flat(res.output)
    assert "modality MR, not CT" in text and "rescale intercept" not in text
    assert text.count("modality MR") == 1  # reported once


def test_dataset_check_reports_progress_per_case(kits: Path) -> None:  # noqa: F811
    from medpipe.datasets import check_dataset

    seen: list[tuple[int, int]] = []
    check_dataset(kits, on_case=lambda _case, done, total: seen.append((done, total)))
    n = len(seen)
    assert n and seen[-1][1] == n and sorted(d for d, _ in seen) == list(range(1, n + 1))



def test_markup_shaped_names_survive_every_kind_of_cli_output(tmp_path: Path) -> None:
    """Case names and paths shaped like rich markup tags ("[arterial 3-2]") are shown as they are in table rows,
    captions and the lines naming output files (here: evaluate's label row, missing-case caption, report path)."""
    from tests.conftest import make_affine, save_nifti

    pred, ref, out = tmp_path / "pred", tmp_path / "ref", tmp_path / "out[b 1]"
    pred.mkdir()
    ref.mkdir()
    mask = np.zeros((6, 6, 4), np.uint8)
    mask[1:4, 1:4, 1:3] = 1
    for case in ("a", "ct[arterial 3-2]"):
        save_nifti(ref / f"{case}.nii.gz", mask, make_affine())
    save_nifti(pred / "a.nii.gz", mask, make_affine())
    res = runner.invoke(app, ["evaluate", str(pred), str(ref), "-o", str(out), "--labels", "1=kidney[left]"])
    assert res.exit_code == 0, res.output
    assert "ct[arterial 3-2]" in res.output  # the caption: no prediction for this reference case
    assert "1 kidney[left]" in res.output  # the label row
    assert f"report: {out / 'report.html'}" in _flat(res.output)


def test_qc_reasons_are_one_per_line_so_a_piped_table_stays_readable() -> None:
    import io

    from rich.console import Console

    from medpipe.cli.render import render_infer
    from medpipe.inference.batch import CaseResult, InferResult

    reasons = ["label 2 (tumor): volume 0.0 ml outside the training range [1.1, 3.6] ml (margin 0.25)",
               "label 2 (tumor): maximum probability 0.43 below 0.7",
               "label 2 (tumor): mean uncertainty 0.94 above 0.4"]
    case = CaseResult("case_00008", "ok", Path("runs/x/predictions/case_00008.nii.gz"), seconds=0.2, lesions=4,
                      qc={"review": True, "qc_reasons": "; ".join(reasons)})
    buf = io.StringIO()
    render_infer(Console(file=buf, width=1000, color_system=None), InferResult([case]))
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) < 200  # was one 300-column row in a log file
    for reason in reasons:
        assert any(reason in line for line in lines), reason
