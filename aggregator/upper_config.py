"""The [upper] table: this aggregator is a site of an upper-tier aggregator (docs/tiers.md).

A site federates its own devices as usual and, every `every_versions` site versions, sends
the change since the upper tier's model, weighted by its devices' samples, to the upper
tier as one device named `site_id` would; the upper tier's next model becomes the site's
next version. The uplink itself (the device protocol toward the upper broker) runs in
fedge/tiers/, which composes both sides; the aggregator only holds its rounds, counts
and adopts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_client.shared.protocol.topics import check_name
from edge_client.shared.security import BrokerAuth, DeviceSecurity

UPPER_NOTE = "upper"  # the store note of a site's count since its upper model (core/upper.py)
LINK_NOTE = "upper_link"  # where its upper tier is, for /api/upper (aggregator/tier_view.py)


@dataclass
class UpperConfig:
    enabled: bool = False
    host: str = "127.0.0.1"  # the upper broker, or this site's own broker when bridged
    port: int = 1883
    federation: str = "top"  # the upper tier's federation name
    site_id: str = "site"  # this site, as the upper tier knows it (one "device")
    every_versions: int = 1  # send an aggregate after this many site versions
    state_dir: Path | None = None  # the uplink's outbox and held model (None: beside db)
    ack_timeout_s: float = 30.0  # resend an unacknowledged site aggregate after this long
    keepalive_s: int = 30
    security: DeviceSecurity = field(default_factory=DeviceSecurity)  # site key, upper pin
    broker_auth: BrokerAuth = field(default_factory=BrokerAuth)  # upper broker TLS, password

    def __post_init__(self) -> None:
        if self.every_versions < 1:
            raise ValueError(f"upper.every_versions must be >= 1, not {self.every_versions}")
        if not 0 < self.port < 65536:
            raise ValueError(f"upper.port must be 1 to 65535, not {self.port}")
        if self.ack_timeout_s <= 0:
            raise ValueError(f"upper.ack_timeout_s must be > 0, not {self.ack_timeout_s}")
        check_name("upper.federation", self.federation)
        check_name("upper.site_id", self.site_id)

    def uplink_dir(self, db_path: Path) -> Path:
        """Where the uplink keeps its outbox: `state_dir`, or `<db>-upper` beside the store."""
        if self.state_dir is not None:
            return Path(self.state_dir)
        return Path(db_path).with_name(Path(db_path).stem + "-upper")
