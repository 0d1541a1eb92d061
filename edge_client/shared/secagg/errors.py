"""Errors of secure aggregation.

A peer's message we refuse is a `BadSecAggMessage` (a `RemoteProtocolError`, so the
transport answers it like any other bad payload); a round that cannot finish is a
`RoundAborted` naming the phase and the reason; our own misuse is a `LocalProtocolError`.
"""

from __future__ import annotations

from edge_client.shared.protocol.errors import ProtocolError, RemoteProtocolError


class BadSecAggMessage(RemoteProtocolError):
    """A secure-aggregation message from a peer that we refuse; nothing changed."""


class RoundAborted(ProtocolError):
    """The round cannot produce a sum: too few devices, shares or valid secrets."""

    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(f"secure aggregation aborted in phase {phase!r}: {reason}")
        self.phase = phase
        self.reason = reason
