"""Old and new devices with a new aggregator (the lean update envelope, protocol.md):
a device that sends version 1 updates and format 1 blobs, as every device before it did,
takes part like one that sends version 2, and a fleet of either gives the same model."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from edge_client.session import participation, update_maker
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.protocol import Update
from edge_client.shared.protocol.chunking import decode_chunk
from edge_client.shared.protocol.messages import encode, encode_update_v1
from tests.unit.paired_harness import Federation, final_weights

UPLINK = CodecConfig(sparsify="topk", fraction=0.05, quantize="q4")


def _run(tmp_path) -> Federation:
    fed = Federation(tmp_path, uplink=UPLINK)
    fed.start()
    fed.run_to_end()
    return fed


def _old_devices(monkeypatch, old: set[str]) -> None:
    """Devices in `old` send what devices before the lean envelope sent."""
    def encode_update(update: Update, task) -> bytes:
        return encode_update_v1(update) if update.device_id in old else encode(update)

    monkeypatch.setattr(participation, "encode_update", encode_update)
    if old:  # format 1 blobs (the frame is chosen per task, so for every device here)
        monkeypatch.setattr(update_maker, "blob_format", lambda task: 1)


def _versions_sent(fed: Federation) -> dict[str, set[int]]:
    """The update envelope versions each device's chunks carried, read off the bus."""
    parts: dict[tuple[str, str], dict[int, bytes]] = {}
    for message in fed.bus.delivered:
        if "/update/" in message.topic:
            chunk = decode_chunk(message.payload)
            parts.setdefault((message.topic, chunk.transfer), {})[chunk.index] = chunk.data
    sent: dict[str, set[int]] = {}
    for (topic, _), chunks in parts.items():
        body = msgpack.unpackb(b"".join(chunks[i] for i in sorted(chunks)))
        sent.setdefault(topic.rsplit("/", 1)[1], set()).add(body["v"])
    return sent


@pytest.mark.parametrize("old", [set(), {"dev-0"}, {"dev-0", "dev-1", "dev-2"}],
                         ids=["all new", "one old", "all old"])
def test_old_and_new_devices_give_the_same_model(tmp_path, monkeypatch, old):
    _old_devices(monkeypatch, old)
    fed = _run(tmp_path / "mixed")
    assert [v.updates for v in fed.aggregator.versions] == [3, 3, 3]
    for device in fed.devices:
        assert device.ack_statuses() == ["accepted"] * 3
    sent = _versions_sent(fed)
    assert sent == {d: {1} if d in old else {2} for d in ("dev-0", "dev-1", "dev-2")}
    monkeypatch.undo()
    reference = final_weights(_run(tmp_path / "new"))
    got = final_weights(fed)
    for key in reference:
        np.testing.assert_array_equal(got[key], reference[key])
