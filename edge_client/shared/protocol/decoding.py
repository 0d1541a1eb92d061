"""Decoding each kind of message from its map: every field checked and bounded
(docs/protocol.md, "Decoding rules"); a refusal is a RemoteProtocolError with a reason."""

from __future__ import annotations

import math
from typing import Any

from edge_client.shared.protocol.bounds import (
    MAX_ARCH_ITEMS,
    MAX_BATCH_SIZE,
    MAX_CHAIN,
    MAX_CHECKIN_S,
    MAX_CHUNK_SIZE,
    MAX_CLUSTERS,
    MAX_EPOCHS,
    MAX_INT,
    MAX_METRICS,
    MAX_SAMPLES,
    MAX_SESSION,
    describe,
    is_number,
)
from edge_client.shared.protocol.cohort import EVERYONE, Cohort
from edge_client.shared.protocol.drift import drift_from
from edge_client.shared.protocol.errors import MAX_REASON, RemoteProtocolError
from edge_client.shared.protocol.fields import Fields
from edge_client.shared.protocol.lean_update import LEAN_UPDATE_VERSION, lean_update_from
from edge_client.shared.protocol.message_types import (
    Ack,
    DeltaInfo,
    Invitation,
    Model,
    ModelManifest,
    Status,
    Task,
    TrainConfig,
    Update,
)
from edge_client.shared.protocol.states import ACK_STATUSES, AckStatus, RoundMode
from edge_client.shared.protocol.tensors import decode_tensors

ROUND_MODES = tuple(m.value for m in RoundMode)
TASK_VERSION = 2  # tasks that may carry a cohort (messages.py)


def _task_from(f: Fields, _max: int) -> Task:
    mode = f.str("mode")
    if mode not in ROUND_MODES:
        raise RemoteProtocolError(f"task: unknown mode {describe(mode)}")
    invited = f.list("invited", optional=True)
    if invited is not None:
        invited = tuple(f.check_device(d, "invited") for d in invited)
    cohort = _cohort_from(f) if f.obj.get("v") == TASK_VERSION else None
    t = f.sub("train")
    try:
        train = TrainConfig(epochs=t.int("epochs", maximum=MAX_EPOCHS),
                            batch_size=t.int("batch_size", maximum=MAX_BATCH_SIZE),
                            lr=t.float("lr"), momentum=t.float("momentum"),
                            prox_mu=t.float("prox_mu"),
                            partial_work=t.str("partial_work", optional=True) or "off",
                            max_batches=t.int("max_batches", optional=True) or 0)
    except ValueError as exc:
        raise RemoteProtocolError(f"task: {exc}") from None
    return Task(task_id=f.str("task_id"), mode=mode, round=f.int("round"),
                model_version=f.int("model_version"), train=train,
                deadline=f.float("deadline", optional=True), invited=invited,
                chunk_size=f.int("chunk_size", minimum=512, maximum=MAX_CHUNK_SIZE),
                done=f.bool("done"), codec=f.map("codec", optional=True),
                dp=f.map("dp", optional=True), secagg=f.map("secagg", optional=True),
                cohort=cohort, personal=f.map("personal", optional=True),
                clusters=f.int("clusters", optional=True, minimum=1, maximum=MAX_CLUSTERS),
                update_version=f.int("update_v", optional=True, minimum=1) or 1)


def _cohort_from(f: Fields) -> Cohort | None:
    """A task's cohort (cohort.py): every field an integer in its range."""
    if f.raw_map("cohort", optional=True) is None:
        return None
    c = f.sub("cohort")
    candidates = c.int("candidates")
    return Cohort(seed=c.int("seed", maximum=EVERYONE - 1),
                  cutoff=c.int("cutoff", maximum=EVERYONE),
                  size=c.int("size", maximum=candidates), candidates=candidates)


def _update_from(f: Fields, max_elements: int) -> Update:
    if f.obj.get("v") == LEAN_UPDATE_VERSION:
        return lean_update_from(f, max_elements)
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


def _metrics(f: Fields) -> dict[str, float]:
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


def _model_from(f: Fields, max_elements: int) -> Model:
    return Model(version=f.int("version"),
                 arch=f.map("arch", max_items=MAX_ARCH_ITEMS, max_depth=6),
                 tensors=decode_tensors(f.raw_map("tensors"), max_elements))


def _manifest_from(f: Fields, _max: int) -> ModelManifest:
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


def _delta_from(d: Fields, chained: bool) -> DeltaInfo:
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
    chain = tuple(_delta_from(Fields(e, f"manifest.chain[{i}]"), chained=True)
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


def _ack_from(f: Fields, _max: int) -> Ack:
    status = f.str("status")
    if status not in ACK_STATUSES:
        raise RemoteProtocolError(f"ack: unknown status {describe(status)}")
    return Ack(status=AckStatus(status), task_id=f.str("task_id"), nonce=f.str("nonce", max_len=64),
               reason=f.str("reason", max_len=MAX_REASON),
               next_checkin_s=f.float("next_checkin_s", optional=True, minimum=0,
                                      maximum=MAX_CHECKIN_S))


def _status_from(f: Fields, _max: int) -> Status:
    return Status(device_id=f.device("device_id"), online=f.bool("online"),
                  eligible=f.bool("eligible"), reason=f.str("reason", max_len=MAX_REASON),
                  model_version=f.int("model_version", optional=True),
                  time=f.float("time"), battery_pct=f.float("battery_pct", optional=True),
                  session=f.str("session", optional=True, max_len=MAX_SESSION) or "",
                  global_accuracy=f.float("global_accuracy", optional=True, minimum=0,
                                          maximum=1),
                  personal_accuracy=f.float("personal_accuracy", optional=True, minimum=0,
                                            maximum=1),
                  cluster=f.int("cluster", optional=True, maximum=MAX_CLUSTERS - 1),
                  drift=drift_from(f))


def _invitation_from(f: Fields, _max: int) -> Invitation:
    return Invitation(task_id=f.str("task_id"), device_id=f.device("device_id"))


DECODERS: dict[str, tuple[type, Any]] = {
    "task": (Task, _task_from),
    "update": (Update, _update_from),
    "model": (Model, _model_from),
    "manifest": (ModelManifest, _manifest_from),
    "ack": (Ack, _ack_from),
    "status": (Status, _status_from),
    "invitation": (Invitation, _invitation_from),
}
