"""Hostile variants of valid messages, for fuzz tests: seeded, so a failure reproduces.

`Mutator.mutate(valid)` returns one of: bit flips, a truncation, an insertion, a field
replaced by a value of a random type (huge and negative integers, NaN and infinities,
long strings, big lists and maps, nested containers), a field deleted or added, or a
field nested deeper than msgpack lets Python repr it.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack

HUGE_INTS = (2**63, 2**64 - 1, 2**63 - 1, -(2**63), 2**53 + 1, 2**32, -1, 0, 1, 7)
FLOATS = (math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5, 1e-320)


class Mutator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # ------------------------------------------------------------ values
    def value(self, depth: int = 0) -> Any:
        """A value of a random type, often at an edge of its range."""
        rng = self.rng
        pick = rng.randrange(14)
        if pick == 0:
            return rng.choice(HUGE_INTS)
        if pick == 1:
            return rng.choice(FLOATS)
        if pick == 2:
            return rng.choice(["", "x", "dev-1", "a/b", "\x00", "é" * 3, "x" * 70])
        if pick == 3:
            return "s" * rng.choice([257, 2001, 70_000])
        if pick == 4:
            return rng.choice([b"", b"\x00" * 32, bytes(rng.randrange(256) for _ in range(64))])
        if pick == 5:
            return rng.choice([None, True, False])
        if pick == 6:
            return [] if depth > 3 else [self.value(depth + 1) for _ in range(rng.randrange(4))]
        if pick == 7:
            return {} if depth > 3 else {f"k{i}": self.value(depth + 1)
                                         for i in range(rng.randrange(4))}
        if pick == 8:
            return [0] * rng.choice([1000, 100_001])
        if pick == 9:
            return {f"k{i}": i for i in range(rng.choice([40, 5000]))}
        if pick == 10:
            nested: Any = []
            for _ in range(rng.randrange(5, 400)):  # msgpack packs up to 511 levels
                nested = [nested]
            return nested
        if pick == 11:
            return {"v": 1, "kind": rng.choice([[], {}, "task", "update"])}
        if pick == 12:
            return rng.randrange(-(2**64) + 1, 2**64)
        return rng.uniform(-1e6, 1e6)

    # ------------------------------------------------------------ mutations
    def mutate(self, valid: bytes) -> bytes:
        choice = self.rng.randrange(10)
        if choice < 2:
            return self.flip(valid)
        if choice == 2:
            return valid[:self.rng.randrange(len(valid))]
        if choice == 3:
            at = self.rng.randrange(len(valid) + 1)
            return valid[:at] + bytes(self.rng.randrange(256) for _ in range(8)) + valid[at:]
        if choice == 4:
            return self.deep(valid)
        return self.structural(valid)

    def flip(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(out))
            out[i] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def deep(self, valid: bytes) -> bytes:
        """The message's first field replaced by about 1000 nested lists, spliced by hand
        (Python's repr of that raises RecursionError)."""
        obj = _unpack(valid)
        if not isinstance(obj, dict) or not obj:
            return b"\x91" * 1000 + b"\x90"
        key = self.rng.choice(sorted(obj, key=str))
        rest = {k: v for k, v in obj.items() if k != key}
        head = msgpack.packb(rest, use_bin_type=True)
        if len(rest) >= 15:
            return valid
        depth = self.rng.choice([600, 1000, 1023])
        return (bytes([0x80 | (len(rest) + 1)]) + head[1:] + msgpack.packb(key)
                + b"\x91" * depth + b"\x90")

    def structural(self, valid: bytes) -> bytes:
        """Replace, delete or add one field somewhere in the message's tree."""
        obj = _unpack(valid)
        if obj is None:
            return self.flip(valid)
        target = self._container(obj)
        rng = self.rng
        if isinstance(target, dict):
            keys = sorted(target, key=str)
            action = rng.randrange(6)
            if keys and action < 4:
                target[rng.choice(keys)] = self.value()
            elif keys and action == 4:
                del target[rng.choice(keys)]
            else:
                target[rng.choice(["v", "kind", "extra", "x" * 300])] = self.value()
        elif isinstance(target, list):
            if target and rng.random() < 0.7:
                target[rng.randrange(len(target))] = self.value()
            else:
                target.append(self.value())
        try:
            return msgpack.packb(obj, use_bin_type=True)
        except (ValueError, OverflowError, TypeError):
            return valid

    def _container(self, obj: Any) -> Any:
        """A random map or list inside `obj` (`obj` itself more often than not)."""
        while True:
            children = [v for v in (obj.values() if isinstance(obj, dict) else obj)
                        if isinstance(v, dict | list)]
            if not children or self.rng.random() < 0.45:
                return obj
            obj = self.rng.choice(children)


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None
