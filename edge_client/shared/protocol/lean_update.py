"""The lean update envelope: version 2 of the update message (docs/protocol.md).

An adaptive update's encoded delta is about 1.6 KB; the version 1 map around it was
about 365 bytes of long field names, a 32-character hex nonce, metric names and a codec
map. Version 2 carries the same fields under one-letter keys: the nonce as its 16 raw
bytes, the four metrics every update reports as a list in a fixed order (any other
metric by name), the codec as a list in its wire-key order, and no empty blob, codec or
tensor map. About 150 bytes. Decoding gives the same `Update` as version 1, so everything
after `decode` is unchanged; aggregators decode both versions (old devices keep sending 1).
"""

from __future__ import annotations

import math
import re
from typing import Any

from edge_client.shared.protocol.bounds import MAX_INT, MAX_METRICS, MAX_SAMPLES, is_number
from edge_client.shared.protocol.errors import RemoteProtocolError
from edge_client.shared.protocol.fields import Fields
from edge_client.shared.protocol.message_types import Update
from edge_client.shared.protocol.tensors import decode_tensors, encode_tensors

LEAN_UPDATE_VERSION = 2
# The metrics every fit reports (session/update_maker.py), in their list order.
COMMON_METRICS = ("train_loss", "train_s", "local_accuracy", "local_loss")
# The codec map's keys in list order: CodecConfig.to_wire's, the adaptive pair last.
# The codec keeps the meaning of every key (codecs/config.py checks the values).
CODEC_KEYS = ("sparsify", "fraction", "threshold", "quantize", "block_size",
              "error_feedback", "compress", "energy", "max_fraction")
PLAIN_CODEC_KEYS = 7  # the first seven are always there
MAX_NONCE_BYTES = 32  # a version 1 nonce was at most 64 characters
_HEX = re.compile(r"(?:[0-9a-f]{2}){1,32}")
# Each short key's version 1 name: reasons name both, so a refusal reads the same.
LONG_NAMES = {"d": "device_id", "t": "task_id", "n": "nonce", "b": "base_version",
              "s": "num_samples", "at": "created_at", "m": "metrics", "mx": "metrics",
              "c": "codec", "z": "blob", "w": "tensors"}


class LeanFields(Fields):
    """Fields whose refusals name the field as version 1 did, and its short key."""

    def label(self, name: str) -> str:
        long = LONG_NAMES.get(name)
        return repr(name) if long is None else f"{long!r} (key {name!r})"


def lean_update_map(u: Update) -> dict[str, Any]:
    """The version 2 fields of `u` (`v` and `kind` are added by `encode`)."""
    out: dict[str, Any] = {"d": u.device_id, "t": u.task_id, "n": _nonce_wire(u.nonce),
                           "b": u.base_version, "s": u.num_samples, "at": u.created_at}
    common = all(name in u.metrics for name in COMMON_METRICS)
    if common:
        out["m"] = [float(u.metrics[name]) for name in COMMON_METRICS]
    other = {k: float(v) for k, v in u.metrics.items() if not common or k not in COMMON_METRICS}
    if other:
        out["mx"] = other
    if u.codec is not None:
        out["c"] = _codec_list(u.codec)
        out["z"] = u.blob
    if u.tensors:
        out["w"] = encode_tensors(u.tensors)
    return out


def lean_update_from(fields: Fields, max_elements: int) -> Update:
    """An update from its version 2 fields: the checks of version 1, same results."""
    f = LeanFields(fields.obj, fields.kind)
    codec = _codec_from(f)
    blob = f.bytes("z")
    raw_tensors = f.raw_map("w", optional=True)
    tensors = decode_tensors(raw_tensors if raw_tensors is not None else {}, max_elements)
    if (codec is None) != (not blob) or (codec is not None and tensors):
        raise RemoteProtocolError("update: send either dense tensors, or a codec and a blob")
    return Update(device_id=f.device("d"), task_id=f.str("t"), nonce=_nonce_from(f),
                  base_version=f.int("b"),
                  num_samples=f.int("s", minimum=1, maximum=MAX_SAMPLES),
                  tensors=tensors, metrics=_metrics_from(f), created_at=f.float("at"),
                  codec=codec, blob=blob)


def task_id_key(obj: dict[str, Any]) -> str:
    """The key of the task id in an update map of either version."""
    return "t" if obj.get("v") == LEAN_UPDATE_VERSION else "task_id"


def _nonce_wire(nonce: str) -> bytes | str:
    """Lower-case hex (what devices make: 16 random bytes) travels as its bytes;
    anything else as the text, which decodes unchanged."""
    return bytes.fromhex(nonce) if _HEX.fullmatch(nonce) else nonce


def _nonce_from(f: Fields) -> str:
    value = f.obj.get("n")
    if isinstance(value, bytes):
        if not 0 < len(value) <= MAX_NONCE_BYTES:
            raise f.fail("n", f"must be 1 to {MAX_NONCE_BYTES} bytes")
        return value.hex()
    return str(f.str("n", max_len=2 * MAX_NONCE_BYTES))


def _codec_list(codec: dict[str, Any]) -> list[Any]:
    unknown = set(codec) - set(CODEC_KEYS)
    if unknown:  # our own codec config is wrong: never sent half of it
        raise ValueError(f"codec has keys the lean update cannot carry: {sorted(unknown)}")
    values = [codec.get(key) for key in CODEC_KEYS]
    if values[7] is None and values[8] is None:
        values = values[:PLAIN_CODEC_KEYS]
    # a whole float (threshold 0.0) as an int is 8 bytes shorter; the codec reads both
    return [int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2**31 else v
            for v in values]


def _codec_from(f: Fields) -> dict[str, Any] | None:
    values = f.list("c", optional=True, max_len=len(CODEC_KEYS))
    if values is None:
        return None
    if len(values) not in (PLAIN_CODEC_KEYS, len(CODEC_KEYS)):
        raise f.fail("c", f"must list {PLAIN_CODEC_KEYS} or {len(CODEC_KEYS)} codec "
                          f"settings, not {len(values)}")
    if not all(v is None or isinstance(v, str | int | float | bool) for v in values):
        raise f.fail("c", "must list plain values")
    return dict(zip(CODEC_KEYS, values, strict=False))


def _metrics_from(f: Fields) -> dict[str, float]:
    """The listed common metrics, then the named ones: numbers as in version 1."""
    out: dict[str, float] = {}
    common = f.list("m", optional=True, max_len=len(COMMON_METRICS))
    if common is not None:
        if len(common) != len(COMMON_METRICS):
            raise f.fail("m", f"must list {len(COMMON_METRICS)} metrics, not {len(common)}")
        for name, value in zip(COMMON_METRICS, common, strict=True):
            out[name] = _metric(name, value)
    named = f.raw_map("mx", optional=True) or {}
    if len(named) + len(out) > MAX_METRICS:
        raise f.fail("mx", f"makes more than {MAX_METRICS} metrics")
    for key, value in named.items():
        if not (isinstance(key, str) and 0 < len(key) <= 64) or key in out:
            raise RemoteProtocolError("update: metrics must map names to numbers, "
                                      "each once")
        out[key] = _metric(key, value)
    return out


def _metric(name: str, value: Any) -> float:
    if not is_number(value):
        raise RemoteProtocolError("update: metrics must map names to numbers")
    if abs(value) > MAX_INT and not math.isnan(value):
        raise RemoteProtocolError(f"update: metric {name!r} is out of range")
    return float(value)
