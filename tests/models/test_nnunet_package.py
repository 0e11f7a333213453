"""nnU-Net packages: ``medpipe import nnunet`` writes a schema-checked package whose manifest reproduces the nnU-Net
record exactly, ``medpipe infer PACKAGE`` gives the masks of the import path (``inference/nnunet.py``, itself
verified against nnU-Net's predictor) through medpipe's output path, and ``medpipe info`` shows the card.

The result folders are built here (tests/models/nnunet_fixture.py): plans.json, dataset.json and
fold_k/checkpoint_final.pth in nnU-Net's checkpoint layout with a freshly initialised PlainConvUNet.
"""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medpipe.errors import CheckpointError
from medpipe.models.manifest import Manifest

pytest.importorskip("dynamic_network_architectures", reason="needs medpipe[nnunet]")

from medpipe.cli import app
from medpipe.inference.nnunet import predict_nnunet
from medpipe.models.importers.nnunet import read_result_folder
from medpipe.models.importers.nnunet_package import fold_name, fold_number, record_from_manifest
from medpipe.models.package import read_package
from tests.models import nnunet_fixture as fx

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnunet-pkg")
    images = root / "images"
    images.mkdir()
    fx.make_image(images / "caseA_0000.nii.gz", 1)
    fx.make_image(images / "caseB_0000.nii.gz", 2, shape=(26, 20, 30), zooms=(0.9, 2.1, 0.8), flip=False)
    labels = fx.make_result_folder(root / "labels")
    (labels / "postprocessing.json").write_text(json.dumps({
        "postprocessing_fns": ["remove_all_but_largest_component_from_segmentation"],
        "postprocessing_kwargs": [{"labels_or_regions": [2]}]}))
    return {"labels": labels, "images": images,
            "regions": fx.make_result_folder(root / "regions", regions=True, folds=(0, 1))}


def _import(folder: Path, dest: Path, *extra: str) -> Path:
    res = runner.invoke(app, ["import", "nnunet", str(folder), "-o", str(dest), *extra])
    assert res.exit_code == 0, res.output
    return dest


@pytest.mark.parametrize("kind", ["labels", "regions"])
def test_package_manifest_reproduces_the_record(folders: dict[str, Path], tmp_path: Path, kind: str) -> None:
    pkg = _import(folders[kind], tmp_path / "model.zip", "--licence", "CC-BY-4.0")
    contents = read_package(pkg)  # schema, file list, every sha256
    m = contents.manifest
    assert sorted(contents.files) == sorted(f"weights/fold_{f.fold}.safetensors" for f in m.folds)
    assert m.preprocessing.kind == "nnunet" and m.preprocessing.orientation is None
    assert m.architecture.name == "PlainConvUNet" and m.licence == "CC-BY-4.0"
    assert m.preprocessing.params["transpose_forward"] == [2, 0, 1]
    assert m.preprocessing.params["resampling"]["data"] == {"order": 3, "order_z": 0, "force_separate_z": None}
    assert m.preprocessing.normalisation[0].kind == "CTNormalization"
    assert m.preprocessing.normalisation[0].params["foreground_intensity_properties"]["percentile_99_5"] == 240.0
    assert m.sliding_window.patch_size_vox == (20, 12, 20) and m.sliding_window.overlap == 0.5
    assert m.output.tta_axes == (0, 1, 2)
    record, _ = read_result_folder(folders[kind])
    assert record_from_manifest(m) == record  # nothing of the nnU-Net record is lost
    if kind == "regions":
        assert m.output.activation == "sigmoid" and [r.labels for r in m.regions] == [(1, 2), (2,)]
        assert [f.fold for f in m.folds] == [0, 1]
    else:
        assert [(lab.value, lab.name) for lab in m.labels] == [(0, "background"), (1, "kidney"), (2, "tumor")]
        assert m.postprocessing == {"params": {"nnunet": [
            {"fn": "remove_all_but_largest_component_from_segmentation", "kwargs": {"labels_or_regions": [2]}}]}}
    card = runner.invoke(app, ["info", str(pkg)])
    assert card.exit_code == 0, card.output
    assert "nnunet" in card.output and "PlainConvUNet" in card.output and "CTNormalization" in card.output


@pytest.mark.parametrize(("kind", "tta"), [("labels", True), ("regions", False)])
def test_infer_on_the_package_gives_the_import_paths_masks(folders: dict[str, Path], tmp_path: Path, kind: str,
                                                           tta: bool) -> None:
    pkg = _import(folders[kind], tmp_path / "model.zip")
    res = runner.invoke(app, ["infer", str(pkg), str(folders["images"]), "-o", str(tmp_path / "pkg"),
                              "--device", "cpu", "--allow-non-hu", "--save-probabilities",
                              "--tta", "all" if tta else "none"])
    assert res.exit_code == 0, res.output
    direct = predict_nnunet(folders[kind], [folders["images"]], tmp_path / "direct", tta=tta,
                            postprocess=kind == "labels")
    assert len(direct) == 2
    for r in direct:
        ours = nib.load(tmp_path / "pkg" / f"{r.case_id}.nii.gz")
        theirs = nib.load(r.output)
        a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
        assert np.allclose(ours.affine, theirs.affine, atol=1e-5) and a.shape == b.shape
        assert np.array_equal(a, b), f"{r.case_id}: {int((a != b).sum())} voxels differ"
        assert len(np.unique(a)) > 1
        side = json.loads((tmp_path / "pkg" / f"{r.case_id}.json").read_text())
        assert side["model"]["arch"] == "PlainConvUNet"
        assert side["model"]["sha256"] == read_package(pkg).manifest_sha256
        ensemble = side["ensemble"]
        assert ensemble["folds"] == ([0] if kind == "labels" else [0, 1])
        assert ensemble["n_passes"] == (8 if tta else 2)
        probs = nib.load(tmp_path / "pkg" / f"{r.case_id}_probabilities.nii.gz")
        p = np.asarray(probs.dataobj)  # uint8, value / 255, one frame per label, on the mask's grid
        assert p.shape == (*a.shape, 3) and np.allclose(probs.affine, ours.affine, atol=1e-5)
        agree = float((p.argmax(-1) == a).mean())
        assert agree > 0.99, agree  # ties from quantisation (and postprocessing) aside, the mask's argmax


