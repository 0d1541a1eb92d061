"""States as Enums read, print and travel exactly as the strings they replaced."""

from __future__ import annotations

import json

import msgpack
import pytest

from aggregator.states import UpdateState
from edge_client.shared.protocol import Ack, AckStatus, LocalProtocolError, decode, encode


def test_an_ack_status_is_its_string_everywhere() -> None:
    status = AckStatus.ACCEPTED
    assert status == "accepted" and f"{status}" == "accepted" and str(status) == "accepted"
    assert json.dumps(status) == '"accepted"' and {status: 1}["accepted"] == 1
    assert str(UpdateState.PENDING) == "pending"


def test_ack_wire_bytes_are_unchanged() -> None:
    ack = Ack(status="late", task_id="t", nonce="n", reason="r")  # type: ignore[arg-type]
    assert ack.status is AckStatus.LATE
    body = msgpack.unpackb(encode(ack))
    assert body["status"] == "late" and type(body["status"]) is str
    assert encode(ack) == encode(Ack(status=AckStatus.LATE, task_id="t", nonce="n", reason="r"))
    decoded = decode(encode(ack), expect=Ack)
    assert decoded.status is AckStatus.LATE and decoded == ack


def test_an_unknown_status_is_our_own_error() -> None:
    with pytest.raises(LocalProtocolError, match="unknown status"):
        Ack(status="maybe")  # type: ignore[arg-type]
