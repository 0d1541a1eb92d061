from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import load_aggregator_config
from edge_client.client import ClientConfig
from edge_client.shared.settings import ConfigError, from_table, read_toml
from fedge.roles import ModelSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_example_gateway_config_loads():
    table = read_toml(EXAMPLES / "gateway" / "aggregator.toml")
    table.pop("model"), table.pop("evaluation")  # read by fedge.roles, not the service
    cfg = load_aggregator_config(table)
    assert cfg.federation == "plant-7" and cfg.rounds == 0
    assert cfg.sync.over_selection == 0.3 and cfg.async_.buffer_size == 3
    assert cfg.train.momentum == 0.5 and cfg.db_path == Path("/var/lib/fedge/aggregator.sqlite3")
    assert cfg.uplink is not None and (cfg.uplink.sparsify, cfg.uplink.quantize) == ("topk", "q4")
    assert cfg.downlink.delta and cfg.downlink.codec.quantize == "q8"
    assert cfg.checkin_interval_s == 60.0


def test_the_example_device_config_loads():
    table = read_toml(EXAMPLES / "device_app" / "device.toml")
    model, _data = table.pop("model"), table.pop("data")
    cfg = from_table(ClientConfig, table, "device.toml")
    assert cfg.device_id == "pi-kitchen" and cfg.exit_when_done is False
    assert cfg.eligibility.min_battery_pct == 20.0 and cfg.eligibility.hold_s == 60.0
    assert from_table(ModelSpec, model, "[model]").sizes == [64, 1333, 10]


@pytest.mark.parametrize("table, message", [
    ({"rouns": 3}, "unknown key 'rouns'"),
    ({"rounds": "3"}, "rounds must be int"),
    ({"rounds": True}, "must be int"),
    ({"mode": "semi"}, "mode must be"),
    ({"sync": {"target": 3}}, r"unknown key 'target' in config \[sync\]"),
    ({"async_": {}}, "unknown key 'async_'"),
    ({"sync": 3}, "must be a table"),
    ({"sync": {"target_updates": 0}}, "target_updates must be >= 1"),
    ({"async": {"buffer_size": 0}}, "buffer_size >= 1"),
    ({"train": {"lr": 0}}, "lr > 0"),
    ({"train": {"epochs": 0}}, "epochs and batch_size must be >= 1"),
    ({"chunk_size": 100}, "chunk_size must be between"),
    ({"uplink": {"sparsify": "top"}}, r"\[uplink\]"),
    ({"downlink": {"codec": {"quantize": "q3"}}}, r"\[downlink\] \[codec\]"),
    ({"checkin_jitter": 1.5}, "checkin_jitter"),
    ({"db_path": 5}, "path string"),
])
def test_bad_aggregator_configs_say_what_is_wrong(table, message):
    with pytest.raises(ConfigError, match=message):
        load_aggregator_config(table)


def test_ints_are_accepted_for_floats():
    assert load_aggregator_config({"train": {"lr": 1}}).train.lr == 1.0


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        read_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_toml(bad)


def test_a_partial_nested_table_keeps_the_other_defaults():
    cfg = load_aggregator_config({"downlink": {"codec": {"block_size": 128}}})
    assert cfg.downlink.codec.block_size == 128
    assert cfg.downlink.codec.quantize == "q8"  # the default delta codec, not CodecConfig()'s
    assert load_aggregator_config({"sync": {"min_fraction": 0.5}}).sync.target_updates == 5
