"""Total decoding: the attacker's reproductions of issue 13, and each kind of field out of
range, are refused with a RemoteProtocolError and a short reason, never another exception."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest

from edge_client.shared.codecs import CodecConfig
from edge_client.shared.codecs.dp import DeviceDp
from edge_client.shared.protocol import (
    Ack,
    Invitation,
    Model,
    ModelManifest,
    RemoteProtocolError,
    Status,
    Task,
    TrainConfig,
    Update,
    decode,
    encode,
    split,
)
from edge_client.shared.protocol.chunking import decode_chunk
from edge_client.shared.protocol.errors import MAX_REASON, cap_reason
from edge_client.shared.protocol.messages import DeltaInfo, encode_update_v1
from edge_client.shared.protocol.signing import open_envelope
from edge_client.shared.secagg.errors import BadSecAggMessage
from edge_client.shared.secagg.messages import AdvertiseKeys, decode_message
from edge_client.shared.secagg.task import SecAggTask

WEIGHTS = {"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}
TASK = Task("r1-abc", "sync", 1, 0, TrainConfig(), deadline=10.0, invited=("dev-1", "dev-2"),
            codec=CodecConfig().to_wire(), dp=DeviceDp(1.0, 0.1).to_wire())
UPDATE = Update(device_id="dev-1", task_id="r1-abc", nonce="ab" * 16, base_version=0,
                num_samples=12, tensors=WEIGHTS, metrics={"train_loss": 0.5}, created_at=1.5)
DELTA = DeltaInfo(base_version=3, sha256="1" * 64, size=10, chunk_count=1,
                  codec=CodecConfig().to_wire(), model_sha256="2" * 64)
MANIFEST = ModelManifest(version=4, sha256="0" * 64, size=100, chunk_count=2, created_at=1.0,
                         delta=DELTA, chain=(DELTA,))
MODEL = Model(version=2, tensors=WEIGHTS, arch={"kind": "mlp", "sizes": [3, 2]})
ACK = Ack(status="accepted", task_id="r1-abc", nonce="ff", next_checkin_s=3.0)
STATUS = Status(device_id="dev-1", online=True, model_version=2, time=5.0, battery_pct=80.0)
INVITATION = Invitation(task_id="r1-abc", device_id="dev-1")
MESSAGES = {"task": TASK, "update": UPDATE, "model": MODEL, "manifest": MANIFEST, "ack": ACK,
            "status": STATUS, "invitation": INVITATION}


def _raw(kind: str) -> dict[str, Any]:
    """"update" is the version 1 envelope older devices send (aggregators still decode
    it); "lean_update" the version 2 one devices send now (lean_update.py)."""
    if kind == "update":
        return msgpack.unpackb(encode_update_v1(UPDATE), raw=False)
    if kind == "lean_update":
        return msgpack.unpackb(encode(UPDATE), raw=False)
    return msgpack.unpackb(encode(MESSAGES[kind]), raw=False)


def _with(kind: str, path: tuple, value: Any) -> bytes:
    """The valid message of `kind` with the field at `path` (keys and list indexes)
    replaced by `value`."""
    raw = _raw(kind)
    target = raw
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return msgpack.packb(raw, use_bin_type=True)


def _refused(payload: bytes, **kwargs) -> str:
    with pytest.raises(RemoteProtocolError) as caught:
        decode(payload, **kwargs)
    reason = caught.value.reason
    assert isinstance(reason, str) and 0 < len(reason) <= MAX_REASON
    return reason


def test_every_valid_message_still_decodes():
    for message in MESSAGES.values():
        back = decode(encode(message))
        assert type(back) is type(message)


# ---------------------------------------------------------------- kind and v


@pytest.mark.parametrize("kind", [[], {}, {"a": 1}, 7, None, True, 1.5, b"task", "x" * 10**5,
                                  [[[[[]]]]]])
def test_a_kind_of_any_type_is_refused(kind):
    payload = msgpack.packb({"v": 1, "kind": kind}, use_bin_type=True)
    if kind == []:
        assert len(payload) == 10  # the attacker's 10 bytes
    assert "kind" in _refused(payload)
    for expect in (Status, Task, Update):
        _refused(payload, expect=expect)


@pytest.mark.parametrize("version", [True, 1.0, "1", [1], {"1": 1}, None, 2, -1, 2**64 - 1,
                                     [[[[]]]]])
def test_a_version_of_any_type_but_the_integer_1_is_refused(version):
    raw = _raw("status")
    raw["v"] = version
    assert "protocol version" in _refused(msgpack.packb(raw, use_bin_type=True))


def test_a_deeply_nested_value_gives_a_short_reason_not_a_recursion_error():
    deep = b"\x91" * 1000 + b"\x90"  # 1000 nested lists: repr() of it would recurse too far
    head = msgpack.packb({"v": 1}, use_bin_type=True)
    # {"v": 1, "kind": <deep>} spliced by hand: a fixmap of two entries
    payload = b"\x82" + head[1:] + msgpack.packb("kind") + deep
    assert "kind" in _refused(payload)
    payload = b"\x81" + msgpack.packb("v") + deep
    assert "protocol version" in _refused(payload)


# ---------------------------------------------------------------- integers

INT_FIELDS = [
    ("task", ("round",)), ("task", ("model_version",)), ("task", ("chunk_size",)),
    ("task", ("train", "epochs")), ("task", ("train", "batch_size")),
    ("update", ("base_version",)), ("update", ("num_samples",)),
    ("lean_update", ("b",)), ("lean_update", ("s",)),
    ("model", ("version",)),
    ("manifest", ("version",)), ("manifest", ("size",)), ("manifest", ("chunk_count",)),
    ("manifest", ("delta", "base_version")), ("manifest", ("delta", "size")),
    ("manifest", ("chain", 0, "chunk_count")),
    ("status", ("model_version",)),
]


@pytest.mark.parametrize("kind, path", INT_FIELDS)
@pytest.mark.parametrize("value", [2**63, 2**64 - 1, 2**53 + 1, -1, -(2**63), 1.5, "3", [],
                                   True])
def test_every_integer_field_is_bounded(kind, path, value):
    _refused(_with(kind, path, value))


@pytest.mark.parametrize("payload", [
    _with("status", ("model_version",), 2**63),  # retained: crashed the aggregator at start
    _with("update", ("num_samples",), 2**63),
    _with("update", ("base_version",), 2**63),
])
def test_the_reported_sqlite_overflows_are_refused(payload):
    assert "must be <=" in _refused(payload)


def test_the_largest_allowed_integers_decode():
    assert decode(_with("status", ("model_version",), 2**53)).model_version == 2**53
    assert decode(_with("update", ("num_samples",), 2**40)).num_samples == 2**40
    _refused(_with("update", ("num_samples",), 2**40 + 1))


# ---------------------------------------------------------------- floats

FLOAT_FIELDS = [
    ("task", ("deadline",)), ("task", ("train", "lr")), ("task", ("train", "momentum")),
    ("task", ("train", "prox_mu")), ("update", ("created_at",)),
    ("manifest", ("created_at",)), ("ack", ("next_checkin_s",)), ("status", ("time",)),
    ("status", ("battery_pct",)),
]
# Inside settings maps the meaning of a key is checked where it is used; the decoder
# refuses any non-finite float anywhere in them.
MAP_FLOAT_FIELDS = [("model", ("arch", "x")), ("task", ("codec", "fraction")),
                    ("task", ("dp", "clip")), ("manifest", ("delta", "codec", "fraction"))]


@pytest.mark.parametrize("kind, path", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "1.0", [1.0]])
def test_every_float_field_must_be_a_finite_number(kind, path, value):
    _refused(_with(kind, path, value))


@pytest.mark.parametrize("kind, path", MAP_FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_no_settings_map_holds_a_non_finite_float(kind, path, value):
    _refused(_with(kind, path, value))


def test_metrics_may_say_not_measured_but_not_infinite_or_huge():
    assert math.isnan(decode(_with("update", ("metrics", "acc"), math.nan)).metrics["acc"])
    for value in (math.inf, -math.inf, 2**63, "x", None, [1]):
        _refused(_with("update", ("metrics", "acc"), value))
    _refused(_with("update", ("metrics",), {f"m{i}": 1.0 for i in range(65)}))
    _refused(_with("update", ("metrics",), {"": 1.0}))


def test_an_ack_checkin_is_bounded():
    for value in (-1.0, 400 * 86400.0):
        _refused(_with("ack", ("next_checkin_s",), value))


# ---------------------------------------------------------------- strings, lists, maps


@pytest.mark.parametrize("kind, path, value", [
    ("task", ("task_id",), "t" * 257),
    ("task", ("mode",), ["sync"]),
    ("task", ("invited",), ["dev-1", 7]),
    ("task", ("invited",), ["dev/1"]),  # not a device id: a topic level
    ("task", ("invited",), [""]),
    ("task", ("invited",), ["d" * 65]),
    ("task", ("invited",), ["dev-1"] * 100_001),
    ("task", ("invited",), "dev-1"),
    ("task", ("invited",), [["dev-1"]]),
    ("task", ("train",), []),
    ("task", ("codec",), []),
    ("task", ("codec",), {f"k{i}": 1 for i in range(40)}),
    ("task", ("codec", "nested"), {"a": {"b": 1}}),
    ("task", ("codec", "sparsify"), "x" * 5000),
    ("task", ("dp", "v"), {"deep": [[[]]]}),
    ("task", ("secagg",), {"v": 1, "round_seed": b"x" * 10_000}),
    ("task", ("secagg",), {"v": 1, "size": 2**63}),
    ("update", ("device_id",), "dev 1"),
    ("update", ("device_id",), "dev-1\n"),  # re's $ matches before a final newline
    ("update", ("device_id",), "x" * 10**5),
    ("update", ("nonce",), "n" * 65),
    ("update", ("metrics",), []),
    ("update", ("codec",), {"sparsify": [1, 2, 3]}),
    ("update", ("tensors",), []),
    ("update", ("tensors", "w", "dtype"), []),  # unhashable: crashed the dict lookup
    ("update", ("tensors", "w", "dtype"), {"f4": 1}),
    ("update", ("tensors", "w", "shape"), [2**63, 0]),
    ("update", ("tensors", "w", "shape"), [0, 2**62]),
    ("update", ("tensors", "w", "shape"), [-1, -6]),
    ("update", ("tensors", "w", "shape"), [2.0, 3.0]),
    ("update", ("tensors", "w", "shape"), [True, 6]),
    ("update", ("tensors", "w", "data"), "bytes"),
    ("lean_update", ("d",), "dev 1"),
    ("lean_update", ("n",), "n" * 65),
    ("lean_update", ("n",), b"n" * 33),
    ("lean_update", ("n",), b""),
    ("lean_update", ("n",), 7),
    ("lean_update", ("m",), [1.0, 2.0]),
    ("lean_update", ("m",), {"train_loss": 1.0}),
    ("lean_update", ("m",), [1.0, 2.0, "3", 4.0]),
    ("lean_update", ("m",), [1.0, 2.0, 3.0, 4.0]),  # then "mx" names train_loss again
    ("lean_update", ("mx",), {"": 1.0}),
    ("lean_update", ("mx",), []),
    ("lean_update", ("c",), [1, 2, 3]),
    ("lean_update", ("c",), "topk"),
    ("lean_update", ("c",), ["topk", 0.1, 0, "q4", 256, True, [1]]),
    ("lean_update", ("w",), []),
    ("lean_update", ("w", "w", "shape"), [2**63, 0]),
    ("model", ("arch",), {"k": [[[[[[[1]]]]]]]}),
    ("model", ("arch",), {"sizes": list(range(10_001))}),
    ("model", ("arch", "x"), 2**63),
    ("model", ("arch",), {"x": {"y" * 65: 2}}),
    ("manifest", ("sha256",), "0" * 65),
    ("manifest", ("chain",), [{}] * 65),
    ("manifest", ("chain", 0), []),
    ("manifest", ("delta",), "d"),
    ("ack", ("status",), []),
    ("ack", ("reason",), "r" * 2001),
    ("status", ("device_id",), []),
    ("status", ("device_id",), "a/b"),
    ("status", ("online",), 1),
    ("status", ("reason",), "r" * 2001),
])
def test_strings_lists_and_maps_are_bounded_and_typed(kind, path, value):
    _refused(_with(kind, path, value))


# ---------------------------------------------------------------- other decoders


def _chunk(**changes) -> bytes:
    raw = msgpack.unpackb(split(b"payload" * 10, "t1", 1024)[0], raw=False)
    raw.update(changes)
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize("changes", [
    {"kind": []}, {"kind": {"a": 1}}, {"v": True}, {"i": 2**64 - 1}, {"n": 2**63},
    {"size": 2**63}, {"i": -1}, {"n": 0}, {"transfer": []}, {"transfer": "t" * 65},
    {"sha256": 5}, {"data": "text"}, {"data": b""}, {"i": 1.0},
])
def test_chunks_are_checked_totally(changes):
    with pytest.raises(RemoteProtocolError):
        decode_chunk(_chunk(**changes))


@pytest.mark.parametrize("changes", [
    {"kind": []}, {"kind": {}}, {"v": 1.0}, {"key_id": []}, {"key_id": "k" * 65},
    {"key_id": "k\n"}, {"body": "text"}, {"body": b""}, {"sig": b"x" * 63}, {"sig": None},
])
def test_sealed_envelopes_are_checked_totally(changes):
    raw = {"v": 1, "kind": "signed", "key_id": "k1", "body": encode(ACK), "sig": b"s" * 64}
    raw.update(changes)
    with pytest.raises(RemoteProtocolError):
        open_envelope(msgpack.packb(raw, use_bin_type=True))


@pytest.mark.parametrize("changes", [
    {"kind": []}, {"kind": {"a": 1}}, {"v": True}, {"v": [[[]]]}, {"device_id": []},
    {"c_pk": "key"}, {"round_id": "r" * 300}, {"seed_commitment": b"x" * 31},
])
def test_secagg_messages_are_checked_totally(changes):
    good = AdvertiseKeys(round_id="r1", device_id="dev-1", c_pk=b"c" * 32, s_pk=b"s" * 32,
                         seed_commitment=b"h" * 32)
    raw = msgpack.unpackb(good.to_bytes(), raw=False)
    raw.update(changes)
    with pytest.raises(BadSecAggMessage):
        decode_message(msgpack.packb(raw, use_bin_type=True))


def _secagg_settings(**changes) -> dict:
    raw = {"v": 1, "round_seed": b"r" * 32, "size": 10, "dim": 10, "bits": 32, "degree": 4,
           "threshold": 2, "clip": 1.0, "scale": 100.0, "sparsify": "none", "fraction": 1.0}
    raw.update(changes)
    return raw


def test_task_settings_maps_are_parsed_totally():
    assert SecAggTask.from_wire(_secagg_settings()).size == 10
    for changes in ({"v": True}, {"v": [[]]}, {"degree": 2**62}, {"threshold": 2**62},
                    {"size": 2**63}, {"clip": math.inf}, {"scale": 2**63}, {"bits": []},
                    {"sparsify": []}, {"round_seed": "seed"}):
        with pytest.raises(RemoteProtocolError):
            SecAggTask.from_wire(_secagg_settings(**changes))
    for raw in ({"v": True, "clip": 1.0, "noise_std": 0.1}, {"v": 1, "clip": [], "noise_std": 1},
                {"v": 1, "clip": math.nan, "noise_std": 1}, []):
        with pytest.raises(RemoteProtocolError):
            DeviceDp.from_wire(raw)
    for changes in ({"sparsify": []}, {"fraction": math.nan}, {"block_size": 2**63},
                    {"error_feedback": 1}, {"compress": {}}):
        with pytest.raises(RemoteProtocolError):
            CodecConfig.from_wire({**CodecConfig().to_wire(), **changes})


# ---------------------------------------------------------------- reasons


def test_a_long_reason_is_cut_with_an_ellipsis_and_the_ack_still_decodes():
    long = "x" * 10_000
    assert cap_reason(long).endswith("...") and len(cap_reason(long)) == MAX_REASON
    assert cap_reason("short") == "short"
    ack = decode(encode(Ack(status="rejected", task_id="t", nonce="n", reason=long)),
                 expect=Ack)
    assert isinstance(ack, Ack) and len(ack.reason) == MAX_REASON and ack.reason.endswith("...")
    status = decode(encode(Status(device_id="d", online=True, reason=long)), expect=Status)
    assert len(status.reason) == MAX_REASON
    assert len(RemoteProtocolError(long).reason) == MAX_REASON


def test_a_refusal_of_a_huge_value_has_a_short_reason():
    reason = _refused(_with("task", ("mode",), "m" * 100_000))
    assert len(reason) < 200
    reason = _refused(_with("ack", ("status",), "s" * 100_000))
    assert len(reason) < 200
