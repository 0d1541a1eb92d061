"""Typed, bounded access to the fields of one decoded MessagePack map."""

from __future__ import annotations

import builtins
import math
from typing import Any

from edge_client.shared.protocol.bounds import (
    MAX_INT,
    MAX_INVITED,
    MAX_SETTINGS,
    check_plain,
    describe,
)
from edge_client.shared.protocol.errors import RemoteProtocolError
from edge_client.shared.protocol.topics import check_name


class Fields:
    """Typed, bounded field access that turns a missing, mistyped or out-of-range field
    into a clear reason (docs/protocol.md, "Decoding rules").

    Its methods are named after the types they read, so below them the annotations spell
    the types `builtins.str` etc."""

    def __init__(self, obj: dict[str, Any], kind: str) -> None:
        self.obj = obj
        self.kind = kind

    def label(self, name: str) -> str:
        """How a reason names the field stored under `name`."""
        return repr(name)

    def fail(self, name: str, problem: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"{self.kind}: field {self.label(name)} {problem}")

    def _get(self, name: str, types: tuple[type, ...], optional: bool) -> Any:
        if name not in self.obj or self.obj[name] is None:
            if optional:
                return None
            raise RemoteProtocolError(f"{self.kind}: missing field {self.label(name)}")
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

    def sub(self, name: builtins.str) -> Fields:
        return Fields(self.raw_map(name), f"{self.kind}.{name}")
