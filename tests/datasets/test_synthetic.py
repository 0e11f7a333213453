"""Tests for the deterministic sample-data generator (medpipe.datasets.synthetic) and the committed sample_data/."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medpipe.datasets.synthetic import (
    BRATS_MODALITIES,
    CT_TISSUES,
    MRI_TISSUES,
    SampleSummary,
    generate_sample_data,
    make_ct_case,
    make_mri_case,
)
from medpipe.errors import MedpipeError, OutputError

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "sample_data"
CT = {name: code for name, (code, _, _) in CT_TISSUES.items()}
MR = {name: code for name, (code, _) in MRI_TISSUES.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _payload_sha256(path: Path) -> str:
    """Hash of the decompressed NIfTI bytes (independent of the zlib build that compressed them)."""
    return hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.nii.gz"))


def _world_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along world x, y, z for an axis-aligned affine."""
    out = np.zeros(3)
    for axis in range(3):
        column = affine[:3, axis]
        out[int(np.argmax(np.abs(column)))] = np.linalg.norm(column)
    return out


def _load(path: Path) -> nib.Nifti1Image:
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> SampleSummary:
    return generate_sample_data(tmp_path_factory.mktemp("seed0"), seed=0, n_ct=2, n_mri=2, n_cls=0)


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_byte_identical_files(small_set: SampleSummary, tmp_path: Path) -> None:
    again = generate_sample_data(tmp_path / "again", seed=0, n_ct=2, n_mri=2, n_cls=0)
    first = {str(p.relative_to(small_set.out_dir)): _sha256(p) for p in small_set.files}
    second = {str(p.relative_to(again.out_dir)): _sha256(p) for p in again.files}
    assert len(first) == 2 * 2 + 2 * 5
    assert first == second
    assert again.total_bytes == small_set.total_bytes == sum(p.stat().st_size for p in again.files)


def test_different_seed_gives_different_data(small_set: SampleSummary, tmp_path: Path) -> None:
    other = generate_sample_data(tmp_path / "seed1", seed=1, n_ct=1, n_mri=1, n_cls=0)
    for path in other.files:
        twin = small_set.out_dir / path.relative_to(other.out_dir)
        assert _payload_sha256(path) != _payload_sha256(twin), path.name


def test_summary_lists_what_was_written(small_set: SampleSummary) -> None:
    assert small_set.ct_case_ids == ("case_00000", "case_00001")
    assert small_set.mri_case_ids == ("BraTS-GLI-00000-000", "BraTS-GLI-00001-000")
    assert small_set.kits_dir == small_set.out_dir / "kits"
    assert small_set.brats_dir == small_set.out_dir / "brats"
    assert sorted(str(p.relative_to(small_set.out_dir)) for p in small_set.files) == _tree(small_set.out_dir)


def test_headers_are_clean(small_set: SampleSummary) -> None:
    for path in small_set.files:
        raw = gzip.decompress(path.read_bytes())
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1), path
        assert header.get_slope_inter() == (1.0, 0.0), path
        assert header["descrip"].item() == b"", path
        assert np.allclose(header.get_qform(), header.get_sform(), atol=1e-4), path
        assert path.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


# ------------------------------------------------------------------------------------------ CT


def test_ct_files_have_kits_layout_grid_and_dtypes(small_set: SampleSummary) -> None:
    orientations = set()
    for case_id in small_set.ct_case_ids:
        image = _load(small_set.kits_dir / case_id / "imaging.nii.gz")
        label = _load(small_set.kits_dir / case_id / "segmentation.nii.gz")
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert image.shape == label.shape
        assert np.array_equal(image.affine, label.affine)
        assert np.allclose(_world_spacing(image.affine), (0.8, 0.8, 2.5), atol=1e-5)
        assert sorted(image.shape)[1:] == [112, 112] and 36 <= min(image.shape) <= 40
        assert np.linalg.norm(image.affine[:3, 3]) > 1.0  # non-zero origin
        codes = nib.aff2axcodes(image.affine)
        assert codes != ("R", "A", "S")
        orientations.add(codes)
        labels = np.asanyarray(label.dataobj)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}
    # case 0: KiTS slice-axis-first, case 1: LPS-like
    assert orientations == {("I", "P", "L"), ("L", "P", "S")}


