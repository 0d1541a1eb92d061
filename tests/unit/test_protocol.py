"""Protocol round trips and the rejection of malformed input, with no network."""

from __future__ import annotations

import math
import os
import random

import msgpack
import numpy as np
import pytest

from edge_client.shared.protocol import (
    Ack,
    Assembler,
    LocalProtocolError,
    Model,
    ModelManifest,
    RemoteProtocolError,
    Status,
    Task,
    Topics,
    TrainConfig,
    Update,
    decode,
    encode,
    split,
)
from edge_client.shared.protocol.chunking import CHUNK_HEADER_RESERVE, chunk_count
from edge_client.shared.protocol.model_transfer import open_model, package_model
from edge_client.shared.protocol.tensors import check_like, decode_tensors, encode_tensors


def _update(**overrides) -> Update:
    fields = dict(device_id="dev-1", task_id="r1-abc", nonce="ab" * 16, base_version=3,
                  num_samples=12, tensors={"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                           "b": np.ones(3, np.float32)},
                  metrics={"train_loss": 0.5}, created_at=1.5)
    fields.update(overrides)
    return Update(**fields)


# ---------------------------------------------------------------- messages

def test_update_round_trip_keeps_values_dtype_and_shape():
    update = _update()
    back = decode(encode(update), expect=Update)
    assert isinstance(back, Update)
    assert back.device_id == "dev-1" and back.nonce == update.nonce
    assert back.num_samples == 12 and back.metrics == {"train_loss": 0.5}
    for name, array in update.tensors.items():
        assert back.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(back.tensors[name], array)


@pytest.mark.parametrize("message", [
    Task("t1", "sync", 1, 0, TrainConfig(), deadline=10.0, invited=("a", "b")),
    Task("t2", "async", 2, 1, TrainConfig(epochs=1, lr=0.05), invited=None, done=True),
    ModelManifest(version=4, sha256="0" * 64, size=100, chunk_count=2, created_at=1.0),
    Ack(status="late", task_id="t", nonce="ff", reason="closed", next_checkin_s=3.0),
    Status(device_id="d", online=False, eligible=False, reason="unplugged", model_version=2),
])
def test_small_messages_round_trip(message):
    assert decode(encode(message)) == message


def test_tensors_are_little_endian_on_the_wire():
    raw = encode_tensors({"x": np.array([1.0], dtype=">f4")})
    assert raw["x"]["dtype"] == "f4" and raw["x"]["data"] == np.float32(1.0).tobytes()


def test_unsupported_dtype_is_our_own_error():
    with pytest.raises(LocalProtocolError):
        encode_tensors({"x": np.array(["a"])})


def _raw(**fields) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)


@pytest.mark.parametrize("payload, reason", [
    (b"", "not valid MessagePack"),
    (os.urandom(64) + b"\xc1", "MessagePack"),
    (msgpack.packb([1, 2]), "not a map"),
    (msgpack.packb({"v": 99, "kind": "ack"}), "unsupported protocol version 99"),
    (msgpack.packb({"kind": "ack"}), "unsupported protocol version None"),
    (_raw(kind="teleport"), "unknown message kind"),
    (_raw(kind="ack", status="maybe", task_id="", nonce="", reason=""), "unknown status"),
    (_raw(kind="ack", status="accepted", task_id=3, nonce="", reason=""), "wrong type"),
    (_raw(kind="manifest", version=1, sha256="x", size=0, chunk_count=1, created_at=0),
     "must be >= 1"),
    (_raw(kind="manifest", version=1, sha256="x", size=5, chunk_count=0, created_at=0),
     "chunk_count' must be >= 1"),
    (_raw(kind="manifest", version=1, sha256="x", size=5, created_at=0),
     "missing field 'chunk_count'"),
    (_raw(kind="task", task_id="t", mode="sync", round=1, model_version=0, chunk_size=4096,
          done=False, train={"epochs": 0, "batch_size": 1, "lr": 0.1, "momentum": 0,
                             "prox_mu": 0}), "epochs and batch_size"),
])
def test_malformed_messages_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        decode(payload)


