"""Ensembles and mirror TTA: fold folders x TTA land on the source grid; an ensemble of identical models equals the
single model; flips are exactly inverted on an asymmetric phantom; probabilities and uncertainty maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medpipe.cli import app
from medpipe.errors import CheckpointError, ConfigError
from medpipe.inference.batch import infer
from medpipe.inference.inputs import LoadedCase, collect_inputs, load_case
from medpipe.inference.models import load_model_set
from medpipe.inference.predictor import Predictor
from medpipe.inference.probabilities import uncertainty_maps
from medpipe.inference.tta import flip_spatial, mirror_passes
from medpipe.io.geometry import check_on_grid, grid_of
from tests.conftest import make_affine, save_nifti, sphere_phantom
from tests.inference_models import Pointwise, pointwise_set, save_fold_folders, tiny_cfg

runner = CliRunner()


@pytest.fixture(scope="module")
def cv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_fold_folders(tmp_path_factory.mktemp("cv"))


def asymmetric_phantom(tmp_path: Path) -> Path:
    """An oblique, anisotropic, flipped CT with an off-centre sphere and a bar along one edge: no mirror
    symmetry along any axis."""
    aff = make_affine((2, 0, 1), (-1, 1, -1), (0.9, 1.3, 2.5), (8, -5, 12), (12.0, -40.0, 30.0))
    shape = (40, 36, 16)
    centre = aff[:3, :3] @ np.array([12.0, 22.0, 9.0]) + aff[:3, 3]
    image, _ = sphere_phantom(shape, aff, centre_mm=centre, radii_mm=(8.0, 3.0))
    image[30:36, 4:10, 2:12] = 200.0
    return save_nifti(tmp_path / "asym.nii.gz", image, aff, np.int16)


def loaded(path: Path, seg: Predictor) -> LoadedCase:
    return load_case(collect_inputs([path], seg.cfg.channels)[0], seg.cfg.in_channels, None)


def test_mirror_passes() -> None:
    assert mirror_passes("none", (0, 1, 2)) == [()]
    assert mirror_passes("flip", (0, 2)) == [(), (0,), (2,)]
    assert len(mirror_passes("all", (0, 1, 2))) == 8 and len(set(mirror_passes("all", (0, 1, 2)))) == 8
    assert mirror_passes("all", ()) == [()]
    with pytest.raises(ConfigError):
        mirror_passes("sideways", (0,))


def test_two_folds_tta_all_land_on_source_grid(tmp_path: Path, cv: Path, phantom_files: tuple) -> None:
    image, _, affine = phantom_files
    res = infer(cv, [image], tmp_path / "out", device="cpu", tta="all", save_probabilities=True,
                save_uncertainty=True)
    assert [c.status for c in res.cases] == ["ok"], res.cases
    mask_path = tmp_path / "out" / "case_a.nii.gz"
    source = grid_of(nib.load(str(image)))
    check_on_grid(mask_path, source)
    back = nib.load(str(mask_path))
    assert back.shape == source.shape and np.allclose(back.affine, affine, atol=1e-4)
    side = json.loads((tmp_path / "out" / "case_a.json").read_text())
    ens = side["ensemble"]
    assert ens["folds"] == [0, 1] and ens["tta"] == "all" and len(ens["passes"]) == 8 and ens["n_passes"] == 16
    assert side["model"]["n_models"] == 2
    assert side["memory"]["host_rss_peak_mb"] > 0
    # probabilities: one uint8 frame per label on the source grid, summing to 1 within quantisation
    prob = nib.load(str(tmp_path / "out" / "case_a_probabilities.nii.gz"))
    assert prob.shape == (*source.shape, 3) and np.allclose(prob.affine, affine, atol=1e-4)
    raw = np.asarray(prob.dataobj.get_unscaled()).astype(int)
    assert prob.get_data_dtype() == np.uint8
    assert np.abs(raw.sum(axis=-1) - 255).max() <= 1  # each of 3 frames rounds by at most 1/2
    assert np.allclose(prob.get_fdata().sum(axis=-1), 1.0, atol=1.5 / 255)
    unc = nib.load(str(tmp_path / "out" / "case_a_uncertainty.nii.gz"))
    assert unc.shape == (*source.shape, 2)
    u = unc.get_fdata()
    assert (u >= 0).all() and (u <= 1 + 1e-6).all()
    assert (u[..., 1] <= u[..., 0] + 1.0 / 255).all()  # mutual information <= entropy of the mean
    # resume: a second run with the same models, TTA and outputs skips; another TTA recomputes
    again = infer(cv, [image], tmp_path / "out", device="cpu", tta="all", save_probabilities=True,
                  save_uncertainty=True)
    assert again.cases[0].status == "skipped"
    other = infer(cv, [image], tmp_path / "out", device="cpu", tta="none", folds=[1])
    assert other.cases[0].status == "ok"


def test_folds_pick_and_refuse(cv: Path) -> None:
    assert load_model_set(cv, folds=[1]).folds == [1]
    assert load_model_set(cv).folds == [0, 1]
    with pytest.raises(CheckpointError, match="no such fold"):
        load_model_set(cv, folds=[3])
    with pytest.raises(CheckpointError, match="fold_"):
        load_model_set(cv / "fold_0", folds=[0])


def test_ensemble_refuses_incompatible_models(tmp_path: Path, cv: Path) -> None:
    other = save_fold_folders(tmp_path / "other", 1, tiny_cfg(transforms={"spacing_mm": [2.0, 2.0, 2.0]}))
    with pytest.raises(CheckpointError, match="spacing_mm"):
        load_model_set([cv / "fold_0", other / "fold_0"])


def test_ensemble_of_identical_models_equals_single_model(tmp_path: Path, cv: Path, phantom_files: tuple) -> None:
    single = Predictor(cv / "fold_0", "cpu")
    double = Predictor([cv / "fold_0", cv / "fold_0"], "cpu")
    case = loaded(phantom_files[0], single)
    a, b = single.predict(case), double.predict(case)
    assert b.n_passes == 2
    assert torch.equal(a.scores.as_tensor(), b.scores.as_tensor())
    assert np.array_equal(a.labels, b.labels)
    # all passes agree: the mutual information is exactly zero everywhere
    unc = uncertainty_maps(b.scores.as_tensor(), b.entropy_sum, b.n_passes)
    assert float(unc[1].abs().max()) == 0.0
    assert float(unc[0].max()) > 0.0


def test_flips_are_exactly_inverted_on_an_asymmetric_phantom(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    path = asymmetric_phantom(tmp_path)
    plain = Predictor(pointwise_set(cfg, Pointwise(0.55)), "cpu", tta="none")
    tta = Predictor(pointwise_set(cfg, Pointwise(0.55)), "cpu", tta="all")
    case = loaded(path, plain)
    a, b = plain.predict(case), tta.predict(case)
    assert b.n_passes == 8
    s = a.scores.as_tensor()
    for axes in mirror_passes("all", (0, 1, 2))[1:]:  # the phantom is asymmetric along every flip
        assert not torch.allclose(flip_spatial(s, axes), s, atol=1e-3)
    assert torch.allclose(a.scores.as_tensor(), b.scores.as_tensor(), atol=1e-6)
    assert np.array_equal(a.labels, b.labels) and (a.labels == 1).sum() > 100
    unc = uncertainty_maps(b.scores.as_tensor(), b.entropy_sum, b.n_passes)
    assert float(unc[1].max()) < 1e-5  # every pass agrees: no mutual information


def test_tta_flips_only_allowed_axes(tmp_path: Path) -> None:
    cfg = tiny_cfg(transforms={"mirror_axes": [0]})
    seg = Predictor(pointwise_set(cfg), "cpu", tta="all")
    assert seg.passes == [(), (0,)] and seg.describe().mirror_axes == (0,)
    none = Predictor(pointwise_set(tiny_cfg(transforms={"mirror_axes": []})), "cpu", tta="all")
    assert none.passes == [()]


def test_disagreeing_passes_give_mutual_information(tmp_path: Path, cv: Path, phantom_files: tuple) -> None:
    seg = Predictor(cv, "cpu")
    pred = seg.predict(loaded(phantom_files[0], seg))
    unc = uncertainty_maps(pred.scores.as_tensor(), pred.entropy_sum, pred.n_passes)
    assert float(unc[1].max()) > 1e-3  # two different random networks disagree somewhere
    assert bool((unc[1] <= unc[0] + 1e-6).all())


def test_cli_folds_tta_and_maps(tmp_path: Path, cv: Path, phantom_files: tuple) -> None:
    out = tmp_path / "cli"
    res = runner.invoke(app, ["infer", str(cv), str(phantom_files[0]), "-o", str(out), "--device", "cpu",
                              "--folds", "0,1", "--tta", "flip", "--save-probabilities", "--save-uncertainty"])
    assert res.exit_code == 0, res.output
    side = json.loads((out / "case_a.json").read_text())
    assert side["ensemble"]["n_passes"] == 8 and side["outputs"]["probabilities"]["scale"] == pytest.approx(1 / 255)
    assert (out / "case_a_uncertainty.nii.gz").is_file()
    bad = runner.invoke(app, ["infer", str(cv), str(phantom_files[0]), "-o", str(out), "--folds", "0,x"])
    assert bad.exit_code == 1 and "--folds" in bad.output
    bad = runner.invoke(app, ["infer", str(cv), str(phantom_files[0]), "-o", str(out), "--tta", "sideways"])
    assert bad.exit_code == 1 and "tta" in bad.output
