"""Security settings of both roles: signing keys, pinned keys, broker TLS and passwords.

These are plain settings; the cryptography lives in edge_client.shared.identity (keys and
signatures, through the `cryptography` package) and edge_client.shared.protocol.signing
(the signed envelope).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BrokerAuth:
    """How to reach a broker that wants TLS and a password ([broker_auth] table)."""

    ca_file: Path | None = None  # CA of the broker's certificate: turns TLS on
    cert_file: Path | None = None  # client certificate, when the broker requires one
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None  # a file holding only the password

    def tls(self):  # -> TlsConfig | None
        from edge_client.shared.transport import TlsConfig

        if self.ca_file is None:
            return None
        return TlsConfig(ca_file=Path(self.ca_file),
                         cert_file=Path(self.cert_file) if self.cert_file else None,
                         key_file=Path(self.key_file) if self.key_file else None)

    def credentials(self):  # -> Credentials | None
        from edge_client.shared.transport import Credentials

        if self.username is None:
            return None
        password = ""
        if self.password_file is not None:
            password = Path(self.password_file).read_text().strip()
        return Credentials(self.username, password)


@dataclass
class DeviceSecurity:
    """A device's [security] table."""

    key_file: Path | None = None  # sign updates with this Ed25519 key (made on first run)
    aggregator_key: str | None = None  # "ed25519:..." pinned: refuse anything it did not sign


@dataclass
class AggregatorSecurity:
    """The aggregator's [security] table."""

    enabled: bool = False  # sign what it publishes; accept only enrolled, signed updates
    key_file: Path = Path("aggregator.key")  # its Ed25519 key, made on first start
    max_clock_skew_s: float = 300.0  # refuse updates stamped further from our clock
