"""mosquitto settings and the systemd drop-in sized for a fleet (aggregator/broker_sizing.py,
`fedge aggregator broker-config --fleet`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.broker_sizing import FleetSize, broker_settings, systemd_drop_in
from fedge.cli import main


@pytest.fixture(autouse=True)
def _restore_logging():
    """`fedge.cli.main` sets up the root logger; put it back for later tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_queues_and_open_files_grow_with_the_fleet_and_chunks():
    small, fleet = FleetSize(5), FleetSize(10_000, update_chunks=8)
    assert small.max_queued_messages == 10_000 and small.open_files == 4096
    assert fleet.max_queued_messages == 2 * 10_000 * 9  # a burst of updates and statuses
    assert fleet.open_files == 13_312 and fleet.open_files >= 1.25 * 10_000
    assert FleetSize(1000, update_chunks=1).max_queued_messages == 10_000


@pytest.mark.parametrize(("fields", "message"), [
    ({"devices": 0}, "--fleet must be >= 1 device, not 0"),
    ({"devices": 5, "update_chunks": 0}, "--update-chunks must be >= 1, not 0"),
])
def test_bad_sizes_are_refused_naming_the_flag(fields, message):
    with pytest.raises(ValueError, match=message):
        FleetSize(**fields)


def test_the_conf_lines_and_the_drop_in():
    size = FleetSize(3000, update_chunks=2)
    lines = broker_settings(size)
    assert "max_queued_messages 18000" in lines and "max_inflight_messages 1000" in lines
    assert "max_queued_bytes 0" in lines and "max_connections -1" in lines
    drop_in = systemd_drop_in(size).splitlines()
    assert drop_in[-2:] == ["[Service]", "LimitNOFILE=4096"]


def test_broker_config_writes_the_sized_conf_and_drop_in(tmp_path: Path):
    files = write_broker_config(BrokerSecurityPlan("fed", ("dev1",), fleet=FleetSize(2000)),
                                tmp_path / "broker")
    lines = files.conf.read_text().splitlines()
    assert f"max_queued_messages {FleetSize(2000).max_queued_messages}" in lines
    assert files.drop_in is not None
    assert "LimitNOFILE=4096" in files.drop_in.read_text().splitlines()


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto")
def test_the_command_sizes_for_the_fleet_flag(tmp_path: Path, capsys):
    config = tmp_path / "aggregator.toml"
    config.write_text('federation = "fed"\n')
    out = tmp_path / "broker"
    assert main(["aggregator", "broker-config", "--config", str(config), "--out", str(out),
                 "--devices", "dev1,dev2", "--fleet", "10000", "--update-chunks", "4"]) == 0
    said = capsys.readouterr().out
    assert "sized for 10000 devices: max_queued_messages 100000" in said
    assert "LimitNOFILE=13312" in said and "mosquitto.service.d/fedge-fleet.conf" in said
    assert "LimitNOFILE=13312" in (out / "fedge-fleet.conf").read_text()
    assert main(["aggregator", "broker-config", "--config", str(config), "--out",
                 str(tmp_path / "b2"), "--devices", "dev1", "--fleet", "0"]) != 0
    assert "--fleet must be >= 1" in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("unit", ["deploy/fedge-aggregator.service",
                                  "deploy/fedge-device.service",
                                  "examples/gateway/mosquitto-fleet.conf"])
def test_shipped_units_set_an_open_file_limit(unit):
    lines = (REPO / unit).read_text().splitlines()
    assert "[Service]" in lines
    assert any(line.startswith("LimitNOFILE=") for line in lines)


def test_the_example_broker_conf_matches_its_stated_fleet():
    lines = (REPO / "examples/gateway/mosquitto.conf").read_text().splitlines()
    size = FleetSize(1000, update_chunks=8)
    for line in broker_settings(size):
        if not line.startswith("#"):
            assert line in lines, line
    drop_in = (REPO / "examples/gateway/mosquitto-fleet.conf").read_text().splitlines()
    assert f"LimitNOFILE={size.open_files}" in drop_in
