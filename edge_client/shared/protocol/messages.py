"""The messages of the fedge protocol, as frozen dataclasses, and their wire encoding.

Every message is one MessagePack map with a protocol version `v` and a `kind`. Unknown
versions and kinds are refused with a reason, never guessed at. Decoding never
unpickles and bounds every size before it allocates.
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass, field
from typing import Any

import msgpack

from edge_client.shared.protocol.bounds import MAX_INT, check_plain, describe, is_int, is_number
from edge_client.shared.protocol.errors import (
    MAX_REASON,
    LocalProtocolError,
    RemoteProtocolError,
    cap_reason,
)
from edge_client.shared.protocol.tensors import Weights, decode_tensors, encode_tensors
from edge_client.shared.protocol.topics import check_name

PROTOCOL_VERSION = 1
DEFAULT_MAX_ELEMENTS = 50_000_000  # 200 MB of float32: a bound, not a target
MAX_SESSION = 32  # a status's session id
MAX_CHAIN = 64  # delta steps a manifest may list (the aggregator's keep_deltas)
# Per-field bounds of decoding (docs/protocol.md, "Decoding rules"); MAX_INT otherwise.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 2**20
MAX_SAMPLES = 2**40  # num_samples: a sum over many updates stays exact in a float64
MAX_CHUNK_SIZE = 256 * 2**20  # the aggregator's own chunk_size limit
MAX_CHECKIN_S = 366 * 86400.0  # an ack's next_checkin_s: a year
MAX_INVITED = 100_000  # devices one task may invite (secure aggregation's own limit)
MAX_METRICS = 64
MAX_SETTINGS = 32  # entries of a codec, dp or secagg map
MAX_ARCH_ITEMS = 10_000  # values in a model's arch description


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings the aggregator asks devices to use."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    prox_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("train: epochs and batch_size must be >= 1")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.prox_mu >= 0):
            raise ValueError("train: need lr > 0, 0 <= momentum < 1, prox_mu >= 0")


@dataclass(frozen=True)
class Task:
    """What the aggregator wants now; retained on the task topic."""

    task_id: str
    mode: str  # "sync" or "async"
    round: int
    model_version: int
    train: TrainConfig
    deadline: float | None = None  # unix time; updates after it are late (sync mode)
    invited: tuple[str, ...] | None = None  # None: every device may take part
    chunk_size: int = 65536
    done: bool = False  # the federation has finished; devices may stop
    codec: dict[str, Any] | None = None  # how to encode updates (codec config); None: dense
    dp: dict[str, Any] | None = None  # distributed DP: clip and noise (codecs.dp.DeviceDp)
    secagg: dict[str, Any] | None = None  # secure aggregation round (secagg.task.SecAggTask)

    def invites(self, device_id: str) -> bool:
        return self.invited is None or device_id in self.invited


@dataclass(frozen=True)
class Update:
    """One device's contribution: the delta from the global model it trained from."""

    device_id: str
    task_id: str
    nonce: str
    base_version: int
    num_samples: int
    tensors: Weights = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    codec: dict[str, Any] | None = None  # None: `tensors` holds the dense delta
    blob: bytes = field(default=b"", repr=False)  # the encoded delta when `codec` is set


@dataclass(frozen=True)
class Model:
    """A global model version: the blob whose chunks follow a manifest."""

    version: int
    tensors: Weights = field(repr=False)
    arch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelManifest:
    """Retained on the model topic: which model is current and how to fetch it."""

    version: int
    sha256: str
    size: int
    chunk_count: int
    created_at: float = 0.0
    delta: DeltaInfo | None = None  # a smaller way to get here from the previous version
    # The retained deltas, oldest first, the last leading to `version`: a device that
    # skipped versions applies them in turn. None: not sent (older aggregators).
    chain: tuple[DeltaInfo, ...] | None = None


