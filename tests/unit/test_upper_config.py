"""The [upper] table (docs/configuration.md): read from TOML, bad values named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import load_aggregator_config
from edge_client.shared.settings import ConfigError
from fedge.tiers.uplink import uplink_config


def test_upper_reads_with_its_own_security_and_broker_tables():
    config = load_aggregator_config({
        "federation": "plant-7", "db_path": "/var/lib/fedge/plant.sqlite3",
        "upper": {"enabled": True, "port": 8883, "federation": "acme", "site_id": "plant-7",
                  "every_versions": 3,
                  "security": {"key_file": "site.key", "aggregator_key": "ed25519:AAAA"},
                  "broker_auth": {"username": "plant-7", "ca_file": "ca.pem"}}})
    upper = config.upper
    assert (upper.enabled, upper.port, upper.federation, upper.every_versions) == (
        True, 8883, "acme", 3)
    client = uplink_config(config)  # the one device the site is upstairs
    assert (client.device_id, client.federation, client.port) == ("plant-7", "acme", 8883)
    assert client.state_dir == Path("/var/lib/fedge/plant-upper")
    assert client.security.aggregator_key == "ed25519:AAAA"
    assert client.broker_auth.username == "plant-7" and not client.eligibility.enabled


@pytest.mark.parametrize(("upper", "words"), [
    ({"every_versions": 0}, "upper.every_versions must be >= 1"),
    ({"site_id": "a/b"}, "upper.site_id"),
    ({"port": 0}, "upper.port"),
    ({"enabled": True, "federation": "plant-7"}, "upper.federation must differ"),
    ({"colour": "red"}, "unknown key 'colour'"),
])
def test_bad_upper_values_are_named(upper, words):
    with pytest.raises((ConfigError, ValueError)) as caught:
        load_aggregator_config({"federation": "plant-7", "upper": upper}, "site.toml")
    assert words in str(caught.value) and "\n" not in str(caught.value)
