"""The device's statuses: sealed with its key (the last will too), and republished at
least every status_interval_s so a retained signed status stays fresh."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import Status, decode
from edge_client.shared.protocol.signing import is_signed, open_envelope, verify_envelope
from edge_client.shared.security import DeviceSecurity
from edge_client.training import mlp_trainer


@dataclass
class _Link:
    """Records publishes; always connected."""

    sent: list[tuple[str, bytes, bool]] = field(default_factory=list)
    connected: bool = True

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        self.sent.append((topic, payload, retain))
        return True


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


def test_statuses_and_the_last_will_are_sealed_with_the_device_key(tmp_path):
    client = _client(tmp_path)
    will = _opened(client, client.link._client.will_payload)
    assert client.link._client.will_topic == "fedge/default/status/dev-1"
    assert will.device_id == "dev-1" and not will.online and will.time > 0
    client.link = _Link()
    client._publish_status(True)
    topic, payload, retain = client.link.sent[-1]
    assert topic == "fedge/default/status/dev-1" and retain and _opened(client, payload).online


def test_without_a_key_statuses_stay_plain(tmp_path):
    client = _client(tmp_path, key=False)
    assert not is_signed(client.link._client.will_payload)
    assert decode(client._status_payload(True), expect=Status).online


def test_the_status_is_republished_once_its_interval_has_passed(tmp_path):
    client = _client(tmp_path, status_interval_s=3600.0)
    client.link = link = _Link()
    client._recheck()  # the first decision: published because it changed
    client._recheck()
    assert len(link.sent) == 1  # nothing new, and the interval has not passed
    client.config.status_interval_s = 1e-9
    client._recheck()
    assert len(link.sent) == 2 and _opened(client, link.sent[-1][1]).online


def test_a_bad_status_interval_is_refused():
    with pytest.raises(ValueError, match="status_interval_s must be > 0, not 0"):
        ClientConfig(device_id="d", status_interval_s=0)