@dataclass(frozen=True)
class DeltaInfo:
    """The change from `base_version`, encoded with `codec`, published beside the model.

    A device holding `base_version` adds the decoded delta, then checks that the result
    encodes to `model_sha256` (the manifest's sha256 for the last step): it gets the
    aggregator's model bit for bit, or falls back to the full model.
    """

    base_version: int
    sha256: str  # of the delta blob
    size: int
    chunk_count: int
    codec: dict[str, Any]
    model_sha256: str | None = None  # of the model it leads to; required in a chain

    @property
    def version(self) -> int:
        """The model version this delta leads to."""
        return self.base_version + 1


@dataclass(frozen=True)
class Ack:
    """The aggregator's answer to one update: stored (accepted, duplicate, late) or not."""

    status: str  # "accepted" | "duplicate" | "late" | "rejected"
    task_id: str = ""
    nonce: str = ""
    reason: str = ""
    next_checkin_s: float | None = None

    @property
    def final(self) -> bool:
        """Every status is final: the device may drop the update from its outbox."""
        return self.status in ACK_STATUSES


ACK_STATUSES = ("accepted", "duplicate", "late", "rejected")


@dataclass(frozen=True)
class Status:
    """A device's presence and eligibility; retained, and its last will says offline."""

    device_id: str
    online: bool
    eligible: bool = True
    reason: str = ""
    model_version: int | None = None
    time: float = 0.0
    battery_pct: float | None = None
    # A random id per run of the device: two clients with one device id show as two
    # sessions taking turns. "" from older devices.
    session: str = ""


Message = Task | Update | Model | ModelManifest | Ack | Status


# ---------------------------------------------------------------- encoding


def encode(message: Message) -> bytes:
    """Serialize a message to bytes for one MQTT payload or one chunked blob."""
    body = _ENCODERS.get(type(message))
    if body is None:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}")
    kind, to_map = body
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": kind, **to_map(message)},
                         use_bin_type=True)


def _task_map(t: Task) -> dict[str, Any]:
    return {
        "task_id": t.task_id, "mode": t.mode, "round": t.round,
        "model_version": t.model_version, "deadline": t.deadline,
        "invited": list(t.invited) if t.invited is not None else None,
        "chunk_size": t.chunk_size, "done": t.done, "codec": t.codec, "dp": t.dp,
        "secagg": t.secagg,
        "train": {"epochs": t.train.epochs, "batch_size": t.train.batch_size,
                  "lr": t.train.lr, "momentum": t.train.momentum,
                  "prox_mu": t.train.prox_mu},
    }


def _update_map(u: Update) -> dict[str, Any]:
    return {
        "device_id": u.device_id, "task_id": u.task_id, "nonce": u.nonce,
        "base_version": u.base_version, "num_samples": u.num_samples,
        "metrics": {k: float(v) for k, v in u.metrics.items()},
        "created_at": u.created_at, "codec": u.codec, "blob": u.blob,
        "tensors": encode_tensors(u.tensors),
    }


def _model_map(m: Model) -> dict[str, Any]:
    return {"version": m.version, "arch": m.arch, "tensors": encode_tensors(m.tensors)}


def _manifest_map(m: ModelManifest) -> dict[str, Any]:
    delta = None if m.delta is None else _delta_map(m.delta)
    fields = {"version": m.version, "sha256": m.sha256, "size": m.size,
              "chunk_count": m.chunk_count, "created_at": m.created_at, "delta": delta}
    if m.chain is not None:  # left out when absent, so old manifests encode as before
        fields["chain"] = [_delta_map(d) for d in m.chain]
    return fields


def _delta_map(d: DeltaInfo) -> dict[str, Any]:
    fields = {"base_version": d.base_version, "sha256": d.sha256, "size": d.size,
              "chunk_count": d.chunk_count, "codec": d.codec}
    if d.model_sha256 is not None:
        fields["model_sha256"] = d.model_sha256
    return fields


def _ack_map(a: Ack) -> dict[str, Any]:
    # The reason is capped here, once for every sender: an ack always decodes.
    return {"status": a.status, "task_id": a.task_id, "nonce": a.nonce,
            "reason": cap_reason(a.reason), "next_checkin_s": a.next_checkin_s}


def _status_map(s: Status) -> dict[str, Any]:
    return {"device_id": s.device_id, "online": s.online, "eligible": s.eligible,
            "reason": cap_reason(s.reason), "model_version": s.model_version, "time": s.time,
            "battery_pct": s.battery_pct, "session": s.session}


