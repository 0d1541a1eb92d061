"""The lean update envelope (protocol/lean_update.py, update version 2): the same Update
as version 1 in fewer bytes, version 1 updates (older devices) still decoded, and every
malformed field refused with a one-line reason that names the field."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_client.shared.codecs.adaptive import ADAPTIVE_UPLINK
from edge_client.shared.protocol import RemoteProtocolError, Update, decode, encode
from edge_client.shared.protocol.lean_update import LEAN_UPDATE_VERSION
from edge_client.shared.protocol.messages import encode_update_v1
from edge_client.shared.protocol.signing import open_envelope, seal, verify_envelope

CODEC = dataclasses.replace(ADAPTIVE_UPLINK, fraction=0.0573812, energy=0.0, max_fraction=0.0)
METRICS = {"train_loss": 0.123, "train_s": 0.81, "local_accuracy": 0.5, "local_loss": 1.25}
COMPRESSED = Update(device_id="device-3", task_id="r17-ab12cd34", nonce="0f" * 16,
                    base_version=17, num_samples=225, tensors={}, metrics=METRICS,
                    created_at=1764939000.123456, codec=CODEC.to_wire(), blob=b"\x02" * 1600)
DENSE = Update(device_id="dev-1", task_id="r1-abc", nonce="n1", base_version=0,
               num_samples=12, tensors={"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
               metrics={**METRICS, "work_done": 0.5, "dp_clip": 1.0}, created_at=1.5)


def _same(a: Update, b: Update) -> None:
    assert (a.device_id, a.task_id, a.nonce, a.base_version, a.num_samples, a.created_at,
            a.codec, a.blob) == (b.device_id, b.task_id, b.nonce, b.base_version,
                                 b.num_samples, b.created_at, b.codec, b.blob)
    assert a.metrics.keys() == b.metrics.keys()
    for key, value in a.metrics.items():
        assert value == b.metrics[key] or (math.isnan(value) and math.isnan(b.metrics[key]))
    assert a.tensors.keys() == b.tensors.keys()
    for key, value in a.tensors.items():
        np.testing.assert_array_equal(value, b.tensors[key])


@pytest.mark.parametrize("update", [COMPRESSED, DENSE], ids=["compressed", "dense"])
def test_a_lean_update_decodes_to_the_same_update_as_version_1(update):
    lean, old = encode(update), encode_update_v1(update)
    assert msgpack.unpackb(lean)["v"] == LEAN_UPDATE_VERSION
    assert msgpack.unpackb(old)["v"] == 1
    _same(decode(lean, expect=Update), update)
    _same(decode(old, expect=Update), update)  # an old device's update: still read


def test_the_lean_envelope_is_about_210_bytes_shorter():
    lean = len(encode(COMPRESSED)) - len(COMPRESSED.blob)
    old = len(encode_update_v1(COMPRESSED)) - len(COMPRESSED.blob)
    assert old >= 360 and lean <= 160, (old, lean)
    raw = msgpack.unpackb(encode(COMPRESSED))
    assert raw["n"] == bytes.fromhex(COMPRESSED.nonce)  # 16 raw bytes, not 32 characters
    assert raw["m"] == [METRICS[k] for k in ("train_loss", "train_s", "local_accuracy",
                                             "local_loss")]
    assert "w" not in raw and "mx" not in raw


def test_nan_metrics_and_other_metrics_travel():
    update = dataclasses.replace(DENSE, metrics={**DENSE.metrics, "local_accuracy": math.nan})
    _same(decode(encode(update), expect=Update), update)
    partial = dataclasses.replace(DENSE, metrics={"train_loss": 1.0})  # no list: by name
    assert "m" not in msgpack.unpackb(encode(partial))
    _same(decode(encode(partial), expect=Update), partial)


@pytest.mark.parametrize("nonce", ["0f" * 16, "n1", "AB" * 16, "abc", "a" * 64, "00"])
def test_any_nonce_comes_back_as_it_went(nonce):
    update = dataclasses.replace(COMPRESSED, nonce=nonce)
    assert decode(encode(update), expect=Update).nonce == nonce


def test_a_signed_lean_update_verifies():
    from edge_client.shared.identity import Identity

    identity = Identity.generate()
    envelope = open_envelope(seal(encode(COMPRESSED), identity))
    body = verify_envelope(envelope, identity.public_bytes)
    _same(decode(body, expect=Update), COMPRESSED)


def _lean_with(**fields: Any) -> bytes:
    raw = msgpack.unpackb(encode(COMPRESSED), raw=False)
    for key, value in fields.items():
        if value is _DROP:
            raw.pop(key)
        else:
            raw[key] = value
    return msgpack.packb(raw, use_bin_type=True)


_DROP = object()


@pytest.mark.parametrize("fields, words", [
    ({"s": 0}, ["num_samples", "'s'"]),
    ({"s": _DROP}, ["missing", "num_samples"]),
    ({"d": _DROP}, ["missing", "device_id"]),
    ({"d": "a/b"}, ["device_id", "device id"]),
    ({"t": 5}, ["task_id", "wrong type"]),
    ({"n": b""}, ["nonce", "1 to 32 bytes"]),
    ({"n": b"x" * 33}, ["nonce", "1 to 32 bytes"]),
    ({"n": 1.5}, ["nonce", "wrong type"]),
    ({"b": -1}, ["base_version", ">= 0"]),
    ({"at": math.inf}, ["created_at", "finite"]),
    ({"m": [1.0, 2.0, 3.0]}, ["metrics", "must list 4"]),
    ({"m": [1.0, 2.0, 3.0, math.inf]}, ["local_loss", "out of range"]),
    ({"m": [1.0, 2.0, 3.0, "x"]}, ["metrics must map names to numbers"]),
    ({"mx": {"train_loss": 1.0}}, ["each once"]),
    ({"mx": {f"k{i}": 1.0 for i in range(61)}}, ["more than 64"]),
    ({"c": ["topk", 0.05]}, ["codec", "must list 7 or 9"]),
    ({"c": ["topk", 0.05, 0, "q4", 256, True, {"x": 1}]}, ["codec", "plain values"]),
    ({"c": _DROP}, ["either dense tensors, or a codec and a blob"]),
    ({"z": _DROP}, ["either dense tensors, or a codec and a blob"]),
    ({"w": {"w": {"dtype": "f4", "shape": [1], "data": b"\0\0\0\0"}}},
     ["either dense tensors, or a codec and a blob"]),
    ({"w": []}, ["tensors"]),
])
def test_a_malformed_lean_update_gets_a_one_line_reason(fields, words):
    with pytest.raises(RemoteProtocolError) as caught:
        decode(_lean_with(**fields), expect=Update)
    reason = caught.value.reason
    assert "\n" not in reason and len(reason) < 300
    for word in words:
        assert word in reason, reason


def test_a_lean_codec_list_the_codec_refuses_is_refused_where_it_is_read():
    from aggregator.ingest import open_flat_update

    bad = _lean_with(c=["topk", 2.0, 0, "q4", 256, True, "zlib"])  # fraction past 1
    update = decode(bad, expect=Update)  # the envelope is well formed ...
    with pytest.raises(RemoteProtocolError, match="fraction"):  # ... the codec is not
        open_flat_update(bad, {"w": np.zeros(30_000, np.float32)})
    assert update.codec is not None and update.codec["fraction"] == 2.0


def test_a_version_3_update_is_refused_by_name():
    raw = msgpack.unpackb(encode(COMPRESSED), raw=False)
    raw["v"] = 3
    with pytest.raises(RemoteProtocolError, match="unsupported protocol version 3"):
        decode(msgpack.packb(raw, use_bin_type=True))


# ---------------------------------------------------------------- who sends which version


def test_a_task_says_which_update_envelope_its_aggregator_reads():
    from edge_client.shared.protocol import Task, TrainConfig

    old = Task("r1-abc", "sync", 1, 0, TrainConfig())  # an aggregator before version 2
    new = dataclasses.replace(old, update_version=LEAN_UPDATE_VERSION)
    assert "update_v" not in msgpack.unpackb(encode(old))  # old tasks: byte for byte
    assert decode(encode(old), expect=Task).update_version == 1
    assert decode(encode(new), expect=Task).update_version == LEAN_UPDATE_VERSION
    future = msgpack.unpackb(encode(new), raw=False)
    future["update_v"] = 9  # a newer aggregator: this device sends the newest it knows
    assert decode(msgpack.packb(future), expect=Task).update_version == 9
    future["update_v"] = 0
    with pytest.raises(RemoteProtocolError, match="update_v"):
        decode(msgpack.packb(future), expect=Task)


def test_a_device_sends_what_the_tasks_aggregator_reads():
    from edge_client.session.update_maker import blob_format
    from edge_client.shared.protocol import Task, TrainConfig
    from edge_client.shared.protocol.messages import encode_update

    old = Task("r1-abc", "sync", 1, 0, TrainConfig())
    new = dataclasses.replace(old, update_version=LEAN_UPDATE_VERSION)
    newer = dataclasses.replace(old, update_version=9)
    assert msgpack.unpackb(encode_update(COMPRESSED, old))["v"] == 1
    assert msgpack.unpackb(encode_update(COMPRESSED, new))["v"] == LEAN_UPDATE_VERSION
    assert msgpack.unpackb(encode_update(COMPRESSED, newer))["v"] == LEAN_UPDATE_VERSION
    assert (blob_format(old), blob_format(new), blob_format(newer)) == (1, 2, 2)


def test_the_aggregators_tasks_ask_for_lean_updates():
    from aggregator.config import AggregatorConfig, SyncConfig
    from aggregator.participation import BufferedAsync, SyncRounds

    config = AggregatorConfig(federation="t", sync=SyncConfig(target_updates=1))
    for mode in (SyncRounds(config), BufferedAsync(config)):
        task = mode.plan(1, 0, ["dev-1"], 0.0)
        assert task is not None and task.update_version == LEAN_UPDATE_VERSION


def test_an_upgraded_device_resends_the_version_1_updates_in_its_outbox():
    from edge_client.outbox import OutboxEntry
    from edge_client.session.resend import read_outbox

    entries = [OutboxEntry("a" * 32, encode_update_v1(COMPRESSED)),
               OutboxEntry("b" * 32, encode(COMPRESSED)), OutboxEntry("c" * 32, b"junk")]
    readable, unreadable = read_outbox(entries)
    assert [(e.nonce, task) for e, task in readable] == [("a" * 32, "r17-ab12cd34"),
                                                        ("b" * 32, "r17-ab12cd34")]
    assert [nonce for nonce, _ in unreadable] == ["c" * 32]
