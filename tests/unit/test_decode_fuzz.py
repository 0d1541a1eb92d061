"""Fuzz every decoder with mutated valid messages: only RemoteProtocolError may escape.

Seeded (tests/mutations.py), so a failure names its case and reproduces. Every message
type of the protocol, chunks, sealed envelopes (open and verify), the secure-aggregation
messages, the task's settings maps and the aggregator's update ingest (codec blobs
included) get a few hundred hostile variants each.
"""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest

from aggregator.ingest import open_update
from aggregator.secagg.server import SecAggServer
from aggregator.secagg.simulation import run_round
from edge_client.shared.codecs import CodecConfig, encode_vector
from edge_client.shared.codecs.dp import DeviceDp
from edge_client.shared.identity import Identity, parse_public_key
from edge_client.shared.protocol import RemoteProtocolError, decode, encode, split
from edge_client.shared.protocol.chunking import decode_chunk
from edge_client.shared.protocol.errors import MAX_REASON
from edge_client.shared.protocol.seeds import update_seed
from edge_client.shared.protocol.signing import is_signed, open_envelope, seal, verify_envelope
from edge_client.shared.secagg import Phase, RoundAborted, SecAggClient
from edge_client.shared.secagg.graph import GraphParams
from edge_client.shared.secagg.keys import CIPHERTEXT_SIZE
from edge_client.shared.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    NeighbourKeys,
    PeerKeys,
    RevealedShare,
    RoundSetup,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
    decode_message,
)
from edge_client.shared.secagg.task import SecAggTask
from tests.mutations import Mutator
from tests.unit.test_decode_total import MESSAGES, UPDATE, WEIGHTS

CASES_PER_TARGET = 250
SIGNER = Identity.generate()
SECAGG = [
    RoundSetup("r1", ("dev-1", "dev-2", "dev-3"), 10, 32, 2, 2, b"s" * 32),
    AdvertiseKeys("r1", "dev-1", b"c" * 32, b"s" * 32, b"h" * 32),
    NeighbourKeys("r1", "dev-1", (PeerKeys("dev-2", b"c" * 32, b"s" * 32),)),
    ShareKeys("r1", "dev-1", (EncryptedShare("dev-1", "dev-2", b"x" * CIPHERTEXT_SIZE),)),
    ShareDelivery("r1", "dev-2", (EncryptedShare("dev-1", "dev-2", b"x" * CIPHERTEXT_SIZE),)),
    MaskedInput("r1", "dev-1", b"m" * 40),
    UnmaskRequest("r1", "dev-1", ("dev-1", "dev-2"), ("dev-3",)),
    UnmaskResponse("r1", "dev-1", (RevealedShare("dev-2", b"b" * 16),),
                   (RevealedShare("dev-3", b"k" * 32),)),
]


def _compressed_update() -> bytes:
    codec = CodecConfig(sparsify="topk", fraction=0.5, quantize="q8")
    vector = np.linspace(-1, 1, 9).astype(np.float32)
    blob = encode_vector(vector, codec, update_seed(UPDATE.task_id, UPDATE.device_id),
                         np.random.default_rng(0)).blob
    return encode(dataclasses.replace(UPDATE, tensors={}, codec=codec.to_wire(), blob=blob))


def _settings(decode_map):
    """A decoder of a task's settings map, fed the map of a mutated task."""
    def run(data: bytes) -> None:
        try:
            raw = msgpack.unpackb(data, raw=False)
        except Exception:
            return
        decode_map(raw)
    return run


def _expecting(cls: type):
    return lambda data: decode(data, expect=cls)


def _open_and_verify(data: bytes) -> None:
    is_signed(data)  # never raises
    verify_envelope(open_envelope(data), parse_public_key(SIGNER.public_text))


def _targets() -> list[tuple[str, bytes, object]]:
    targets = [(kind, encode(message), decode) for kind, message in MESSAGES.items()]
    for kind, message in MESSAGES.items():  # the kind the caller expects, as the loops do
        targets.append((f"{kind} expected", encode(message), _expecting(type(message))))
    targets += [
        ("chunk", split(encode(UPDATE), "t" * 32, 300)[1], decode_chunk),
        ("sealed", seal(encode(MESSAGES["ack"]), SIGNER), _open_and_verify),
        ("ingest dense", encode(UPDATE), lambda data: open_update(data, WEIGHTS)),
        ("ingest compressed", _compressed_update(),
         lambda data: open_update(data, {"w": np.zeros(9, np.float32)})),
        ("codec settings", msgpack_map(CodecConfig().to_wire()), _settings(CodecConfig.from_wire)),
        ("dp settings", msgpack_map(DeviceDp(1.0, 0.1).to_wire()), _settings(DeviceDp.from_wire)),
        ("secagg settings", msgpack_map(SecAggTask(
            b"r" * 32, 10, 10, 32, 4, 2, 1.0, 100.0).to_wire()), _settings(SecAggTask.from_wire)),
    ]
    targets += [(m.KIND, m.to_bytes(), decode_message) for m in SECAGG]
    return targets


def msgpack_map(raw: dict) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


TARGETS = _targets()


def test_the_valid_originals_decode():
    for _name, valid, run in TARGETS:
        run(valid)  # a fuzz case that fails only because the original was bad proves nothing


@pytest.mark.parametrize("name, valid, run", TARGETS, ids=[t[0] for t in TARGETS])
def test_mutated_messages_raise_only_protocol_errors(name, valid, run):
    mutator = Mutator(seed=sum(map(ord, name)))
    refused = 0
    for case in range(CASES_PER_TARGET):
        data = mutator.mutate(valid)
        try:
            run(data)
        except RemoteProtocolError as exc:
            refused += 1
            assert isinstance(exc.reason, str) and 0 < len(exc.reason) <= MAX_REASON
        except Exception as exc:  # pragma: no cover - the failure we look for
            pytest.fail(f"{name} case {case}: {type(exc).__name__}: {exc} for {data[:200]!r}")
    assert refused > CASES_PER_TARGET // 3  # the mutations do reach the checks


def test_the_secure_aggregation_state_machines_survive_tampered_messages():
    """Whole rounds (4 devices) where one message, either way, is mutated in transit:
    the clients and the server refuse it (BadSecAggMessage) or the round aborts
    (RoundAborted), never another exception."""
    mutator = Mutator(seed=42)
    outcomes = {"finished": 0, "aborted": 0}
    for case in range(200):
        inputs = {f"dev-{i}": np.arange(8, dtype=np.int64) * i for i in range(4)}
        server = SecAggServer("r-1", list(inputs), 8, bits=32,
                              params=GraphParams.complete(4), round_seed=bytes(32))
        clients = {u: SecAggClient(u, "r-1", lambda x=x: x) for u, x in inputs.items()}
        target = (mutator.rng.choice(["down", "up"]), mutator.rng.choice(sorted(inputs)),
                  mutator.rng.choice(list(Phase)[:4]))

        def tamper(direction, device, phase, data, target=target):
            return mutator.mutate(data) if (direction, device, phase) == target else data

        try:
            run_round(server, clients, tamper=tamper)
            outcomes["finished"] += 1
        except RoundAborted:
            outcomes["aborted"] += 1
        except Exception as exc:  # pragma: no cover - the failure we look for
            pytest.fail(f"round {case} ({target}): {type(exc).__name__}: {exc}")
    assert outcomes["finished"] > 0
