"""``task: classification`` in the config: parsing, defaults, the digests of existing configs, and refusals that
name the key."""

from __future__ import annotations

from typing import Any

import pytest

from medpipe.config import config_from_dict, dump_config, load_config
from medpipe.errors import ConfigError
from tests.conftest import REPO

#: The keys classification added; at their defaults they are left out of ``to_dict`` (so of the digest): a config
#: written before keeps its hash, and finished inferences and resumable runs are not taken for out of date.
NEW_KEYS = {"": ("task", "classes"), "data": ("class_csv", "class_from_label"), "model": ("width_factor",),
            "training": ("loss", "balanced_sampling")}


def cls(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"task": "classification", "classes": ["no", "yes"],
                           "labels": {0: "background", 1: "kidney", 2: "tumor"},
                           "data": {"class_from_label": {"label": 2, "min_voxels": 5}},
                           "model": {"arch": "resnet18"}, "transforms": {"patch_size_vox": [32, 32, 32]}}
    for key, value in over.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return raw


def test_existing_configs_keep_their_meaning_and_digest() -> None:
    cfg = config_from_dict({})
    assert cfg.task == "segmentation" and not cfg.is_classification and not cfg.balanced
    d = cfg.to_dict()
    for section, keys in NEW_KEYS.items():
        assert not set(keys) & set(d[section] if section else d), section
    with_new = config_from_dict({"task": "segmentation", "training": {"loss": "auto"}, "model": {"width_factor": 1.0}})
    assert with_new.digest() == cfg.digest()


def test_sample_cls_config_parses() -> None:
    cfg = load_config(REPO / "pipelines" / "sample-cls.yaml")
    assert cfg.is_classification and cfg.classes == ("no_tumor", "tumor") and cfg.out_channels == 2
    assert cfg.balanced and cfg.model.arch == "resnet18" and cfg.data.class_from_label.label == 2
    again = config_from_dict(__import__("yaml").safe_load(dump_config(cfg)))
    assert again == cfg and again.digest() == cfg.digest()


def test_class_csv_is_resolved_against_the_config_folder(tmp_path: Any) -> None:
    (tmp_path / "c.yaml").write_text("task: classification\nclasses: [a, b]\nmodel: {arch: resnet50}\n"
                                     "data: {class_csv: labels.csv}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.data.class_csv == str((tmp_path / "labels.csv").resolve())
    assert cfg.training.loss == "auto" and cfg.balanced


@pytest.mark.parametrize(("raw", "key"), [
    ({"model": {"arch": "resnet18"}}, "model.arch"),                          # classifier, task segmentation
    ({"classes": ["a", "b"]}, "classes"),
    ({"training": {"balanced_sampling": True}}, "training.balanced_sampling"),
    ({"training": {"loss": "focal"}}, "training.loss"),
    ({"data": {"class_csv": "x.csv"}}, "data.class_csv"),
    (cls(model={"arch": "unet3d"}), "model.arch"),                            # segmentation net, classification
    (cls(classes=["only"]), "classes"),
    (cls(classes=["a", "a"]), "classes"),
    (cls(classes=["a", "b", "c"]), "classes"),                                # class_from_label gives two
    (cls(data={"class_from_label": {"label": 7}}), "data.class_from_label.label"),
    (cls(data={"class_csv": "x.csv"}), "data.class_csv"),                     # both sources
    (cls(data={"class_from_label": {"label": 0}}), "data.class_csv"),         # neither
    (cls(regions={"R": [2]}), "regions"),
    (cls(model={"arch": "densenet121"}, transforms={"patch_size_vox": [48, 48, 24]}), "transforms.patch_size_vox"),
    (cls(model={"width_factor": 0}), "model.width_factor"),
])
def test_wrong_combinations_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        config_from_dict(raw)
