"""The wire encoding of the fedge protocol's messages (message_types.py).

Every message is one MessagePack map with a protocol version `v` and a `kind`. Unknown
versions and kinds are refused with a reason, never guessed at. Decoding never
unpickles and bounds every size before it allocates.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import msgpack

from edge_client.shared.protocol.bounds import (  # noqa: F401  (re-exported)
    DEFAULT_MAX_ELEMENTS,
    MAX_CHAIN,
    describe,
    is_int,
)
from edge_client.shared.protocol.decoding import DECODERS, TASK_VERSION
from edge_client.shared.protocol.errors import (
    LocalProtocolError,
    RemoteProtocolError,
    cap_reason,
)
from edge_client.shared.protocol.fields import Fields
from edge_client.shared.protocol.lean_update import LEAN_UPDATE_VERSION, lean_update_map
from edge_client.shared.protocol.message_types import (
    Ack,
    DeltaInfo,
    Invitation,
    Message,
    Model,
    ModelManifest,
    Status,
    Task,
    TrainConfig,
    Update,
)
from edge_client.shared.protocol.states import ACK_STATUSES, AckStatus  # noqa: F401
from edge_client.shared.protocol.tensors import encode_tensors

PROTOCOL_VERSION = 1
# Tasks are at TASK_VERSION (2): they may invite by cohort (cohort.py) instead of listing
# every invited device, and a device that does not know cohorts must refuse them, not
# train for a task that may not invite it. Version 1 tasks (older aggregators) decode.
# Updates are at LEAN_UPDATE_VERSION (2): the same fields in a shorter envelope
# (lean_update.py); version 1 updates (older devices) decode to the same Update.
VERSIONS = {"task": (1, TASK_VERSION), "update": (1, LEAN_UPDATE_VERSION)}
# per kind; every other kind: (PROTOCOL_VERSION,)
KNOWN_VERSIONS = tuple(sorted({PROTOCOL_VERSION, TASK_VERSION, LEAN_UPDATE_VERSION}))
SENT_VERSIONS = {"task": TASK_VERSION, "update": LEAN_UPDATE_VERSION}

M = TypeVar("M", Task, Update, Model, ModelManifest, Ack, Status, Invitation)


# ---------------------------------------------------------------- encoding


def encode(message: Message) -> bytes:
    """Serialize a message to bytes for one MQTT payload or one chunked blob."""
    body = _ENCODERS.get(type(message))
    if body is None:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}")
    kind, to_map = body
    version = SENT_VERSIONS.get(kind, PROTOCOL_VERSION)
    return msgpack.packb({"v": version, "kind": kind, **to_map(message)}, use_bin_type=True)


def _task_map(t: Task) -> dict[str, Any]:
    return {
        "task_id": t.task_id, "mode": t.mode, "round": t.round,
        "model_version": t.model_version, "deadline": t.deadline,
        "invited": list(t.invited) if t.invited is not None else None,
        "chunk_size": t.chunk_size, "done": t.done, "codec": t.codec, "dp": t.dp,
        "secagg": t.secagg, "cohort": None if t.cohort is None else t.cohort.to_wire(),
        **_optional(personal=t.personal, clusters=t.clusters),
        **({"update_v": t.update_version} if t.update_version > 1 else {}),
        "train": {"epochs": t.train.epochs, "batch_size": t.train.batch_size,
                  "lr": t.train.lr, "momentum": t.train.momentum,
                  "prox_mu": t.train.prox_mu, **_partial_work_map(t.train)},
    }


def _partial_work_map(train: TrainConfig) -> dict[str, Any]:
    """Sent only when set, so tasks without them stay byte for byte as they were."""
    out: dict[str, Any] = {}
    if train.partial_work != "off":
        out["partial_work"] = train.partial_work
    if train.max_batches:
        out["max_batches"] = train.max_batches
    return out


def update_map_v1(u: Update) -> dict[str, Any]:
    """The version 1 update fields: what devices before the lean envelope sent (kept to
    test that aggregators still read them, and for `encode_update_v1`)."""
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
    return {"status": a.status.value, "task_id": a.task_id, "nonce": a.nonce,
            "reason": cap_reason(a.reason), "next_checkin_s": a.next_checkin_s}


def _status_map(s: Status) -> dict[str, Any]:
    return {"device_id": s.device_id, "online": s.online, "eligible": s.eligible,
            "reason": cap_reason(s.reason), "model_version": s.model_version, "time": s.time,
            "battery_pct": s.battery_pct, "session": s.session,
            **({} if s.drift is None else {"drift": s.drift.to_wire()}),  # left out: as before
            **_optional(global_accuracy=s.global_accuracy,
                        personal_accuracy=s.personal_accuracy, cluster=s.cluster)}


def _optional(**fields: Any) -> dict[str, Any]:
    """The additive fields that are set: messages without them stay as they were."""
    return {k: v for k, v in fields.items() if v is not None}


def _invitation_map(i: Invitation) -> dict[str, Any]:
    return {"task_id": i.task_id, "device_id": i.device_id}


_ENCODERS: dict[type, tuple[str, Any]] = {
    Task: ("task", _task_map),
    Update: ("update", lean_update_map),
    Model: ("model", _model_map),
    ModelManifest: ("manifest", _manifest_map),
    Ack: ("ack", _ack_map),
    Status: ("status", _status_map),
    Invitation: ("invitation", _invitation_map),
}


def encode_update(update: Update, task: Task) -> bytes:
    """An update in the newest envelope both sides read: version 2 when the task says its
    aggregator reads it, else version 1."""
    return encode(update) if task.update_version >= LEAN_UPDATE_VERSION else \
        encode_update_v1(update)


def encode_update_v1(update: Update) -> bytes:
    """An update in the version 1 envelope, as devices before version 2 sent it."""
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": "update", **update_map_v1(update)},
                         use_bin_type=True)


# ---------------------------------------------------------------- decoding


def unpack_map(data: bytes, versions: tuple[int, ...] = (PROTOCOL_VERSION,)) -> dict[str, Any]:
    """Parse untrusted bytes into a map; msgpack bounds every length by len(data).
    `versions`: the protocol versions accepted (the kind's are checked by `decode`)."""
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
    if not is_int(version) or version not in versions:  # True == 1, 1.0 == 1: not ours
        raise RemoteProtocolError(f"unsupported protocol version {describe(version)} "
                                  f"(this side speaks {_spoken(versions)})")
    return obj


def _spoken(versions: tuple[int, ...]) -> str:
    return " or ".join(str(v) for v in versions)


@overload
def decode(data: bytes, expect: None = None,
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> Message: ...


@overload
def decode(data: bytes, expect: type[M],
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> M: ...


def decode(data: bytes, expect: type | None = None,
           max_elements: int = DEFAULT_MAX_ELEMENTS) -> Message:
    """Decode and validate one message; `expect` refuses any other kind, and then the
    result is typed as that kind.

    Total: whatever `data` is, the result is a message whose every field is in range, or
    a RemoteProtocolError with a reason; never any other exception.
    """
    obj = unpack_map(data, KNOWN_VERSIONS)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in DECODERS:
        raise RemoteProtocolError(f"unknown message kind {describe(kind)}")
    versions = VERSIONS.get(kind, (PROTOCOL_VERSION,))
    if obj["v"] not in versions:
        raise RemoteProtocolError(f"unsupported protocol version {obj['v']} for a {kind} "
                                  f"(this side speaks {_spoken(versions)})")
    cls, from_map = DECODERS[kind]
    if expect is not None and cls is not expect:
        raise RemoteProtocolError(f"expected a message of kind {_kind_of(expect)!r}, "
                                  f"got {kind!r}")
    message: Message = from_map(Fields(obj, kind), max_elements)
    return message


def _kind_of(cls: type) -> str:
    return next(kind for kind, (c, _) in DECODERS.items() if c is cls)
