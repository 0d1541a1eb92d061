"""The device's statuses: sealed with its key (the last will too), and republished at
least every status_interval_s so a retained signed status stays fresh."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.session import Instant
from edge_client.session.actions import Publish
from edge_client.session.events import LinkUp
from edge_client.session.keys import load_device_keys
from edge_client.shared.protocol import Status, decode
from edge_client.shared.protocol.signing import is_signed, open_envelope, verify_envelope
from edge_client.shared.security import DeviceSecurity
from edge_client.training import mlp_trainer
from tests.unit.session_driver import ScriptedDevice

STATUS = "fedge/default/status/dev-1"


def _client(tmp_path, key: bool = True, **overrides) -> EdgeClient:
    security = DeviceSecurity(key_file=tmp_path / "dev.key") if key else DeviceSecurity()
    config = ClientConfig(device_id="dev-1", state_dir=tmp_path / "state", security=security,
                          eligibility=EligibilityConfig(enabled=False), **overrides)
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    return EdgeClient(config, mlp_trainer([3, 2]), x, y)


def _opened(client: EdgeClient, payload: bytes) -> Status:
    body = verify_envelope(open_envelope(payload), client.identity.public_bytes)
    status = decode(body, expect=Status)
    assert isinstance(status, Status)
    return status


def _statuses(client: EdgeClient, actions: list) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and a.topic == STATUS]


def test_statuses_and_the_last_will_are_sealed_with_the_device_key(tmp_path):
    client = _client(tmp_path)
    will = _opened(client, client.link._client.will_payload)
    assert client.link._client.will_topic == STATUS
    assert will.device_id == "dev-1" and not will.online and will.time > 0
    [status] = _statuses(client, client.session.handle(LinkUp(), Instant(1.0, 1.7e9)))
    assert status.retain and _opened(client, status.payload).online


def test_without_a_key_statuses_stay_plain(tmp_path):
    client = _client(tmp_path, key=False)
    assert not is_signed(client.link._client.will_payload)
    [status] = _statuses(client, client.session.handle(LinkUp(), Instant(1.0, 1.7e9)))
    assert decode(status.payload, expect=Status).online


def test_the_status_is_republished_once_its_interval_has_passed(tmp_path):
    config = ClientConfig(device_id="dev-1", status_interval_s=3600.0,
                          security=DeviceSecurity(key_file=tmp_path / "dev.key"))
    keys = load_device_keys(config.security)
    device = ScriptedDevice(config, keys=keys)
    device.feed(LinkUp())
    assert len(device.statuses(device.advance(0))) == 1  # the first decision: it changed
    assert device.statuses(device.advance(5.0)) == []  # nothing new, interval not passed
    [again] = device.statuses(device.advance(3600.0))
    body = verify_envelope(open_envelope(again.payload), keys.identity.public_bytes)
    assert decode(body, expect=Status).online


def test_a_bad_status_interval_is_refused():
    with pytest.raises(ValueError, match="status_interval_s must be > 0, not 0"):
        ClientConfig(device_id="d", status_interval_s=0)
