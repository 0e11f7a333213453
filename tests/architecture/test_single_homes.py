"""One place each (docs/architecture.md, "One place each"), enforced on the source: DICOM UIDs are pydicom.uid
names, every NIfTI header is made by io/nifti.nifti_image, short hashes come from runtime.short_digest, the
exception tuple around DICOM header parsing guards only pydicom's parse, and no records are built by splatting a
dict. Each failure names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2] / "medpipe"
SOURCES = {p.relative_to(ROOT.parent).as_posix(): ast.parse(p.read_text(), str(p)) for p in sorted(ROOT.rglob("*.py"))}


def test_no_dicom_uid_string_literals() -> None:
    bad = sorted(f"{path}:{node.lineno} {node.value!r}" for path, tree in SOURCES.items() for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 and node.value.startswith("1.2.840.10008"))
    assert not bad, "use the pydicom.uid names:\n" + "\n".join(bad)


def _calls(attr: str) -> list[str]:
    return sorted(f"{path}:{node.lineno}" for path, tree in SOURCES.items() for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
                  and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == attr)


def test_every_nifti_header_comes_from_the_one_policy() -> None:
    assert [c.split(":")[0] for c in _calls("Nifti1Image")] == ["medpipe/io/nifti.py"], _calls("Nifti1Image")


#: Short hashes made elsewhere than runtime.short_digest, each with its reason.
SHORT_HASH_EXCEPTIONS = {
    # a DICOM folder's batch case id (``dicom-<10 hex of sha1(path)>``): a name in existing ledgers; changing it
    # would make a resumed batch redo those cases
    "medpipe/batch/manifest.py",
}


def test_short_hashes_come_from_runtime() -> None:
    """A sliced hex digest (``...hexdigest()[:n]``) is a short hash: it belongs in runtime.short_digest."""
    bad = sorted(f"{path}:{node.lineno}" for path, tree in SOURCES.items() for node in ast.walk(tree)
                 if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)
                 and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
                 and node.value.func.attr == "hexdigest"
                 and path not in ("medpipe/runtime.py", *SHORT_HASH_EXCEPTIONS))
    assert not bad, "short hashes outside runtime.short_digest:\n" + "\n".join(bad)


def test_records_on_disk_are_not_built_by_splatting_a_dict() -> None:
    """The records of docs/architecture.md's table read each field in from_json: no ``cls(**d)``."""
    modules = ("medpipe/inference/sidecar.py", "medpipe/inference/inputs.py", "medpipe/io/dicom/provenance.py",
               "medpipe/datasets/fingerprint.py", "medpipe/evaluation/result.py", "medpipe/evaluation/detection.py",
               "medpipe/io/intensity.py", "medpipe/io/dicom/options.py", "medpipe/models/manifest.py",
               "medpipe/batch/records.py", "medpipe/models/importers/nnunet_record.py")
    bad = sorted(f"{path}:{node.lineno}" for path in modules for node in ast.walk(SOURCES[path])
                 if isinstance(node, ast.Call) and any(k.arg is None for k in node.keywords))
    assert not bad, "\n".join(bad)
    ignores = sorted(f"{path}:{n}" for path in modules
                     for n, line in enumerate((ROOT.parent / path).read_text().splitlines(), 1)
                     if "type: ignore" in line)
    assert not ignores, "\n".join(ignores)


def test_header_errors_guard_only_the_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed header is a skipped file; an error in medpipe's own parsing after pydicom's is raised."""
    from medpipe.io.dicom import headers
    from tests.dicom_factory import write_series

    series = write_series(tmp_path / "s")
    good = series.files[0]
    frames = headers.read_header(good, good.name)
    assert isinstance(frames, list) and frames
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(good.read_bytes()[:400])  # the header cut short: pydicom's error, caught
    assert isinstance(headers.read_header(broken, broken.name), headers.Skipped)

    def buggy(*_args: object) -> None:
        raise KeyError("a bug in medpipe's frame parsing")

    monkeypatch.setattr(headers, "_frames", buggy)
    with pytest.raises(KeyError, match="a bug in medpipe"):
        headers.read_header(good, good.name)


def test_every_nifti_writer_writes_the_policy_header(tmp_path: Path) -> None:
    """Masks, probability maps and explanation maps: qform = sform (code 1), units mm, a medpipe descrip."""
    import nibabel as nib

    from medpipe.explain.run import write_map
    from medpipe.inference.export import write_mask
    from medpipe.inference.probabilities import SCALE, write_maps
    from medpipe.io.geometry import Grid
    from tests.conftest import make_affine

    grid = Grid((4, 5, 3), make_affine((1, 0, 2), (-1, 1, 1), (0.7, 0.9, 3.0), (10, 0, 5)))
    written = {
        "mask": write_mask(tmp_path / "m.nii.gz", np.ones(grid.shape, np.uint8), grid),
        "probabilities": write_maps(tmp_path / "p.nii.gz", np.full((*grid.shape, 2), 255, np.uint8), grid),
        "explanation": write_map(tmp_path / "e.nii.gz", np.full(grid.shape, 0.5, np.float32), grid),
    }
    for kind, path in written.items():
        img = nib.load(str(path))
        header = img.header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 1), kind
        assert np.allclose(img.get_qform(), grid.affine, atol=1e-5) and np.allclose(img.get_sform(), grid.affine)
        assert header.get_xyzt_units()[0] == "mm", kind
        assert header["descrip"].tobytes().startswith(b"medpipe " + kind.encode()[:4]), (kind, header["descrip"])
    probs = nib.load(str(written["probabilities"]))  # (nibabel moves the header's scaling onto the array proxy)
    assert (probs.get_data_dtype(), probs.dataobj.slope, probs.dataobj.inter) == (np.uint8, pytest.approx(SCALE), 0.0)
    assert np.allclose(probs.get_fdata(), 1.0)
    explanation = nib.load(str(written["explanation"]))
    assert (explanation.get_data_dtype(), explanation.dataobj.slope, explanation.dataobj.inter) == (np.float32, 1, 0)


#: Label maps and region types defined outside labels.py, each with its reason.
LABEL_HOME_EXCEPTIONS = {
    "medpipe/datasets/synthetic/ct.py", "medpipe/datasets/synthetic/mri.py", "medpipe/datasets/synthetic/cls.py",
    # ^ what the phantom generators paint (a subset of the public conventions), not conventions of their own
    "medpipe/models/manifest.py",  # the package manifest's region record (name + label values, its JSON schema)
}


def test_label_maps_and_regions_live_in_labels() -> None:
    """A module-level ``*_LABELS = {int: name}`` map or a ``Region`` class is label semantics: labels.py."""
    found = []
    for path, tree in SOURCES.items():
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Region":
                found.append(f"{path}:{node.lineno} class Region")
            targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
            value = getattr(node, "value", None)
            if isinstance(value, ast.Dict) and any(isinstance(t, ast.Name) and t.id.endswith("_LABELS")
                                                   for t in targets):
                if value.keys and all(isinstance(k, ast.Constant) and isinstance(k.value, int) for k in value.keys):
                    found.append(f"{path}:{node.lineno} label map")
    bad = [f for f in found if f.split(":")[0] not in ("medpipe/labels.py", *LABEL_HOME_EXCEPTIONS)]
    assert not bad, "label semantics outside medpipe/labels.py:\n" + "\n".join(bad)
    assert any(f.startswith("medpipe/labels.py") and "class Region" in f for f in found)
