"""nnU-Net v2 import: safe reading, refusals, nnU-Net's tiling arithmetic, geometry of the written masks, and
agreement with nnU-Net's own predictor (only where ``nnunetv2`` is importable: ``medpipe[nnunet-verify]``).

Everything runs on a result folder built here (tests/models/nnunet_fixture.py): a freshly initialised tiny
PlainConvUNet, anisotropic oblique flipped inputs with a zero frame.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medpipe.errors import CheckpointError

pytest.importorskip("dynamic_network_architectures", reason="needs medpipe[nnunet]")

from medpipe.inference.nnunet import gaussian_weights, predict_nnunet, tile_starts
from medpipe.models.importers.nnunet import import_nnunet, load_imported, read_result_folder
from medpipe.models.importers.nnunet_preprocess import new_shape_for, separate_axis
from medpipe.models.importers.nnunet_record import NnunetRecord
from tests.models import nnunet_fixture as fx

HAVE_NNUNET = importlib.util.find_spec("nnunetv2") is not None


class Evil:
    """A pickled object that would run a command when unpickled."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nnunet")
    images = root / "images"
    images.mkdir()
    fx.make_image(images / "caseA_0000.nii.gz", 1)
    fx.make_image(images / "caseB_0000.nii.gz", 2, shape=(26, 20, 30), zooms=(0.9, 2.1, 0.8), flip=False)
    return {"labels": fx.make_result_folder(root / "labels"), "images": images,
            "regions": fx.make_result_folder(root / "regions", regions=True, folds=(0, 1))}


def test_tile_steps_and_gaussian_known_answers() -> None:
    assert tile_starts([110], [64], 0.5) == [[0, 23, 46]]  # nnU-Net's own documented example
    assert tile_starts([64, 30], [64, 20], 0.5) == [[0], [0, 10]]
    g = gaussian_weights((9, 7, 5), torch.float32)
    assert float(g.max()) == pytest.approx(10.0) and float(g[4, 3, 2]) == pytest.approx(10.0)
    assert torch.equal(g, torch.flip(g, (0, 1, 2))) and float(g.min()) > 0


def test_separate_z_rule_and_shape_rule() -> None:
    assert separate_axis([2.5, 0.7, 0.7], [2.5, 0.8, 0.8], None) == 0  # anisotropic source: low-res axis alone
    assert separate_axis([1.0, 1.0, 1.0], [1.0, 3.5, 1.0], None) == 1  # anisotropic target
    assert separate_axis([1.0, 1.2, 1.0], [1.0, 1.0, 1.0], None) is None
    assert separate_axis([0.24, 1.25, 1.25], [1.0, 1.0, 1.0], None) is None  # two low-res axes: one 3D resize
    assert new_shape_for([14, 28, 30], [2.5, 0.75, 0.7], [2.0, 0.8, 0.8]) == (18, 26, 26)


def test_reads_plans_dataset_and_checkpoint(tiny: dict[str, Path]) -> None:
    record, weights = read_result_folder(tiny["labels"])
    assert record.transpose_forward == (2, 0, 1) and record.patch_size == (20, 12, 20)
    assert record.mirror_axes == (0, 1, 2) and record.num_outputs == 3 and record.folds == ("0",)
    assert record.normalization_schemes == ("CTNormalization",) and record.resampling_data == (3, 0, None)
    assert set(weights) == {"0"} and all(isinstance(v, torch.Tensor) for v in weights["0"].values())
    again = NnunetRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record and record.to_json()["kind"] == "nnunet"
    regions, _ = read_result_folder(tiny["regions"])
    assert regions.has_regions and regions.num_outputs == 2 and regions.regions == ((1, 2), (2,))


