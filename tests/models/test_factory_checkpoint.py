from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medpipe.config import config_from_dict
from medpipe.errors import CheckpointError
from medpipe.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from medpipe.models.factory import build_model
from medpipe.models.topology import dynunet_topology


def _cfg(arch: str, **model: object):
    return config_from_dict({
        "labels": {0: "background", 1: "kidney", 2: "tumor"},
        "channels": ["t1", "t2"],
        "transforms": {"spacing_mm": [0.8, 0.8, 2.5], "patch_size_vox": [32, 32, 16]},
        "model": {"arch": arch, "channels": [8, 16, 32], "strides": [2, 2], **model},
    })


@pytest.mark.parametrize("arch", ["unet3d", "unet2d", "dynunet"])
def test_factory_shapes(arch: str) -> None:
    model = build_model(_cfg(arch)).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 2, 32, 32, 16))
    assert y.shape == (1, 3, 32, 32, 16)


def test_unet2d_is_slice_wise() -> None:
    model = build_model(_cfg("unet2d")).eval()
    x = torch.randn(1, 2, 32, 32, 4)
    with torch.no_grad():
        full = model(x)
        one = model(x[..., 2:3])
    assert torch.allclose(full[..., 2:3], one, atol=1e-5)


def test_dynunet_deep_supervision_in_training_mode() -> None:
    model = build_model(_cfg("dynunet", deep_supervision=True)).train()
    y = model(torch.randn(2, 2, 32, 32, 16))
    assert y.ndim == 6 and y.shape[0] == 2 and y.shape[2] == 3


def test_dynunet_topology_respects_anisotropy() -> None:
    kernels, strides = dynunet_topology((128, 128, 32), (0.8, 0.8, 2.5), depth=5)
    assert strides[0] == [1, 1, 1]
    assert strides[1] == [2, 2, 1]  # slices are 3x coarser: no pooling along z at first
    assert kernels[0] == [3, 3, 1]
    assert all(s[2] in (1, 2) for s in strides)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = _cfg("unet3d")
    model = build_model(cfg)
    save_checkpoint(tmp_path / "best.pt", model, cfg, epoch=3)
    again, cfg2 = model_from_checkpoint(tmp_path / "best.pt")
    assert cfg2 == cfg and cfg2.labels == {0: "background", 1: "kidney", 2: "tumor"}
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch SENTINEL_PWNED",))


def test_malicious_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "medpipe-checkpoint/1", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "SENTINEL_PWNED").exists()


def test_truncated_and_foreign_checkpoints(tmp_path: Path) -> None:
    cfg = _cfg("unet3d")
    save_checkpoint(tmp_path / "a.pt", build_model(cfg), cfg)
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a medpipe checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_refuses_force_no_weights_only_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg("unet3d")
    save_checkpoint(tmp_path / "a.pt", build_model(cfg), cfg)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        load_checkpoint(tmp_path / "a.pt")


def test_architecture_mismatch_is_an_error(tmp_path: Path) -> None:
    cfg = _cfg("unet3d")
    other = _cfg("unet3d", channels=[4, 8, 16])
    from medpipe.models.checkpoint import CHECKPOINT_FORMAT

    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": build_model(other).state_dict(),
                "config": cfg.to_dict(), "labels": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(tmp_path / "x.pt")
