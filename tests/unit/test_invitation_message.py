"""The Invitation message and its topic: a plain round's named top-ups, one small
retained message per device (aggregator/core/invitations.py); decoding is total."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from edge_client.shared.protocol import (
    Invitation,
    RemoteProtocolError,
    Task,
    Topics,
    TrainConfig,
    decode,
    encode,
)
from edge_client.shared.protocol.errors import MAX_REASON

GOOD = Invitation(task_id="r3-0a1b2c3d", device_id="dev-7")


def _raw() -> dict[str, Any]:
    return msgpack.unpackb(encode(GOOD), raw=False)


def _refused(payload: Any, **kwargs: Any) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(payload, **kwargs)
    reason = caught.value.reason
    assert isinstance(reason, str) and 0 < len(reason) <= MAX_REASON
    return reason


def test_an_invitation_round_trips_small_and_expected_kinds_are_kept_apart():
    payload = encode(GOOD)
    assert decode(payload) == GOOD and decode(payload, expect=Invitation) == GOOD
    assert len(payload) < 80
    assert "expected a message of kind 'task'" in _refused(payload, expect=Task)
    task = encode(Task("t", "sync", 1, 0, TrainConfig()))
    assert "invitation" in _refused(task, expect=Invitation)


def test_the_invite_topic_is_per_device():
    topics = Topics("fed")
    assert topics.invite("dev-7") == "fedge/fed/invite/dev-7"
    assert topics.device_of(topics.invite("dev-7")) == "dev-7"


@pytest.mark.parametrize("field, value", [
    ("task_id", None), ("task_id", 7), ("task_id", b"r3"), ("task_id", "x" * 257),
    ("task_id", ["r3"]), ("task_id", {"a": 1}),
    ("device_id", None), ("device_id", "a/b"), ("device_id", "dev+"), ("device_id", "#"),
    ("device_id", ""), ("device_id", "x" * 65), ("device_id", 3), ("device_id", "dev-7\n"),
])
def test_every_bad_field_is_refused_with_a_reason(field, value):
    raw = _raw()
    raw[field] = value
    _refused(msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize("field", ["task_id", "device_id"])
def test_a_missing_field_is_refused(field):
    raw = _raw()
    del raw[field]
    assert field in _refused(msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize("version", [2, 0, True, 1.0, "1", None])
def test_only_protocol_version_1_is_spoken_for_invitations(version):
    raw = _raw()
    raw["v"] = version
    assert "protocol version" in _refused(msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x90", encode(GOOD)[:-3],
                                     msgpack.packb([1, 2]), "not bytes"])
def test_garbage_is_refused(payload):
    _refused(payload)


def test_every_truncation_is_refused():
    payload = encode(GOOD)
    for end in range(len(payload)):
        _refused(payload[:end])
