"""Bearer tokens: a read token for the dashboard and metrics, an admin token for changes.

Tokens are compared in constant time. A gateway without a read token serves its read
API to anyone who can reach it (meant for a closed LAN); without an admin token the
admin API is off.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Access(Enum):
    """What an endpoint needs."""

    PUBLIC = "public"  # the page, its scripts, the OpenAPI document: no data in them
    READ = "read"  # the read or the admin token
    ADMIN = "admin"  # the admin token


@dataclass(frozen=True)
class Denial:
    status: int  # 401: no token given; 403: a token that does not grant this
    reason: str


@dataclass(frozen=True)
class Tokens:
    read: str | None
    admin: str | None

    def check(self, need: Access, authorization: str | None) -> Denial | None:
        """None when the request may go on, else why not."""
        if need is Access.PUBLIC or (need is Access.READ and self.read is None):
            return None
        if need is Access.ADMIN and self.admin is None:
            return Denial(403, "the admin API is disabled on this gateway (no admin token)")
        given = bearer(authorization)
        if given is None:
            return Denial(401, "this needs 'Authorization: Bearer <token>'")
        if _same(given, self.admin) or (need is Access.READ and _same(given, self.read)):
            return None
        return Denial(403, "this token does not grant access here")


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def load_token(path: Path | None) -> str | None:
    """A token kept alone in a file (whitespace stripped); None when no file is named.

    An empty file is an error rather than "no token": it would silently open the API.
    """
    if path is None:
        return None
    token = Path(path).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
