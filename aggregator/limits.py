"""Bounds on what devices can make the aggregator hold: the `[limits]` table.

Every cost a device (or anyone with a broker login) can cause is capped here, so a flood
costs the gateway bounded memory and bounded work per message (docs/abuse.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aggregator.upload_spill import FileSpill
from edge_client.shared.inbox import DEFAULT_BLOCK_S, DEFAULT_MAX_BYTES, Inbox
from edge_client.shared.protocol.chunking import Assembler

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig


@dataclass
class LimitsConfig:
    inbound_queue_bytes: int = DEFAULT_MAX_BYTES  # received messages waiting for the loop;
    #                    when full, paho stops reading and the broker holds the rest
    inbound_block_s: float = DEFAULT_BLOCK_S  # after this long full, one message is let in
    #                    over the bound (with a warning) so a stuck loop cannot hang paho
    unconfirmed_publishes: int = 5000  # our QoS 1 publishes awaiting the broker's PUBACK;
    #                    past it acks are not sent (devices resend), models and tasks are
    uploads_per_device: int = 2  # open (unfinished) uploads per device; a new one evicts
    #                    that device's least recently active one
    open_uploads: int = 1000  # open uploads across all devices
    open_upload_bytes: int | None = None  # their declared sizes together; None: 4 x
    #                    max_update_bytes
    upload_memory_bytes: int = 32 * 2**20  # chunks of open uploads held in memory; past
    #                    it they wait in files (aggregator/upload_spill.py)
    upload_spill_dir: str = ""  # where those files go; "": the system's temporary directory
    answered_rejections_per_device_s: float = 50.0  # rejections answered (logged, stored,
    #                    acked) per device per second; past it only counted
    answered_rejections_s: float = 500.0  # ... and across all devices
    rejections_per_device: int = 100  # rejections kept per device (newest); older pruned
    rejections_total: int = 100_000  # rejections kept across all devices

    def __post_init__(self) -> None:
        if self.inbound_queue_bytes < 64 * 1024:
            raise ValueError(f"limits.inbound_queue_bytes must be >= 65536, "
                             f"not {self.inbound_queue_bytes}")
        if not self.inbound_block_s > 0:
            raise ValueError(f"limits.inbound_block_s must be > 0, not {self.inbound_block_s}")
        if self.unconfirmed_publishes < 100:
            raise ValueError(f"limits.unconfirmed_publishes must be >= 100, "
                             f"not {self.unconfirmed_publishes}")
        if not (self.answered_rejections_per_device_s > 0 and self.answered_rejections_s > 0):
            raise ValueError("limits: answered_rejections_per_device_s and "
                             "answered_rejections_s must be > 0")
        if self.uploads_per_device < 1 or self.open_uploads < 1:
            raise ValueError("limits: uploads_per_device and open_uploads must be >= 1")
        if self.open_upload_bytes is not None and self.open_upload_bytes < 1:
            raise ValueError("limits.open_upload_bytes must be >= 1 (or left out)")
        if self.upload_memory_bytes < 0:
            raise ValueError(f"limits.upload_memory_bytes must be >= 0, "
                             f"not {self.upload_memory_bytes}")
        if self.rejections_per_device < 1 or self.rejections_total < 1:
            raise ValueError("limits: rejections_per_device and rejections_total must be >= 1")

    def upload_bytes(self, max_update_bytes: int) -> int:
        """The global cap on declared upload sizes: at least one upload of the maximum."""
        if self.open_upload_bytes is None:
            return 4 * max_update_bytes
        return self.open_upload_bytes


def check_limits(config: AggregatorConfig) -> None:
    """One upload of the largest allowed size must fit under the global byte cap, and the
    kept rejections must cover the anomaly window (or flags would miss some)."""
    limits, largest = config.limits, config.max_update_bytes
    if limits.upload_bytes(largest) < largest:
        raise ValueError(f"limits.open_upload_bytes ({limits.open_upload_bytes}) must be >= "
                         f"max_update_bytes ({largest})")
    if limits.rejections_per_device < config.anomalies.window:
        raise ValueError(f"limits.rejections_per_device ({limits.rejections_per_device}) must "
                         f"be >= anomalies.window ({config.anomalies.window})")


def upload_assembler(config: AggregatorConfig) -> Assembler:
    """The reassembly of device uploads under the configured limits; past
    `upload_memory_bytes` their chunks wait in files."""
    limits = config.limits
    return Assembler(config.max_update_bytes, limits.uploads_per_device,
                     config.upload_timeout_s, limits.upload_bytes(config.max_update_bytes),
                     limits.open_uploads, limits.upload_memory_bytes,
                     FileSpill(limits.upload_spill_dir))


def service_inbox(config: AggregatorConfig) -> Inbox:
    """The service loop's bounded, per-device fair event queue: a device's messages are
    keyed by the last level of their topic (update, status and secagg topics end in the
    device id); everything else shares one key."""
    limits = config.limits

    def source_of(event: object) -> str:
        topic = getattr(event, "topic", None)
        return topic.rsplit("/", 1)[-1] if isinstance(topic, str) else ""

    return Inbox(limits.inbound_queue_bytes, limits.inbound_block_s, source_of=source_of)