def test_decode_refuses_the_wrong_kind():
    with pytest.raises(RemoteProtocolError, match="kind 'update', got 'ack'"):
        decode(encode(Ack(status="accepted")), expect=Update)


def test_booleans_are_not_integers():
    payload = _raw(kind="manifest", version=True, sha256="0" * 64, size=5, chunk_count=1,
                   created_at=0.0)
    with pytest.raises(RemoteProtocolError, match="wrong type"):
        decode(payload)


@pytest.mark.parametrize("spec, reason", [
    ({"dtype": "f4", "shape": [2], "data": b"\0" * 4}, "needs 8 bytes, got 4"),
    ({"dtype": "O", "shape": [1], "data": b"\0" * 8}, "unknown dtype"),
    ({"dtype": "f4", "shape": [-1], "data": b""}, "bad shape"),
    ({"dtype": "f4", "shape": "2", "data": b"\0" * 8}, "bad shape"),
    ({"dtype": "f4", "shape": [2], "data": "text"}, "no data bytes"),
    ({"dtype": "f4", "shape": [1] * 9, "data": b"\0" * 4}, "bad shape"),
])
def test_bad_tensors_are_rejected(spec, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_tensors({"t": spec}, max_elements=100)


def test_declared_element_count_is_bounded_before_allocation():
    # A shape claiming 2**40 elements must fail on the byte check, never allocate.
    with pytest.raises(RemoteProtocolError):
        decode_tensors({"t": {"dtype": "f4", "shape": [2**20, 2**20], "data": b"\0" * 8}},
                       max_elements=10)
    with pytest.raises(RemoteProtocolError, match="more than 3 elements"):
        decode_tensors(encode_tensors({"t": np.zeros(4, np.float32)}), max_elements=3)


def test_check_like_names_shapes_and_finiteness():
    ref = {"w": np.zeros((2, 3), np.float32)}
    check_like({"w": np.ones((2, 3), np.float32)}, ref)
    with pytest.raises(RemoteProtocolError, match="shape"):
        check_like({"w": np.ones((3, 2), np.float32)}, ref)
    with pytest.raises(RemoteProtocolError, match="missing"):
        check_like({"v": np.ones((2, 3), np.float32)}, ref)
    with pytest.raises(RemoteProtocolError, match="NaN"):
        check_like({"w": np.full((2, 3), np.nan, np.float32)}, ref)


# ---------------------------------------------------------------- chunking

@pytest.mark.parametrize("size", [1, 1000, 4096 - CHUNK_HEADER_RESERVE, 50_000])
def test_split_respects_the_size_limit_and_reassembles(size):
    payload = os.urandom(size)
    chunks = split(payload, "t1", chunk_size=4096)
    assert len(chunks) == chunk_count(size, 4096) == math.ceil(size / (4096 - 256))
    assert all(len(c) <= 4096 for c in chunks)
    assembler = Assembler(max_payload=10**6)
    results = [assembler.add("dev", c, 0.0) for c in chunks]
    assert results[:-1] == [None] * (len(chunks) - 1)
    assert results[-1] == ("t1", payload)
    assert assembler.pending_bytes() == 0


def test_reordered_and_duplicated_chunks_reassemble_once():
    payload = os.urandom(20_000)
    chunks = split(payload, "t1", chunk_size=1024)
    shuffled = chunks + chunks[:5]
    random.Random(1).shuffle(shuffled)
    assembler = Assembler(max_payload=10**6)
    done = [r for c in shuffled if (r := assembler.add("dev", c, 0.0)) is not None]
    # Duplicates after completion start a new partial transfer; they never complete it.
    assert done == [("t1", payload)]


def test_a_dropped_chunk_never_completes_and_expires():
    chunks = split(os.urandom(5000), "t1", chunk_size=1024)
    assembler = Assembler(max_payload=10**6, timeout_s=10)
    assert all(assembler.add("dev", c, 0.0) is None for c in chunks[1:])
    assert assembler.expire(5.0) == []
    assert assembler.expire(11.0) == [("dev", "t1")]
    assert assembler.pending_bytes() == 0


def _chunk(transfer="t", i=0, n=1, size=4, sha="0" * 64, data=b"abcd") -> bytes:
    return msgpack.packb({"v": 1, "kind": "chunk", "transfer": transfer, "i": i, "n": n,
                          "size": size, "sha256": sha, "data": data}, use_bin_type=True)


@pytest.mark.parametrize("message, reason", [
    (_chunk(i=1, n=1), "out of range"),
    (_chunk(n=0), "out of range"),
    (_chunk(size=10**9), "exceeds the limit"),
    (_chunk(sha="zz"), "bad sha256"),
    (_chunk(data=b""), "no data"),
    (_chunk(transfer=""), "bad transfer id"),
    (_chunk(i="0"), "must be integers"),
    (_chunk(), "sha256 of the reassembled payload"),
    (_chunk(size=8, n=1), "reassembled 4 bytes, declared 8"),
    (_chunk(size=3, n=1), "more bytes than the declared size"),
    (_chunk(size=2, n=3), "out of range|count exceeds"),
])
def test_malformed_chunks_are_rejected(message, reason):
    with pytest.raises(RemoteProtocolError, match=reason):
        Assembler(max_payload=10**6).add("dev", message, 0.0)


def test_a_chunk_that_disagrees_with_its_transfer_drops_it():
    chunks = split(os.urandom(3000), "t1", chunk_size=1024)
    assembler = Assembler(max_payload=10**6)
    assembler.add("dev", chunks[0], 0.0)
    bad = _chunk(transfer="t1", i=1, n=9, size=3000, data=b"x" * 10)
    with pytest.raises(RemoteProtocolError, match="disagrees") as info:
        assembler.add("dev", bad, 0.0)
    assert info.value.transfer == "t1"
    assert assembler.pending_bytes() == 0


def test_memory_per_source_is_bounded():
    assembler = Assembler(max_payload=10**6, max_transfers_per_source=2)
    for t in range(5):
        assembler.add("dev", split(os.urandom(3000), f"t{t}", 1024)[0], float(t))
    assert assembler.pending_bytes() <= 2 * 1024


def test_memory_across_sources_is_bounded_by_declared_sizes():
    assembler = Assembler(max_payload=3000, max_total_bytes=7000)
    for source in range(10):  # ten "devices" each start a 3000-byte transfer
        assembler.add(f"dev{source}", split(os.urandom(3000), "t", 1024)[0], float(source))
    assert assembler.reserved_bytes() <= 7000
    # the newest survive: the last source can still complete its transfer
    chunks = split(os.urandom(3000), "u", 1024)
    results = [assembler.add("dev9", c, 20.0) for c in chunks]
    assert results[-1] is not None


def test_split_refuses_nonsense():
    with pytest.raises(LocalProtocolError):
        split(b"", "t")
    with pytest.raises(LocalProtocolError):
        split(b"x", "t", chunk_size=100)


# ---------------------------------------------------------------- model transfer

def test_model_package_and_open():
    model = Model(version=7, tensors={"w": np.ones((3, 3), np.float32)}, arch={"k": "mlp"})
    manifest, chunks = package_model(model, chunk_size=512)
    assembler = Assembler(max_payload=10**6)
    done = [r for c in chunks if (r := assembler.add("agg", c, 0.0))]
    opened = open_model(manifest, done[0][1], max_elements=100)
    assert opened.version == 7 and opened.arch == {"k": "mlp"}
    np.testing.assert_array_equal(opened.tensors["w"], model.tensors["w"])
    with pytest.raises(RemoteProtocolError, match="does not match its manifest"):
        open_model(manifest, done[0][1][:-1] + b"\0", max_elements=100)


# ---------------------------------------------------------------- topics

def test_topics_follow_the_design():
    t = Topics("plant-7")
    assert t.model == "fedge/plant-7/model"
    assert t.model_chunk(3, 1) == "fedge/plant-7/model/3/1"
    assert t.update("d1") == "fedge/plant-7/update/d1"
    assert t.device_of("fedge/plant-7/status/d1") == "d1"


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "#", "x" * 65, "spa ce"])
def test_names_that_would_break_topics_are_refused(name):
    with pytest.raises(ValueError):
        Topics(name)
