"""The [limits] table: defaults that work, and a clear one-line error naming the key."""

from __future__ import annotations

import pytest

from aggregator.config import AggregatorConfig, load_aggregator_config
from aggregator.limits import LimitsConfig, service_inbox, upload_assembler
from edge_client.client import ClientConfig
from edge_client.shared.settings import ConfigError
from edge_client.shared.transport import Inbound


def test_defaults_build_the_bounded_parts():
    config = load_aggregator_config({}, "agg.toml")
    assert config.limits == LimitsConfig()
    assembler = upload_assembler(config)
    assert assembler.max_transfers == 1000 and assembler.max_transfers_per_source == 2
    assert assembler.max_total_bytes == 4 * config.max_update_bytes
    assert service_inbox(config).max_bytes == 32 * 2**20


def test_a_table_sets_only_its_keys():
    config = load_aggregator_config({"limits": {"open_uploads": 5,
                                                "open_upload_bytes": 2**27}}, "agg.toml")
    assert config.limits.open_uploads == 5 and config.limits.uploads_per_device == 2
    assert upload_assembler(config).max_total_bytes == 2**27


@pytest.mark.parametrize("table, words", [
    ({"open_uploads": 0}, "open_uploads"),
    ({"inbound_queue_bytes": 1000}, "inbound_queue_bytes must be >= 65536"),
    ({"inbound_block_s": 0}, "inbound_block_s"),
    ({"unconfirmed_publishes": 5}, "unconfirmed_publishes"),
    ({"answered_rejections_s": 0}, "answered_rejections"),
    ({"rejections_total": 0}, "rejections_total"),
    ({"rejections_per_device": 5}, "rejections_per_device (5) must be >= anomalies.window"),
    ({"open_upload_bytes": 10}, "open_upload_bytes (10) must be >= max_update_bytes"),
    ({"open_uploads": "many"}, "open_uploads must be int"),
    ({"uploads": 3}, "unknown key 'uploads'"),
])
def test_bad_limits_name_the_key(table, words):
    with pytest.raises(ConfigError, match=r"agg\.toml") as info:
        load_aggregator_config({"limits": table}, "agg.toml")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_service_inbox_is_fair_per_device_id():
    inbox = service_inbox(AggregatorConfig())
    for _ in range(3):
        inbox.put(Inbound("fedge/f/update/evil", b"x", False))
    inbox.put(Inbound("fedge/f/status/good", b"s", False))
    assert [inbox.get(timeout=1).topic for _ in range(2)] == [
        "fedge/f/update/evil", "fedge/f/status/good"]


def test_the_device_bound_is_checked():
    assert ClientConfig(device_id="d").inbound_queue_bytes == 8 * 2**20
    with pytest.raises(ValueError, match="inbound_queue_bytes"):
        ClientConfig(device_id="d", inbound_queue_bytes=100)
