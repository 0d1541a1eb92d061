"""Bounds every decoded value must keep, and short descriptions of values we refuse.

Decoders on both sides use these, so what one side may send is what the other accepts:
integers that fit SQLite's INTEGER, numpy's int64 and a float64 exactly, finite floats,
strings, lists and maps bounded in length, depth and key type. A refusal is always a
`RemoteProtocolError` whose reason stays short, whatever the value was.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

from edge_client.shared.protocol.errors import RemoteProtocolError

MAX_INT = 2**53  # |int| on the wire: exact in a float64, far inside int64 and SQLite
MAX_STR = 1024  # a string inside a settings map (codec, dp, secagg, arch)
MAX_BYTES = 4096  # a bytes value inside a settings map (e.g. secagg's 32-byte seed)
_DESCRIBE = 40  # characters of a refused value quoted in a reason
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


def describe(value: Any) -> str:
    """A short, safe rendering of an untrusted value for a reason or a log line: a long
    string is cut, a container is named by its type and size, never repr'd whole (a deep
    or huge one would make the reason itself a problem)."""
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**20 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return repr(value) if len(value) <= _DESCRIBE else repr(value[:_DESCRIBE]) + "..."
    if isinstance(value, bytes | bytearray | list | tuple | dict):
        return f"{type(value).__name__} of {len(value)} items"
    return type(value).__name__


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool (msgpack gives both; only one is a number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_plain(value: Any, what: str, max_depth: int, max_items: int) -> Any:
    """A settings map or list from a peer: only None, bool, bounded int, finite float,
    short str and bytes inside maps with string keys and lists, at most `max_depth`
    containers deep and `max_items` values in all. Returns `value` unchanged."""
    budget = [max_items]
    _walk(value, what, max_depth, budget)
    return value


def _walk(value: Any, what: str, depth: int, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise RemoteProtocolError(f"{what} holds too many values")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise RemoteProtocolError(f"{what} holds an integer beyond +-2**53")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RemoteProtocolError(f"{what} holds NaN or infinity")
        return
    if isinstance(value, str):
        if len(value) > MAX_STR:
            raise RemoteProtocolError(f"{what} holds a string longer than {MAX_STR}")
        return
    if isinstance(value, bytes):
        if len(value) > MAX_BYTES:
            raise RemoteProtocolError(f"{what} holds bytes longer than {MAX_BYTES}")
        return
    if not isinstance(value, list | dict):
        raise RemoteProtocolError(f"{what} holds a {type(value).__name__}")
    if depth < 1:
        raise RemoteProtocolError(f"{what} is nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or len(key) > 64:
                raise RemoteProtocolError(f"{what} has a key that is not a short string")
            _walk(item, f"{what}.{key}", depth - 1, budget)
    else:
        for i, item in enumerate(value):
            _walk(item, f"{what}[{i}]", depth - 1, budget)

MAX_CLUSTERS = 64  # clustered model lines one federation may keep (shared/clusters.py)
