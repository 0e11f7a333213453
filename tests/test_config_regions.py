"""Region decoding order is explicit (issue 15): list form, region_order, nested mappings; a config whose order
was lost is refused naming the key; a config survives yaml.safe_dump(sort_keys=True) unchanged in meaning."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medpipe.config import config_from_dict, dump_config, load_config
from medpipe.errors import ConfigError
from tests.conftest import REPO

LABELS = {0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"}
ORDER = [("WT", (1, 2, 3), 2), ("TC", (1, 3), 1), ("ET", (3,), 3)]


def _cfg(**extra: object):
    return config_from_dict({"modality": "MR", "channels": ["t1"], "labels": LABELS, **extra})


def test_list_form_mapping_with_region_order_and_nested_mapping_all_decode_alike() -> None:
    as_list = _cfg(regions=[{"name": "WT", "labels": [1, 2, 3]}, {"name": "TC", "labels": [1, 3]},
                            {"name": "ET", "labels": [3]}])
    with_order = _cfg(regions={"ET": [3], "TC": [1, 3], "WT": [1, 2, 3]}, region_order=["WT", "TC", "ET"])
    nested_sorted = _cfg(regions={"ET": [3], "TC": [1, 3], "WT": [1, 2, 3]})  # what sort_keys makes of it
    for cfg in (as_list, with_order, nested_sorted):
        assert cfg.region_order() == ORDER


def test_a_mapping_whose_order_is_not_fixed_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"key 'regions'.*not nested") as err:
        _cfg(regions={"A": [1, 2], "B": [2, 3]})
    assert "region_order" in (err.value.hint or "")
    with pytest.raises(ConfigError, match=r"key 'region_order'"):
        _cfg(regions={"A": [1, 2], "B": [2, 3]}, region_order=["A"])
    with pytest.raises(ConfigError, match=r"key 'regions\[1\]'"):
        _cfg(regions=[{"name": "WT", "labels": [1, 2, 3]}, {"WT": [1]}])


@pytest.mark.parametrize("name", ["brats.yaml", "kits.yaml"])
def test_shipped_config_round_trips_through_sorted_yaml(tmp_path: Path, name: str) -> None:
    cfg = load_config(REPO / "pipelines" / name)
    assert cfg.regions
    for text in (yaml.safe_dump(yaml.safe_load((REPO / "pipelines" / name).read_text()), sort_keys=True),
                 yaml.safe_dump(yaml.safe_load(dump_config(cfg)), sort_keys=True)):
        (tmp_path / name).write_text(text)
        again = load_config(tmp_path / name)
        assert again.region_order() == cfg.region_order()
        assert again.digest() == cfg.digest()