def test_ct_files_match_the_phantom_and_hu_are_plausible(small_set: SampleSummary) -> None:
    for index, case_id in enumerate(small_set.ct_case_ids):
        case = make_ct_case(0, index)
        hu = np.asanyarray(_load(small_set.kits_dir / case_id / "imaging.nii.gz").dataobj)
        labels = np.asanyarray(_load(small_set.kits_dir / case_id / "segmentation.nii.gz").dataobj)
        assert hu.dtype == np.int16
        assert np.array_equal(hu, case.hu) and np.array_equal(labels, case.labels)
        tissue = case.tissue
        assert np.all(hu[tissue == CT["air"]] == -1000)
        assert hu.min() >= -1024
        bone = (tissue == CT["bone_cortex"]) | (tissue == CT["bone_marrow"])
        assert hu[bone].mean() > 400
        assert 130 <= hu[labels == 1].mean() <= 220
        assert 40 <= hu[tissue == CT["liver"]].mean() <= 80
        assert -130 <= np.median(hu[tissue == CT["subcutaneous_fat"]]) <= -80  # the mean has skin partial volume
        liver_core = ndimage.binary_erosion(tissue == CT["liver"], iterations=2)
        assert 8 <= hu[liver_core].std() <= 16  # noise inside the body
        assert not np.any(bone & (labels > 0))
        # kidney is not separable by a threshold alone: the aorta and bone are at least as bright
        assert np.percentile(hu[tissue == CT["aorta"]], 50) > np.percentile(hu[labels == 1], 25)


def test_ct_tumour_in_about_half_of_the_cases() -> None:
    with_tumour = [bool((make_ct_case(0, i).labels == 2).any()) for i in range(6)]
    assert sum(with_tumour) == 3
    case = make_ct_case(0, 0)
    tumour = case.labels == 2
    assert tumour.any() and (case.labels == 1).any()
    assert 70 <= case.hu[tumour].mean() <= 120
    assert case.hu[tumour].std() > 15  # heterogeneous + noise
    assert (ndimage.binary_dilation(tumour) & (case.labels == 1)).sum() > 20  # attached to a kidney


@pytest.mark.parametrize("index", [0, 1])
def test_ct_anatomy_sits_where_it_should_in_world_coordinates(index: int) -> None:
    """Liver on the patient's right (+x in RAS), spine posterior, one kidney either side of the spine."""
    case = make_ct_case(0, index)
    tissue, affine = case.tissue, case.affine
    bone = (tissue == CT["bone_cortex"]) | (tissue == CT["bone_marrow"])
    spine = _centroid_mm(bone, affine)
    body = _centroid_mm(tissue != CT["air"], affine)
    liver = _centroid_mm(tissue == CT["liver"], affine)
    assert liver[0] > body[0] + 5.0
    assert spine[1] < body[1] - 5.0
    kidney = case.labels == 1
    ijk = np.argwhere(kidney)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    right, left = world[world[:, 0] > spine[0]], world[world[:, 0] < spine[0]]
    assert len(right) > 1000 and len(left) > 1000
    assert right[:, 0].min() > spine[0] + 6.0 and left[:, 0].max() < spine[0] - 6.0


# ------------------------------------------------------------------------------------------ MRI


def test_mri_files_follow_brats_2023_naming_and_share_one_grid(small_set: SampleSummary) -> None:
    for case_id in small_set.mri_case_ids:
        assert re.fullmatch(r"BraTS-GLI-\d{5}-\d{3}", case_id)
        folder = small_set.brats_dir / case_id
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(f"{case_id}-{s}.nii.gz" for s in (*BRATS_MODALITIES, "seg"))
        seg = _load(folder / f"{case_id}-seg.nii.gz")
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asanyarray(seg.dataobj)).tolist()) == {0, 1, 2, 3}
        for modality in BRATS_MODALITIES:
            img = _load(folder / f"{case_id}-{modality}.nii.gz")
            assert img.get_data_dtype() == np.int16
            assert img.shape == seg.shape == (64, 64, 48)
            assert np.array_equal(img.affine, seg.affine)
            assert np.allclose(_world_spacing(img.affine), 1.0)


