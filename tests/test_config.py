from pathlib import Path

import pytest

from medpipe.config import PipelineConfig, config_from_dict, dump_config, load_config
from medpipe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["sample-ct.yaml", "sample-mri.yaml"])
def test_shipped_configs_load_and_point_at_sample_data(name: str) -> None:
    cfg = load_config(REPO / "pipelines" / name)
    assert isinstance(cfg, PipelineConfig)
    assert Path(cfg.data.root).is_absolute()
    assert Path(cfg.data.root).parent == REPO / "sample_data"
    assert cfg.num_classes == max(cfg.labels) + 1


def test_config_is_frozen_and_round_trips_through_yaml() -> None:
    cfg = load_config(REPO / "pipelines" / "sample-ct.yaml")
    with pytest.raises(AttributeError):
        cfg.name = "x"  # type: ignore[misc]
    import yaml

    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and again.digest() == cfg.digest()
    assert cfg.transforms.spacing_mm == (1.6, 1.6, 2.5)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("training:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and "training.learning_rate" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("training:\n  epochs: three\n", "training.epochs"),
        ("training:\n  amp: 1\n", "training.amp"),
        ("model:\n  arch: resnet\n", "model.arch"),
        ("transforms:\n  spacing_mm: [1, 1]\n", "transforms.spacing_mm"),
        ("transforms:\n  spacing_mm: [1, 0, 1]\n", "transforms.spacing_mm"),
        ("labels: {1: kidney}\n", "labels"),
        ("inference:\n  overlap: 1.5\n", "inference.overlap"),
    ],
)
def test_wrong_types_and_values_are_errors(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_keep_other_fields() -> None:
    cfg = config_from_dict({"training": {"epochs": 5, "lr": 0.01}})
    new = cfg.with_overrides(training={"epochs": 9})
    assert new.training.epochs == 9 and new.training.lr == 0.01 and cfg.training.epochs == 5
    assert new.digest() != cfg.digest()
