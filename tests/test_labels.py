"""The label table: the rich ``labels`` form of the config (names, SNOMED CT codes, colours), documented defaults
for the plain form, errors that name the key, and codes that survive YAML and checkpoints."""

from __future__ import annotations

import pytest
import yaml

from medpipe.config import config_from_dict, dump_config
from medpipe.errors import ConfigError
from medpipe.labels import CodeRef, default_codes, label_table, parse_code

RICH = {
    0: "background",
    1: "kidney",
    2: {"name": "tumor", "type": "SCT:108369006:Neoplasm", "color": [255, 0, 0]},
    3: {"name": "thing", "category": "MorphologicallyAbnormalStructure", "type": "Cyst"},
}


def test_plain_labels_get_documented_default_codes() -> None:
    table = label_table({0: "background", 1: "Kidney", 2: "liver tumour", 4: "blob"})
    assert [t.value for t in table] == [1, 2, 4]
    kidney, tumour, blob = table
    assert kidney.category == CodeRef("91723000", "SCT", "Anatomical Structure")
    assert kidney.type == CodeRef("64033007", "SCT", "Kidney")
    assert tumour.type.meaning == "Tissue"  # not a known name: the generic code, never a guess
    assert blob.category == blob.type == CodeRef("85756007", "SCT", "Tissue")
    assert len({t.color for t in table}) == 3
    assert default_codes("Spinal cord")[1].value == "2748008"


def test_rich_labels_form_keeps_names_and_adds_codes() -> None:
    cfg = config_from_dict({"labels": RICH})
    assert cfg.labels == {0: "background", 1: "kidney", 2: "tumor", 3: "thing"}
    table = {t.value: t for t in label_table(cfg.labels, cfg.label_info)}
    assert table[2].type == CodeRef("108369006", "SCT", "Neoplasm") and table[2].color == (255, 0, 0)
    assert table[2].category.value == "49755003"  # default for the name "tumor"
    assert table[3].category.value == "49755003" and table[3].type.meaning == "Cyst"
    assert table[1].type.meaning == "Kidney"


def test_codes_survive_yaml_and_the_plain_form_keeps_its_digest() -> None:
    cfg = config_from_dict({"labels": RICH})
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and again.digest() == cfg.digest()
    plain = config_from_dict({"labels": {0: "background", 1: "kidney"}})
    assert "label_info" not in plain.to_dict()


def test_checkpoint_carries_the_codes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from medpipe.models.checkpoint import config_of, load_checkpoint, save_checkpoint
    from medpipe.models.factory import build_model

    cfg = config_from_dict({"labels": RICH, "model": {"channels": [4, 8], "strides": [2], "num_res_units": 0}})
    save_checkpoint(tmp_path / "m.pt", build_model(cfg), cfg)
    assert config_of(load_checkpoint(tmp_path / "m.pt"), tmp_path / "m.pt") == cfg


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "type": "Nope"}, "'Nope' is not a code"),
    ({"name": "x", "type": "SCT:1"}, "is not a code"),
    ({"name": "x", "color": [0, 0, 300]}, "color must be"),
    ({"type": "Kidney"}, "needs a 'name'"),
    ({"name": "x", "colour": [1, 2, 3]}, "unknown key 'labels.1.colour'"),
])
def test_bad_label_entries_name_the_key(entry: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict({"labels": {0: "background", 1: entry}}, source="cfg.yaml")
    assert "cfg.yaml" in str(err.value)


def test_parse_code_forms() -> None:
    assert parse_code("SCT:64033007:Kidney") == parse_code("Kidney")
    assert parse_code("99LOCAL: 42 :My thing") == CodeRef("42", "99LOCAL", "My thing")
