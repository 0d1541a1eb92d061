"""Which statuses the aggregator believes: signed by the enrolled key and fresh in secure
mode; any age for a status that only makes a device unavailable."""

from __future__ import annotations

import re

import pytest

from aggregator.status_gate import StatusGate
from edge_client.shared.identity import Identity
from edge_client.shared.protocol import RemoteProtocolError, Status, encode
from edge_client.shared.protocol.signing import seal
from edge_client.shared.security import AggregatorSecurity

NOW = 1_000_000.0
DEVICE = Identity.generate()
OTHER = Identity.generate()


def _gate(enabled: bool = True) -> StatusGate:
    keys = {"dev-1": DEVICE.public_text}
    return StatusGate(AggregatorSecurity(enabled=enabled, max_clock_skew_s=300), keys.get)


def _status(online: bool = True, eligible: bool = True, at: float = NOW,
            device: str = "dev-1") -> bytes:
    return encode(Status(device_id=device, online=online, eligible=eligible, time=at))


def test_a_signed_fresh_status_is_taken():
    status = _gate().open("dev-1", seal(_status(), DEVICE), NOW)
    assert status is not None
    assert status.online and status.eligible and status.device_id == "dev-1"


@pytest.mark.parametrize(("device", "payload", "reason"), [
    ("dev-1", _status(), "status is not signed"),
    ("dev-1", seal(_status(), OTHER), "bad signature"),
    ("dev-2", seal(_status(device="dev-2"), OTHER), "device 'dev-2' is not enrolled"),
    ("dev-1", seal(_status(device="dev-2"), DEVICE), "status names device 'dev-2' but came"),
    ("dev-1", seal(_status(at=NOW - 3600), DEVICE),
     "status time is -3600 s from the aggregator's clock (limit 300 s)"),
    ("dev-1", seal(_status(at=NOW + 900), DEVICE), "status time is +900 s"),
    ("dev-1", b"\x93junk", "status is not signed"),
])
def test_unsigned_forged_unenrolled_misnamed_and_stale_statuses_are_refused(device, payload,
                                                                            reason):
    with pytest.raises(RemoteProtocolError, match=re.escape(reason)):
        _gate().open(device, payload, NOW)


def test_a_replayed_online_status_is_refused_after_a_newer_one():
    gate = _gate()
    old = seal(_status(at=NOW - 10), DEVICE)
    gate.open("dev-1", old, NOW)
    gate.open("dev-1", seal(_status(online=False, at=NOW - 5), DEVICE), NOW)
    with pytest.raises(RemoteProtocolError, match="not newer than the last one"):
        gate.open("dev-1", old, NOW)  # the device went offline; its old "online" replayed


def test_an_old_offline_status_is_taken_it_can_only_make_a_device_unavailable():
    gate = _gate()
    gate.open("dev-1", seal(_status(at=NOW - 5), DEVICE), NOW)
    will = seal(_status(online=False, at=NOW - 86_400), DEVICE)  # sealed a day ago
    assert not gate.open("dev-1", will, NOW).online
    ineligible = seal(_status(eligible=False, at=NOW - 86_400), DEVICE)
    assert not gate.open("dev-1", ineligible, NOW).eligible
    gate.open("dev-1", seal(_status(at=NOW - 4), DEVICE), NOW)  # still newer than the last


def test_an_offline_status_stamped_far_ahead_does_not_lock_the_device_out():
    gate = _gate()
    gate.open("dev-1", seal(_status(online=False, at=NOW + 86_400), DEVICE), NOW)
    assert gate.open("dev-1", seal(_status(at=NOW), DEVICE), NOW).online


def test_plain_mode_takes_unsigned_and_signed_statuses_unchecked():
    gate = _gate(enabled=False)
    assert gate.open("ghost", _status(device="ghost", at=0.0), NOW).online
    assert gate.open("dev-1", seal(_status(at=0.0), OTHER), NOW).online
    with pytest.raises(RemoteProtocolError, match="names device"):
        gate.open("dev-1", _status(device="dev-2"), NOW)
    with pytest.raises(RemoteProtocolError, match="payload is not valid MessagePack"):
        gate.open("dev-1", b"\x93junk", NOW)


def test_the_status_already_taken_delivered_again_is_neither_taken_nor_refused():
    """A QoS 1 redelivery after a lost link, or the retained copy read again when the
    aggregator reconnects: the same status, so nothing to take and nothing to clear."""
    gate = _gate()
    status = seal(_status(at=NOW - 10), DEVICE)
    assert gate.open("dev-1", status, NOW) is not None
    assert gate.open("dev-1", status, NOW) is None
    gate.open("dev-1", seal(_status(at=NOW - 5), DEVICE), NOW)
    with pytest.raises(RemoteProtocolError, match="not newer than the last one"):
        gate.open("dev-1", status, NOW)  # older than the newest: a replay
