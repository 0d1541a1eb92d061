"""Pages of per-device lists: `?limit=` and `?offset=` on the read API.

At fleet size (10,000 devices on one gateway, docs/gateway.md) a list with a row per
device is megabytes of JSON and seconds of browser time on every 5 s poll. Endpoints
that list devices answer at most `limit` rows (DEFAULT_LIMIT without the parameter),
starting at `offset`, and say how many there are in all (`total`), so a client shows
"N of M" or asks for the next page.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import request

from aggregator.web.context import ApiError

DEFAULT_LIMIT = 500  # rows per page without ?limit=
MAX_LIMIT = 10_000
MAX_OFFSET = 2**31 - 1
CHUNK = 500  # device ids per IN (...) list: well under every engine's parameter limit
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int

    def of(self, rows: Sequence[T]) -> list[T]:
        return list(rows[self.offset:self.offset + self.limit])

    def meta(self, total: int) -> dict[str, int]:
        """What a paged answer adds beside its rows."""
        return {"total": total, "limit": self.limit, "offset": self.offset}


def whole_number(name: str, low: int, high: int, default: int) -> int:
    """Query parameter `name` as a whole number in [low, high]; a 400 naming it else.
    Digits only: int() would also take ' 7', '+7', '7_0' and other scripts' digits."""
    text = request.args.get(name)
    if text is None:
        return default
    if not (len(text) <= len(str(high)) and text.isascii() and text.isdigit()
            and low <= int(text) <= high):
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}, "
                            f"not {text[:20]!r}")
    return int(text)


def flag(name: str) -> bool | None:
    """Query parameter `name` as true or false (None when absent)."""
    text = request.args.get(name)
    if text is None:
        return None
    if text not in ("true", "false"):
        raise ApiError(400, f"{name} must be true or false, not {text[:20]!r}")
    return text == "true"


def requested_page(default_limit: int = DEFAULT_LIMIT) -> Page:
    """The page `?limit=` and `?offset=` ask for."""
    return Page(whole_number("limit", 1, MAX_LIMIT, default_limit),
                whole_number("offset", 0, MAX_OFFSET, 0))


def page_parameters(what: str) -> list[dict[str, Any]]:
    """The OpenAPI description of ?limit= and ?offset= on a listing of `what`."""
    return [{"name": "limit", "in": "query", "required": False,
             "description": f"at most this many {what} (default {DEFAULT_LIMIT})",
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
            {"name": "offset", "in": "query", "required": False,
             "description": f"skip this many {what} first (default 0)",
             "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}}]


def page_schema() -> dict[str, Any]:
    """The properties a paged answer adds."""
    integer = {"type": "integer"}
    return {"total": {**integer, "description": "How many there are in all"},
            "limit": integer, "offset": integer}


def chunks(ids: Sequence[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(the "?, ?, ..." of an IN list, its ids) for `ids` a chunk at a time: a page's
    devices are read by key, not by a scan of every device's rows."""
    for start in range(0, len(ids), CHUNK):
        part = tuple(ids[start:start + CHUNK])
        yield ", ".join("?" * len(part)), part