_ENCODERS: dict[type, tuple[str, Any]] = {
    Task: ("task", _task_map),
    Update: ("update", _update_map),
    Model: ("model", _model_map),
    ModelManifest: ("manifest", _manifest_map),
    Ack: ("ack", _ack_map),
    Status: ("status", _status_map),
}


# ---------------------------------------------------------------- decoding


def unpack_map(data: bytes) -> dict[str, Any]:
    """Parse untrusted bytes into a map; msgpack bounds every length by len(data)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError("payload is not bytes")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same
        raise RemoteProtocolError(f"payload is not valid MessagePack: "
                                  f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("payload is not a map")
    version = obj.get("v")
    if not is_int(version) or version != PROTOCOL_VERSION:  # True == 1, 1.0 == 1: not ours
        raise RemoteProtocolError(f"unsupported protocol version {describe(version)} "
                                  f"(this side speaks {PROTOCOL_VERSION})")
    return obj


def decode(data: bytes, expect: type | None = None,
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> Message:
    """Decode and validate one message; `expect` refuses any other kind.

    Total: whatever `data` is, the result is a message whose every field is in range, or
    a RemoteProtocolError with a reason; never any other exception.
    """
    obj = unpack_map(data)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _DECODERS:
        raise RemoteProtocolError(f"unknown message kind {describe(kind)}")
    cls, from_map = _DECODERS[kind]
    if expect is not None and cls is not expect:
        raise RemoteProtocolError(f"expected a message of kind {_kind_of(expect)!r}, "
                                  f"got {kind!r}")
    return from_map(_Fields(obj, kind), max_elements)


def _kind_of(cls: type) -> str:
    return next(kind for kind, (c, _) in _DECODERS.items() if c is cls)


class _Fields:
    """Typed, bounded field access that turns a missing, mistyped or out-of-range field
    into a clear reason (docs/protocol.md, "Decoding rules").

    Its methods are named after the types they read, so below them the annotations spell
    the types `builtins.str` etc."""

    def __init__(self, obj: dict[str, Any], kind: str) -> None:
        self.obj = obj
        self.kind = kind

    def fail(self, name: str, problem: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.kind}: field {name!r} {problem}")

    def _get(self, name: str, types: tuple[type, ...], optional: bool) -> Any:
        if name not in self.obj or self.obj[name] is None:
            if optional:
                return None
            raise RemoteProtocolError(f"{self.kind}: missing field {name!r}")
        value = self.obj[name]
        if isinstance(value, bool) and bool not in types:
            raise self.fail(name, "has the wrong type")
        if not isinstance(value, types):
            raise self.fail(name, "has the wrong type")
        return value

    def str(self, name: str, optional: bool = False, max_len: int = 256) -> Any:
        value = self._get(name, (str,), optional)
        if value is not None and len(value) > max_len:
            raise self.fail(name, f"is longer than {max_len} characters")
        return value

    def device(self, name: builtins.str) -> builtins.str:
        """A device id: what topic levels allow (topics.check_name)."""
        return self.check_device(self._get(name, (str,), optional=False), name)

    def check_device(self, value: Any, name: builtins.str) -> builtins.str:
        try:
            if not isinstance(value, str):
                raise ValueError("not text")
            return check_name("device", value)
        except ValueError:
            raise self.fail(name, f"holds {describe(value)}, not a device id (1-64 "
                                  "characters of A-Z a-z 0-9 _ . -)") from None

    def int(self, name: builtins.str, optional: bool = False, minimum: int = 0,
            maximum: int = MAX_INT) -> Any:
        value = self._get(name, (int,), optional)
        if value is not None and value < minimum:
            raise self.fail(name, f"must be >= {minimum}, not {describe(value)}")
        if value is not None and value > maximum:
            raise self.fail(name, f"must be <= {maximum}, not {describe(value)}")
        return value

    def float(self, name: builtins.str, optional: bool = False,
              minimum: builtins.float = -math.inf, maximum: builtins.float = math.inf) -> Any:
        value = self._get(name, (int, float), optional)
        if value is None:
            return None
        value = float(value)  # msgpack ints are at most 64 bits: always convertible
        if not math.isfinite(value):
            raise self.fail(name, "must be finite")
        if not minimum <= value <= maximum:
            raise self.fail(name, f"must be in [{minimum:g}, {maximum:g}], not {value:g}")
        return value

    def bool(self, name: builtins.str) -> builtins.bool:
        return bool(self._get(name, (bool,), optional=False))

    def bytes(self, name: builtins.str) -> builtins.bytes:
        value = self._get(name, (bytes,), optional=True)
        return b"" if value is None else value

    def map(self, name: builtins.str, optional: builtins.bool = False,
            max_items: builtins.int = MAX_SETTINGS, max_depth: builtins.int = 1) -> Any:
        """A settings map (codec, dp, secagg, arch): plain values only, bounded in size,
        depth and key type; what its keys mean is checked where it is used."""
        value = self._get(name, (dict,), optional)
        if value is not None:
            check_plain(value, f"{self.kind}.{name}", max_depth, max_items + 1)
        return value

    def raw_map(self, name: builtins.str, optional: builtins.bool = False) -> Any:
        """A map whose contents the caller checks itself (tensors, metrics, a delta)."""
        return self._get(name, (dict,), optional)

    def list(self, name: builtins.str, optional: builtins.bool = False,
             max_len: builtins.int = MAX_INVITED) -> Any:
        value = self._get(name, (list,), optional)
        if value is not None and len(value) > max_len:
            raise self.fail(name, f"has more than {max_len} entries")
        return value

    def sub(self, name: builtins.str) -> _Fields:
        return _Fields(self.raw_map(name), f"{self.kind}.{name}")


def _task_from(f: _Fields, _max: int) -> Task:
    mode = f.str("mode")
    if mode not in ("sync", "async"):
        raise RemoteProtocolError(f"task: unknown mode {describe(mode)}")
    invited = f.list("invited", optional=True)
    if invited is not None:
        invited = tuple(f.check_device(d, "invited") for d in invited)
    t = f.sub("train")
    try:
        train = TrainConfig(epochs=t.int("epochs", maximum=MAX_EPOCHS),
                            batch_size=t.int("batch_size", maximum=MAX_BATCH_SIZE),
                            lr=t.float("lr"), momentum=t.float("momentum"),
                            prox_mu=t.float("prox_mu"))
    except ValueError as exc:
        raise RemoteProtocolError(f"task: {exc}") from None
    return Task(task_id=f.str("task_id"), mode=mode, round=f.int("round"),
                model_version=f.int("model_version"), train=train,
                deadline=f.float("deadline", optional=True), invited=invited,
                chunk_size=f.int("chunk_size", minimum=512, maximum=MAX_CHUNK_SIZE),
                done=f.bool("done"), codec=f.map("codec", optional=True),
                dp=f.map("dp", optional=True), secagg=f.map("secagg", optional=True))


def _update_from(f: _Fields, max_elements: int) -> Update:
    metrics = _metrics(f)
    codec = f.map("codec", optional=True)
    blob = f.bytes("blob")
    tensors = decode_tensors(f.raw_map("tensors"), max_elements)
    if (codec is None) != (not blob) or (codec is not None and tensors):
        raise RemoteProtocolError("update: send either dense tensors, or a codec and a blob")
    return Update(device_id=f.device("device_id"), task_id=f.str("task_id"),
                  nonce=f.str("nonce", max_len=64), base_version=f.int("base_version"),
                  num_samples=f.int("num_samples", minimum=1, maximum=MAX_SAMPLES),
                  tensors=tensors, metrics=metrics, created_at=f.float("created_at"),
                  codec=codec, blob=blob)


def _metrics(f: _Fields) -> dict[str, float]:
    """Names to numbers; NaN stands for "not measured" (a trainer without accuracy), but
    an infinity or an integer beyond 2**53 is refused."""
    metrics = f.raw_map("metrics")
    if len(metrics) > MAX_METRICS:
        raise f.fail("metrics", f"has more than {MAX_METRICS} entries")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not (isinstance(key, str) and 0 < len(key) <= 64 and is_number(value)):
            raise RemoteProtocolError("update: metrics must map names to numbers")
        if abs(value) > MAX_INT and not math.isnan(value):
            raise RemoteProtocolError(f"update: metric {key!r} is out of range")
        out[key] = float(value)
    return out


def _model_from(f: _Fields, max_elements: int) -> Model:
    return Model(version=f.int("version"),
                 arch=f.map("arch", max_items=MAX_ARCH_ITEMS, max_depth=6),
                 tensors=decode_tensors(f.raw_map("tensors"), max_elements))


def _manifest_from(f: _Fields, _max: int) -> ModelManifest:
    delta = None
    if f.raw_map("delta", optional=True) is not None:
        delta = _delta_from(f.sub("delta"), chained=False)
    version = f.int("version")
    chain = None
    if f.list("chain", optional=True) is not None:  # _chain_from bounds it to MAX_CHAIN
        chain = _chain_from(f.list("chain"), version, delta)
    return ModelManifest(version=version, sha256=f.str("sha256", max_len=64),
                         size=f.int("size", minimum=1), chunk_count=f.int("chunk_count", minimum=1),
                         created_at=f.float("created_at"), delta=delta, chain=chain)


def _delta_from(d: _Fields, chained: bool) -> DeltaInfo:
    return DeltaInfo(base_version=d.int("base_version"), sha256=d.str("sha256", max_len=64),
                     size=d.int("size", minimum=1), chunk_count=d.int("chunk_count", minimum=1),
                     codec=d.map("codec"),
                     model_sha256=d.str("model_sha256", optional=not chained, max_len=64))


def _chain_from(entries: list, version: int, delta: DeltaInfo | None) -> tuple[DeltaInfo, ...]:
    """Every step checked: bounded count, consecutive versions ending at `version`."""
    if not 1 <= len(entries) <= MAX_CHAIN:
        raise RemoteProtocolError(f"manifest: chain must have 1 to {MAX_CHAIN} entries, "
                                  f"not {len(entries)}")
    if not all(isinstance(e, dict) for e in entries):
        raise RemoteProtocolError("manifest: chain entries must be maps")
    chain = tuple(_delta_from(_Fields(e, f"manifest.chain[{i}]"), chained=True)
                  for i, e in enumerate(entries))
    first = version - len(chain)
    for i, step in enumerate(chain):
        if step.base_version != first + i:
            raise RemoteProtocolError(f"manifest: chain[{i}] has base_version "
                                      f"{step.base_version}, expected {first + i} (the steps "
                                      f"must be consecutive and end at version {version})")
    if delta is not None and (delta.base_version, delta.sha256, delta.size) != (
            chain[-1].base_version, chain[-1].sha256, chain[-1].size):
        raise RemoteProtocolError("manifest: delta and the chain's last step disagree")
    return chain


def _ack_from(f: _Fields, _max: int) -> Ack:
    status = f.str("status")
    if status not in ACK_STATUSES:
        raise RemoteProtocolError(f"ack: unknown status {describe(status)}")
    return Ack(status=status, task_id=f.str("task_id"), nonce=f.str("nonce", max_len=64),
               reason=f.str("reason", max_len=MAX_REASON),
               next_checkin_s=f.float("next_checkin_s", optional=True, minimum=0,
                                      maximum=MAX_CHECKIN_S))


def _status_from(f: _Fields, _max: int) -> Status:
    return Status(device_id=f.device("device_id"), online=f.bool("online"),
                  eligible=f.bool("eligible"), reason=f.str("reason", max_len=MAX_REASON),
                  model_version=f.int("model_version", optional=True),
                  time=f.float("time"), battery_pct=f.float("battery_pct", optional=True),
                  session=f.str("session", optional=True, max_len=MAX_SESSION) or "")


_DECODERS: dict[str, tuple[type, Any]] = {
    "task": (Task, _task_from),
    "update": (Update, _update_from),
    "model": (Model, _model_from),
    "manifest": (ModelManifest, _manifest_from),
    "ack": (Ack, _ack_from),
    "status": (Status, _status_from),
}
