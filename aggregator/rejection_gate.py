"""How many rejections the service answers per second: per device and in all.

Answering a rejection costs a log line, a store row, an anomaly check and an ack publish:
about ten times the cost of reading the junk that caused it. Past these rates a flood's
rejections are only counted (and summed up in one log line every 10 s): the flooding
device gets no ack, so an honest device caught in it resends after its `ack_timeout_s`
and is answered then. Token buckets; O(1) per message, and the per-device buckets are
bounded (the least recently seen device's bucket is forgotten first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger(__name__)
REPORT_EVERY_S = 10.0
TRACKED_DEVICES = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        self.tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RejectionGate:
    def __init__(self, per_device_s: float, total_s: float) -> None:
        self.per_device_s = per_device_s
        self.total_s = total_s
        self.suppressed = 0
        self._devices: OrderedDict[str, _Bucket] = OrderedDict()
        self._total: _Bucket | None = None
        self._reported = 0
        self._reported_at: float | None = None

    def allow(self, device: str, now: float) -> bool:
        """True: answer this rejection; False: only count it (a flood)."""
        bucket = self._devices.get(device)
        if bucket is None:
            bucket = self._devices[device] = _Bucket(self.per_device_s, now)
            if len(self._devices) > TRACKED_DEVICES:
                self._devices.popitem(last=False)
        self._devices.move_to_end(device)
        if self._total is None:
            self._total = _Bucket(self.total_s, now)
        # The device's own bucket first: a flooder does not spend the shared one.
        if bucket.take(now, self.per_device_s, self.per_device_s) and \
                self._total.take(now, self.total_s, self.total_s):
            return True
        self.suppressed += 1
        if self._reported_at is None or now - self._reported_at >= REPORT_EVERY_S:
            log.warning("aggregator: %d rejections not answered since the last report (over "
                        "%g per device or %g in all per second; latest from %s): counted only",
                        self.suppressed - self._reported, self.per_device_s, self.total_s,
                        device)
            self._reported, self._reported_at = self.suppressed, now
        return False
