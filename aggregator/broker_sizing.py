"""mosquitto settings sized for a fleet, and the systemd drop-in that lets it hold them.

Measured on a 2-core gateway (issue 16, docs/gateway.md#fleets): mosquitto under
systemd's stock open-file limit (1,024) stopped accepting clients near 1,000 devices and
locked the aggregator out; with the stock `max_queued_messages` (1,000) a dense burst
from 1,000 devices lost 13,832 messages at the broker, queued for the aggregator's one
subscription. So the aggregator's queue holds a whole burst (every device's update
chunks and status, twice over), QoS 1 messages in flight per client are raised from 20,
and LimitNOFILE leaves room for every device plus a quarter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_UPDATE_CHUNKS = 8  # a dense 100k-parameter update (400 KB) in 64 KiB chunks
MIN_QUEUED = 10_000
MIN_FILES = 4096
INFLIGHT = 1000  # QoS 1 messages in flight to one client (mosquitto's default: 20)
DROP_IN = "mosquitto.service.d/fedge-fleet.conf"  # under /etc/systemd/system/


@dataclass(frozen=True)
class FleetSize:
    """The fleet a broker must carry."""

    devices: int
    update_chunks: int = DEFAULT_UPDATE_CHUNKS  # chunks of one update

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"--fleet must be >= 1 device, not {self.devices}")
        if self.update_chunks < 1:
            raise ValueError(f"--update-chunks must be >= 1, not {self.update_chunks}")

    @property
    def max_queued_messages(self) -> int:
        """A burst of every device's update and status, twice over."""
        return max(MIN_QUEUED, 2 * self.devices * (self.update_chunks + 1))

    @property
    def open_files(self) -> int:
        """LimitNOFILE: a file per connection, a quarter more and 256 spare, rounded up
        to a multiple of 1,024."""
        return max(MIN_FILES, 1024 * math.ceil((self.devices * 1.25 + 256) / 1024))


def broker_settings(size: FleetSize) -> list[str]:
    """mosquitto.conf lines (global settings) for the fleet."""
    return [
        f"# Sized for {size.devices} devices, updates of {size.update_chunks} chunks "
        "(`fedge aggregator broker-config --fleet`).",
        "# A slow subscriber's QoS 1 messages past this queue are dropped silently: hold",
        "# a whole burst of updates and statuses for the aggregator.",
        f"max_queued_messages {size.max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {INFLIGHT}",
        "# Connections are limited by the open-file limit (LimitNOFILE in the systemd",
        f"# drop-in {DROP_IN}: {size.open_files}), not here.",
        "max_connections -1",
    ]


def systemd_drop_in(size: FleetSize) -> str:
    """/etc/systemd/system/mosquitto.service.d/fedge-fleet.conf"""
    return "\n".join([
        f"# mosquitto for a fedge fleet of {size.devices} devices: one open file per "
        "connection,",
        "# and systemd's stock limit (1,024) stops it near 1,000 clients. Install with:",
        f"#   install -D -m 0644 fedge-fleet.conf /etc/systemd/system/{DROP_IN}",
        "#   systemctl daemon-reload && systemctl restart mosquitto",
        "[Service]",
        f"LimitNOFILE={size.open_files}",
        "",
    ])
