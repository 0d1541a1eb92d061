"""Errors of the wire protocol.

Two kinds, as in h11: a peer that sent us something bad (`RemoteProtocolError`, answered
with a rejection and otherwise ignored) and our own misuse of the API
(`LocalProtocolError`, a bug to fix).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of every error the protocol raises."""


class RemoteProtocolError(ProtocolError):
    """Bytes from the network that we refuse; `reason` is sent back to the peer."""

    def __init__(self, reason: str, transfer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transfer = transfer


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol cannot express."""