def test_import_writes_safetensors_and_checks_sha(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = import_nnunet(tiny["regions"], tmp_path / "imp")
    assert sorted(p.name for p in out.iterdir()) == ["fold_0.safetensors", "fold_1.safetensors", "nnunet.json"]
    model = load_imported(out)
    _, original = read_result_folder(tiny["regions"])
    for fold in ("0", "1"):
        assert all(torch.equal(model.weights[fold][k], v) for k, v in original[fold].items())
    blob = bytearray((out / "fold_1.safetensors").read_bytes())
    blob[-1] ^= 1
    (out / "fold_1.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"fold_1\.safetensors.*sha256"):
        load_imported(out)


def test_refuses_pickled_objects(tiny: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    for name in ("plans.json", "dataset.json"):
        (folder / name).write_bytes((tiny["labels"] / name).read_bytes())
    ckpt = torch.load(tiny["labels"] / "fold_0" / "checkpoint_final.pth", weights_only=False)
    ckpt["logging"]["extra"] = Evil()
    (folder / "fold_0").mkdir()
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(CheckpointError, match=r"refused: the checkpoint pickles .*system"):
        read_result_folder(folder)


def test_missing_fold_is_named(tiny: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match=r"fold_3/checkpoint_final\.pth"):
        read_result_folder(tiny["labels"], folds=["0", "3"])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("network_class_name", "os.system", "network class 'os.system' is not supported"),
    ("nonlin", "builtins.eval", "'nonlin' names 'builtins.eval'"),
])
def test_refuses_unknown_code_names(tiny: dict[str, Path], tmp_path: Path, key: str, value: str,
                                    message: str) -> None:
    folder = tmp_path / "named"
    folder.mkdir()
    plans = json.loads((tiny["labels"] / "plans.json").read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    (arch if key == "network_class_name" else arch["arch_kwargs"])[key] = value
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_bytes((tiny["labels"] / "dataset.json").read_bytes())
    (folder / "fold_0").mkdir()
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(
        (tiny["labels"] / "fold_0" / "checkpoint_final.pth").read_bytes())
    with pytest.raises(CheckpointError, match=message):
        read_result_folder(folder)


def test_cli_import_then_infer_lands_on_the_source_grid(tiny: dict[str, Path], tmp_path: Path) -> None:
    import SimpleITK as sitk
    from typer.testing import CliRunner

    from medpipe.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["import-nnunet", str(tiny["labels"]), "-o", str(tmp_path / "imp")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["infer-nnunet", str(tmp_path / "imp"), str(tiny["images"]), "-o", str(tmp_path / "out"),
                              "--no-tta", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for case_id in ("caseA", "caseB"):
        output = tmp_path / "out" / f"{case_id}.nii.gz"
        src = nib.load(tiny["images"] / f"{case_id}_0000.nii.gz")
        mask = sitk.ReadImage(str(output))  # an independent reader
        assert mask.GetSize() == src.shape
        assert np.allclose(mask.GetSpacing(), src.header.get_zooms(), atol=1e-5)
        labels = sitk.GetArrayFromImage(mask)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2} and len(np.unique(labels)) > 1
        assert np.allclose(nib.load(output).affine, src.affine, atol=1e-4)
    frame = np.asarray(nib.load(tmp_path / "out" / "caseA.nii.gz").dataobj)[:2]
    assert not frame.any()  # the zero frame is cropped away by nnU-Net's crop to non-zero: background
    res = runner.invoke(app, ["infer-nnunet", str(tiny["labels"]), str(tiny["images"]), "-o", str(tmp_path / "o2"),
                              "--folds", "3"])
    assert res.exit_code == 1 and "fold_3" in res.output


def _dice_per_label(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for v in sorted((set(np.unique(a)) | set(np.unique(b))) - {0}):
        x, y = a == v, b == v
        out[int(v)] = 2 * float((x & y).sum()) / max(1, int(x.sum() + y.sum()))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_NNUNET, reason='nnunetv2 not installed (pip install "medpipe[nnunet-verify]")')
@pytest.mark.parametrize(("kind", "tta"), [("labels", False), ("labels", True), ("regions", False)])
def test_agrees_with_nnunet_predictor(tiny: dict[str, Path], tmp_path: Path, kind: str, tta: bool) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from medpipe.inference.batch import infer
    from medpipe.models.importers.nnunet_package import import_nnunet_package

    ref_dir = tmp_path / "nnunet"
    ref_dir.mkdir()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(tiny[kind]), use_folds=None)
    predictor.predict_from_files_sequential(str(tiny["images"]), str(ref_dir), save_probabilities=False)
    results = predict_nnunet(tiny[kind], [tiny["images"]], tmp_path / "medpipe", tta=tta)
    # the package path (medpipe import nnunet -> medpipe infer PACKAGE), through medpipe's output path
    import_nnunet_package(tiny[kind], tmp_path / "model.zip")
    infer(tmp_path / "model.zip", [tiny["images"]], tmp_path / "package", device="cpu", allow_non_hu=True,
          tta="all" if tta else "none")
    assert len(results) == 2
    for r in results:
        theirs = nib.load(ref_dir / f"{r.case_id}.nii.gz")
        b = np.asarray(theirs.dataobj)
        for output in (r.output, tmp_path / "package" / f"{r.case_id}.nii.gz"):
            ours = nib.load(output)
            assert np.allclose(ours.affine, theirs.affine, atol=1e-4)
            a = np.asarray(ours.dataobj)
            differing = int((a != b).sum())
            assert differing <= a.size // 1000, f"{output}: {differing} voxels differ"
            dice = _dice_per_label(a, b)
            assert dice and all(d >= 0.99 for d in dice.values()), dice  # foreground labels only
