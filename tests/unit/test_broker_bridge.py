"""A site broker's bridge section (aggregator/broker_bridge.py) and `fedge aggregator
broker-config --bridge-to`, which writes it from the site's [upper] table."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from aggregator.broker_acl import device_acl_block
from aggregator.broker_bridge import BridgePlan, bridge_section, bridge_topics
from fedge.cli import main


@pytest.fixture(autouse=True)
def _restore_logging():
    """`fedge.cli.main` sets up the root logger; put it back for later tests."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_the_bridge_carries_exactly_the_sites_device_topics_of_the_upper_federation():
    text = bridge_section(BridgePlan("plant-7", "acme", "10.0.0.5", 8883, "s3cret",
                                     Path("/etc/fedge/ca.pem")))
    lines = text.splitlines()
    assert "connection fedge-plant-7" in lines and "address 10.0.0.5:8883" in lines
    assert {"remote_username plant-7", "remote_password s3cret", "try_private true",
            "cleansession false", "bridge_cafile /etc/fedge/ca.pem"} <= set(lines)
    topics = [line.split()[1:] for line in lines if line.startswith("topic ")]
    assert topics == [[t, d, "1"] for t, d in bridge_topics("acme", "plant-7")]
    # every topic the bridge moves is one the site's ACL block on the upper broker allows
    acl = device_acl_block("acme", "plant-7")
    for topic, _direction in bridge_topics("acme", "plant-7"):
        assert f" {topic}\n" in acl


def test_without_a_password_the_bridge_logs_in_anonymously():
    text = bridge_section(BridgePlan("s", "top", "127.0.0.1", 1883))
    assert "remote_username" not in text and "bridge_cafile" not in text


@pytest.mark.parametrize("site", ["a/b", "a b", "#", ""])
def test_a_site_name_that_is_not_one_topic_level_is_refused(site):
    with pytest.raises(ValueError, match="site"):
        BridgePlan(site, "top", "127.0.0.1", 1883)


def test_broker_config_bridge_to_writes_the_section_from_upper(tmp_path, capsys):
    (tmp_path / "pw").write_text("hunter2\n")
    config = tmp_path / "site.toml"
    config.write_text(f'federation = "plant-7"\n[model]\nsizes = [4, 2]\n[upper]\n'
                      f'enabled = true\nfederation = "acme"\nsite_id = "plant-7"\n'
                      f'[upper.broker_auth]\nusername = "plant-7"\n'
                      f'password_file = "{tmp_path / "pw"}"\n')
    out = tmp_path / "broker"
    assert main(["aggregator", "broker-config", "--config", str(config), "--bridge-to",
                 "top.example:8883", "--out", str(out)]) == 0
    written = out / "bridge-plant-7.conf"
    assert "address top.example:8883" in written.read_text()
    assert "remote_password hunter2" in written.read_text()
    assert stat.S_IMODE(written.stat().st_mode) & 0o007 == 0  # holds a password
    assert "bridge-plant-7.conf" in capsys.readouterr().out


def test_broker_config_names_what_is_missing_in_one_line(tmp_path, capsys):
    config = tmp_path / "site.toml"
    config.write_text('federation = "plant-7"\n[model]\nsizes = [4, 2]\n')
    assert main(["aggregator", "broker-config", "--config", str(config), "--bridge-to",
                 "nope", "--out", str(tmp_path)]) == 2
    assert main(["aggregator", "broker-config", "--config", str(config), "--out",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--bridge-to must be HOST:PORT" in err[0]
    assert "--devices" in err[1]
