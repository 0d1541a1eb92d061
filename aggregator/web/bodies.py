"""The JSON bodies the admin endpoints take: one declaration gives the check and the schema.

The OpenAPI document (openapi.py) is built from the same `Body` the view reads its
request with, so what the document allows and what the server accepts cannot drift.
Anything else gets one line naming the field: 400, or 415 when the body is not JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from flask import request

from aggregator.strategy.registry import STRATEGIES
from aggregator.web.context import ApiError

JSON = "application/json"
MAX_BODY_BYTES = 64 * 1024  # admin requests are a few fields; the app answers 413 above


@dataclass(frozen=True)
class Field:
    """One required field: a string (matching `pattern`, or one of `enum`), a boolean, or
    a whole number from 0 to `maximum`."""

    name: str
    kind: type  # str or bool; exact, so `1` is not taken for `true`
    rule: str = ""  # what a valid value looks like, for the reason of a 400
    pattern: str | None = None  # the whole value must match (no anchors here)
    enum: tuple[str, ...] = ()
    example: str | None = None
    maximum: int = 2**63 - 1  # for whole numbers

    def check(self, value: Any) -> Any:
        if type(value) is not self.kind:
            raise ApiError(400, f"field {self.name!r} must be a {_TYPE_NAMES[self.kind]}")
        if isinstance(value, int) and not isinstance(value, bool) and not (
                0 <= value <= self.maximum):
            raise ApiError(400, f"field {self.name!r} must be from 0 to {self.maximum}")
        if isinstance(value, str):  # enum and pattern are for strings (bool fields have none)
            self._check_text(value)
        return value

    def _check_text(self, value: str) -> None:
        if self.enum and value not in self.enum:
            raise ApiError(400, f"field {self.name!r} must be one of {', '.join(self.enum)}, "
                                f"not {value[:40]!r}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ApiError(400, f"field {self.name!r} must be {self.rule}, not {value[:40]!r}")

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": _TYPE_NAMES[self.kind].split()[0]}
        if self.rule:
            schema["description"] = self.rule
        if self.pattern is not None:
            # anchored for JSON Schema; check() uses re.fullmatch, because Python's `$`
            # would also let a final newline through
            schema["pattern"] = f"^(?:{self.pattern})$"
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.example is not None:
            schema["example"] = self.example
        if self.kind is int:
            schema.update(minimum=0, maximum=self.maximum)
        return schema


@dataclass(frozen=True)
class Body:
    """A JSON object with exactly these fields, all required."""

    fields: tuple[Field, ...]

    def read(self) -> dict[str, Any]:
        """The request's body, checked; ApiError (400, 413, 415) with the reason if not."""
        values = json_object()
        for name in values:
            if name not in self.names:
                raise ApiError(400, f"unknown field {name[:40]!r}; this endpoint takes "
                                    f"{', '.join(self.names)}")
        for f in self.fields:
            if f.name not in values:
                raise ApiError(400, f"missing field {f.name!r}")
            f.check(values[f.name])
        return values

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "required": list(self.names), "additionalProperties": False,
                "properties": {f.name: f.schema() for f in self.fields}}


def json_object() -> dict[str, Any]:
    """The body as a JSON object: strict JSON (no NaN, no key twice), any nesting refused
    with a 400 rather than a RecursionError; the app's size cap answers 413 while reading."""
    if request.mimetype != JSON:
        raise ApiError(415, f"the body must be JSON sent as 'Content-Type: {JSON}', not "
                            f"{(request.mimetype or 'none')[:40]!r}")
    data = request.get_data(cache=False)
    try:
        body = json.loads(data, parse_constant=_no_constant, object_pairs_hook=_no_repeats)
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply to be one of this API's "
                            "objects") from None
    except ValueError as exc:  # also bad UTF-8 (UnicodeDecodeError)
        raise ApiError(400, f"the body is not valid JSON: {_one_line(exc)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_json_type(body)}")
    return body


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in pairs:
        if name in values:
            raise ValueError(f"field {name[:40]!r} is given twice")
        values[name] = value
    return values


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


_TYPE_NAMES = {str: "string", bool: "boolean (true or false)", int: "integer (a whole number)"}

# ---------------------------------------------------------------- the admin bodies
# check_name's rule (edge_client/shared/protocol/topics.py): device names become topic levels
DEVICE = Field("device", str, "1-64 characters of A-Z a-z 0-9 _ . -", r"[A-Za-z0-9_.-]{1,64}",
               example="pi-kitchen")
# What `fedge keys export` prints: 32 bytes in canonical base64 (the last character before
# the padding carries 2 unused bits, which must be 0); whitespace around it is stripped.
_KEY = r"[ \t\r\n]*ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=[ \t\r\n]*"
ENROLL = Body((DEVICE, Field("key", str, "'ed25519:' and the 32-byte key in base64, as "
                                         "`fedge keys export` prints it", _KEY,
                             example="ed25519:" + "A" * 43 + "=")))
REVOKE = Body((DEVICE,))
TRAINING = Body((Field("running", bool, "false: pause, true: resume"),))
STAGE = Body((Field("command", str, "what to do with the version (docs/lifecycle.md)",
                    enum=("promote", "rollback", "pin"), example="rollback"),
               Field("version", int, "a stored model version", maximum=2**53)))
STRATEGY = Body((Field("name", str, "an aggregation strategy (docs/strategies.md)",
                       enum=tuple(sorted(STRATEGIES)), example="fedavg"),))