def test_folds_are_chosen_and_fold_all_maps_to_minus_one(folders: dict[str, Path], tmp_path: Path) -> None:
    assert (fold_number("all"), fold_name(-1), fold_number("3"), fold_name(3)) == (-1, "all", 3, "3")
    with pytest.raises(CheckpointError, match="neither a number"):
        fold_number("x")
    pkg = _import(folders["regions"], tmp_path / "one.zip", "--folds", "1")
    assert [f.fold for f in read_package(pkg).manifest.folds] == [1]
    res = runner.invoke(app, ["infer", str(pkg), str(folders["images"]), "-o", str(tmp_path / "o"), "--folds", "0",
                              "--allow-non-hu"])
    assert res.exit_code == 1 and "the package has folds 1" in res.output
    res = runner.invoke(app, ["import", "nnunet", str(folders["regions"]), "-o", str(tmp_path / "x.zip"),
                              "--folds", "0,3"])
    assert res.exit_code == 1 and "fold_3" in res.output and not (tmp_path / "x.zip").exists()


def test_schema_refuses_inconsistent_nnunet_manifests(folders: dict[str, Path], tmp_path: Path) -> None:
    pkg = _import(folders["labels"], tmp_path / "model.zip")
    with zipfile.ZipFile(pkg) as zf:
        raw = json.loads(zf.read("medpipe.json"))
    Manifest.from_json(copy.deepcopy(raw))
    for path, value, key in [
        (("architecture", "name"), "UNet", "architecture.name"),  # a MONAI class with nnU-Net preprocessing
        (("preprocessing", "orientation"), "RAS", "preprocessing.orientation"),
        (("preprocessing", "params", "tile_step_size"), 0, "preprocessing.params.tile_step_size"),
        (("preprocessing", "params", "labels"), {}, "preprocessing.params.labels"),
        (("postprocessing",), {"params": {"nnunet": [{"fn": "os.system", "kwargs": {}}]}},
         "postprocessing.params.nnunet.0.fn"),
    ]:
        bad = copy.deepcopy(raw)
        target = bad
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
        with pytest.raises(CheckpointError, match=f"violates the schema at '{key}'"):
            Manifest.from_json(bad)
    bad = copy.deepcopy(raw)
    del bad["preprocessing"]["params"]["transpose_forward"]
    with pytest.raises(CheckpointError, match=r"violates the schema at 'preprocessing\.params'"):
        Manifest.from_json(bad)


def test_batch_adapter_runs_nnunet_packages(folders: dict[str, Path], tmp_path: Path) -> None:
    """``medpipe batch`` opens its predictor through the adapter: an nnU-Net package gives the same mask there."""
    from medpipe.batch.adapter import Job, identity, open_predictor, read_case, run_network, write_outputs
    from medpipe.batch.records import BatchCase, Claim

    pkg = _import(folders["labels"], tmp_path / "model.zip")
    predictor = open_predictor(pkg, {"device": "cpu", "overlap": None, "sw_batch_size": None, "allow_non_hu": True})
    assert identity(predictor).model_sha256 == read_package(pkg).manifest_sha256
    image = folders["images"] / "caseB_0000.nii.gz"
    (tmp_path / "out").mkdir()
    job = Job(Claim("caseB", "t", "w", "h", 0, "", 1, 0.0), BatchCase("caseB", (str(image),)), tmp_path / "out")
    options = {"allow_non_hu": True}  # the worker's three stages, one after the other
    job = write_outputs(predictor, run_network(predictor, read_case(predictor, job, options)), options)
    assert not job.error, job.error
    direct = predict_nnunet(folders["labels"], [image], tmp_path / "direct", postprocess=True)
    assert np.array_equal(np.asarray(nib.load(tmp_path / "out" / "caseB.nii.gz").dataobj),
                          np.asarray(nib.load(direct[0].output).dataobj))


def test_regions_that_do_not_decode_are_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "swapped"
    folder.mkdir()
    (folder / "plans.json").write_bytes((folders["regions"] / "plans.json").read_bytes())
    dataset = json.loads((folders["regions"] / "dataset.json").read_text())
    dataset["regions_class_order"] = [2, 1]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "fold_0").mkdir()
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(
        (folders["regions"] / "fold_0" / "checkpoint_final.pth").read_bytes())
    res = runner.invoke(app, ["import", "nnunet", str(folder), "-o", str(tmp_path / "x.zip")])
    assert res.exit_code == 1 and "regions_class_order [2, 1]" in res.output and "dataset.json" in res.output
    assert not (tmp_path / "x.zip").exists()
