"""Which device statuses to believe.

A status makes a device available ("online, eligible") or not. With security on it must
be signed by the key enrolled for its topic's device, like an update (ingest.verified_body),
and one that would make the device available must be fresh: stamped within
`max_clock_skew_s` of our clock, and newer than the last status taken from that device,
so a captured old status replayed later is refused. A status that makes a device
unavailable is taken at any age: a device's last will is sealed when it connects and
published by the broker whenever the connection dies, and at worst an old one keeps a
device out of a round until its next status.
"""

from __future__ import annotations

from collections.abc import Callable

from aggregator.ingest import verified_body
from edge_client.shared.protocol import RemoteProtocolError, Status, decode
from edge_client.shared.security import AggregatorSecurity


class StatusGate:
    """Checks statuses; remembers the newest time taken per enrolled device."""

    def __init__(self, security: AggregatorSecurity,
                 device_key: Callable[[str], str | None]) -> None:
        self.security = security
        self.device_key = device_key
        self._newest: dict[str, float] = {}  # only enrolled devices get here: bounded

    def open(self, device: str, payload: bytes, now: float) -> Status | None:
        """The status on `device`'s topic at unix time `now`, or RemoteProtocolError; None
        for the status already taken, delivered again (a QoS 1 redelivery after a lost
        link, or the retained copy read again after the aggregator reconnects): nothing
        new, nothing refused, and its retained copy stays."""
        required = self.security.enabled
        key = self.device_key(device) if required else None
        body = verified_body(payload, device, key, required, what="status")
        status = decode(body, expect=Status)
        if status.device_id != device:
            raise RemoteProtocolError(f"status names device {status.device_id!r} but came "
                                      f"on {device!r}'s topic")
        if required:
            if status.time == self._newest.get(device):
                return None
            self._check_time(status, now)
        return status

    def _check_time(self, status: Status, now: float) -> None:
        newest = self._newest.get(status.device_id)
        limit = self.security.max_clock_skew_s
        skew = status.time - now
        if status.online and status.eligible:
            if abs(skew) > limit:
                raise RemoteProtocolError(f"status time is {skew:+.0f} s from the "
                                          f"aggregator's clock (limit {limit:.0f} s)")
            if newest is not None and status.time <= newest:
                raise RemoteProtocolError("status is not newer than the last one taken "
                                          "from this device (a replay?)")
        if abs(skew) <= limit:  # a stamp far off (a wrong clock) must not lock it out
            self._newest[status.device_id] = max(status.time, newest or status.time)
