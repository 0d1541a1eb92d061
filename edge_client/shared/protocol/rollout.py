"""The two messages of staged rollout (docs/lifecycle.md, docs/protocol.md).

`Rollout` (retained, signed by the aggregator, on `fedge/<fed>/rollout`) says which
version devices serve (production), which candidate is under canary evaluation and by
whom. `CanaryReport` (signed by the device, on `fedge/<fed>/canary/<device>`) carries
one canary device's figures for candidate against production on its own held-out data:
counts and averages, never samples or labels.

They are kept out of the core message table (messages.py) so that a device or an
aggregator that does not speak rollout is unchanged; both are MessagePack maps with the
same `v` and `kind` rules and bounded decoding.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import msgpack

from edge_client.shared.protocol.bounds import MAX_INVITED
from edge_client.shared.protocol.errors import RemoteProtocolError
from edge_client.shared.protocol.fields import Fields
from edge_client.shared.protocol.messages import PROTOCOL_VERSION, unpack_map

MAX_ROLLED_BACK = 64  # versions a Rollout lists as rolled back (the newest ones)


@dataclass(frozen=True)
class Rollout:
    production: int  # the version every device serves
    candidate: int | None = None  # under canary evaluation now, if any
    canaries: tuple[str, ...] = ()  # the devices that evaluate it
    rolled_back: tuple[int, ...] = ()  # versions no device may serve


@dataclass(frozen=True)
class CanaryReport:
    device_id: str
    candidate: int
    production: int
    samples: int  # held-out examples evaluated
    candidate_accuracy: float
    production_accuracy: float
    candidate_loss: float | None  # None: the device's trainer measures no loss
    production_loss: float | None
    agreement: float | None  # share of examples where both predict the same class
    time: float  # unix time on the device


def canary_rank(device: str, version: int) -> bytes:
    """A device's place in the canary draw for `version`: reshuffled per version,
    the same on every run and after a restart."""
    return hashlib.sha256(f"fedge-canary:{version}:{device}".encode()).digest()


def pick_canaries(devices: list[str], version: int, fraction: float) -> tuple[str, ...]:
    """The first ceil(fraction * n) devices by hash(device, version), at least one."""
    if fraction <= 0 or not devices:
        return ()
    wanted = max(1, min(len(devices), math.ceil(fraction * len(devices))))
    return tuple(sorted(sorted(set(devices), key=lambda d: canary_rank(d, version))[:wanted]))


def encode_rollout(r: Rollout) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": "rollout",
                          "production": r.production, "candidate": r.candidate,
                          "canaries": list(r.canaries), "rolled_back": list(r.rolled_back)},
                         use_bin_type=True)


def decode_rollout(data: bytes) -> Rollout:
    f = _fields(data, "rollout")
    canaries = f.list("canaries", max_len=MAX_INVITED)
    rolled = f.list("rolled_back", max_len=MAX_ROLLED_BACK)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rolled):
        raise f.fail("rolled_back", "must hold version numbers")
    return Rollout(production=f.int("production"), candidate=f.int("candidate", optional=True),
                   canaries=tuple(f.check_device(d, "canaries") for d in canaries),
                   rolled_back=tuple(rolled))


def encode_report(r: CanaryReport) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": "canary", "device_id": r.device_id,
                          "candidate": r.candidate, "production": r.production,
                          "samples": r.samples, "candidate_accuracy": r.candidate_accuracy,
                          "production_accuracy": r.production_accuracy,
                          "candidate_loss": r.candidate_loss,
                          "production_loss": r.production_loss, "agreement": r.agreement,
                          "time": r.time}, use_bin_type=True)


def decode_report(data: bytes) -> CanaryReport:
    f = _fields(data, "canary")
    return CanaryReport(
        device_id=f.device("device_id"), candidate=f.int("candidate"),
        production=f.int("production"), samples=f.int("samples", minimum=1),
        candidate_accuracy=f.float("candidate_accuracy", minimum=0.0, maximum=1.0),
        production_accuracy=f.float("production_accuracy", minimum=0.0, maximum=1.0),
        candidate_loss=f.float("candidate_loss", optional=True, minimum=0.0),
        production_loss=f.float("production_loss", optional=True, minimum=0.0),
        agreement=f.float("agreement", optional=True, minimum=0.0, maximum=1.0),
        time=f.float("time"))


def _fields(data: bytes, kind: str) -> Fields:
    obj = unpack_map(data)
    if obj.get("kind") != kind:
        raise RemoteProtocolError(f"expected a message of kind {kind!r}, got "
                                  f"{str(obj.get('kind'))[:40]!r}")
    return Fields(obj, kind)
