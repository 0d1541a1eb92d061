"""The device's signing key and the aggregator key it pins, both optional.

Nothing here imports `cryptography`: sealing calls the identity it is given, and
`load_device_keys` imports edge_client.shared.identity only when the device's security
settings name a key, so a device without security never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_client.shared.protocol import RemoteProtocolError
from edge_client.shared.protocol.signing import is_signed, open_envelope, seal, verify_envelope
from edge_client.shared.security import DeviceSecurity

if TYPE_CHECKING:
    from edge_client.shared.identity import Identity


@dataclass(frozen=True)
class DeviceKeys:
    identity: Identity | None = None  # signs what the device sends
    pinned: bytes | None = None  # the aggregator's public key: unsigned messages refused

    def seal(self, body: bytes) -> bytes:
        """A message signed with this device's key, when it has one."""
        return body if self.identity is None else seal(body, self.identity)

    def from_aggregator(self, payload: bytes) -> bytes:
        """A manifest, task, invitation or ack body, checked against the pinned aggregator
        key if any."""
        if not is_signed(payload):
            if self.pinned is not None:
                raise RemoteProtocolError("unsigned message refused: this device pins the "
                                          "aggregator's key")
            return payload
        envelope = open_envelope(payload)
        if self.pinned is None:
            return envelope.body
        return verify_envelope(envelope, self.pinned)


def load_device_keys(security: DeviceSecurity) -> DeviceKeys:
    """Read (or create) the device key and parse the pinned key, as configured."""
    if not (security.key_file or security.aggregator_key):
        return DeviceKeys()
    from edge_client.shared.identity import load_or_create_identity, parse_public_key

    return DeviceKeys(
        identity=load_or_create_identity(Path(security.key_file)) if security.key_file
        else None,
        pinned=parse_public_key(security.aggregator_key) if security.aggregator_key else None)