def test_mri_modality_contrasts(small_set: SampleSummary) -> None:
    for index, case_id in enumerate(small_set.mri_case_ids):
        folder = small_set.brats_dir / case_id
        img = {m: np.asanyarray(_load(folder / f"{case_id}-{m}.nii.gz").dataobj) for m in BRATS_MODALITIES}
        seg = np.asanyarray(_load(folder / f"{case_id}-seg.nii.gz").dataobj)
        brain = img["t1n"] > 0
        healthy = brain & (seg == 0)

        def mean(modality: str, region: np.ndarray, img: dict[str, np.ndarray] = img) -> float:
            return float(img[modality][region].mean())

        assert mean("t1c", seg == 3) > mean("t1c", seg == 2) + 150  # enhancing rim bright on t1c only
        assert mean("t1c", seg == 3) > 1.3 * mean("t1n", seg == 3)
        assert mean("t2f", seg == 2) > mean("t2f", healthy) + 150  # oedema bright on FLAIR
        assert mean("t2w", seg == 2) > mean("t2w", healthy) + 150
        assert mean("t1n", seg == 1) < mean("t1n", healthy) - 150  # necrosis dark on T1
        assert mean("t1c", seg == 1) < mean("t1c", seg == 3) - 300
        case = make_mri_case(0, index)
        assert np.array_equal(case.labels, seg)
        csf, wm = case.tissue == MR["csf"], case.tissue == MR["white_matter"]
        assert mean("t2w", csf) > 2 * mean("t2w", wm)  # CSF bright on T2 ...
        assert mean("t2f", csf) < 0.6 * mean("t2f", wm)  # ... and dark on FLAIR
        for modality in BRATS_MODALITIES:
            assert np.all(img[modality][case.tissue == MR["background"]] == 0)  # skull-stripped
            assert 0 <= img[modality].min() and img[modality].max() < 1500


def test_mri_orientations_include_lps_and_ras() -> None:
    codes = {nib.aff2axcodes(make_mri_case(0, i).affine) for i in range(3)}
    assert codes == {("L", "P", "S"), ("R", "A", "S")}


# ------------------------------------------------------------------------------------------ errors


def test_output_path_that_is_a_file_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OutputError) as info:
        generate_sample_data(blocker, n_ct=1, n_mri=0)
    assert str(blocker) in str(info.value)
    with pytest.raises(OutputError) as info:
        generate_sample_data(blocker / "below", n_ct=1, n_mri=0)
    assert "below" in str(info.value)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"n_ct": -1}, {"n_mri": 100000}, {"seed": 1.5}])
def test_bad_arguments_raise_medpipe_error(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(MedpipeError):
        generate_sample_data(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ committed data


def test_committed_sample_data_is_what_seed_0_generates(tmp_path: Path) -> None:
    """Guards determinism across runs. If this fails after a deliberate generator change (or a numpy/scipy
    upgrade that changes the random streams), regenerate: ``medpipe sample-data sample_data --seed 0``."""
    summary = generate_sample_data(tmp_path, seed=0)
    assert len(summary.ct_case_ids) == 12 and len(summary.mri_case_ids) == 10 and len(summary.cls_case_ids) == 200
    assert _tree(COMMITTED) == _tree(tmp_path)
    for rel in _tree(tmp_path):
        assert _payload_sha256(COMMITTED / rel) == _payload_sha256(tmp_path / rel), rel
    total = sum(p.stat().st_size for p in COMMITTED.rglob("*") if p.is_file())
    assert total <= 10_000_000  # kits + brats about 7 MB, cls under 3 MB


def test_committed_readme_table_matches_the_data() -> None:
    text = (COMMITTED / "README.md").read_text(encoding="utf-8")
    assert "medpipe sample-data" in text
    rows = re.findall(r"^\| (case_\d{5}) \| (\d+) × (\d+) × (\d+) \| ([A-Z]{3}) \| (yes|no) \|", text, re.M)
    assert len(rows) == 12
    for case_id, i, j, k, codes, tumour in rows:
        folder = COMMITTED / "kits" / case_id
        image = _load(folder / "imaging.nii.gz")
        labels = np.asanyarray(_load(folder / "segmentation.nii.gz").dataobj)
        assert image.shape == (int(i), int(j), int(k)), case_id
        assert "".join(nib.aff2axcodes(image.affine)) == codes, case_id
        assert bool((labels == 2).any()) == (tumour == "yes"), case_id
