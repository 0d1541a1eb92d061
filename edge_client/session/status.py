"""The device's retained status: what it says about itself, and when to say it again."""

from __future__ import annotations

from collections.abc import Callable

from edge_client.eligibility import Decision
from edge_client.session.actions import Publish
from edge_client.session.events import Instant
from edge_client.shared.protocol import Status, Topics, encode


class StatusBoard:
    """Builds statuses from the latest eligibility decision; remembers when one went out."""

    def __init__(self, device_id: str, topics: Topics, seal: Callable[[bytes], bytes],
                 session_id: str, interval_s: float) -> None:
        self.device_id = device_id
        self.topic = topics.status(device_id)
        self.seal = seal
        self.session_id = session_id  # tells this run's statuses from another's
        self.interval_s = interval_s
        self.decision: Decision | None = None
        # global_accuracy, personal_accuracy, cluster of the latest fit (personalised or
        # clustered federations); empty otherwise, and the status is as it always was
        self.figures: dict[str, float] = {}
        self._sent_at = 0.0  # monotonic time of the last status published

    def payload(self, online: bool, model_version: int | None, wall: float,
                reason: str | None = None) -> bytes:
        """The status, signed when the device has a key (also the last will, sealed once
        at start: the aggregator takes "offline" statuses at any age)."""
        d = self.decision
        battery = d.facts.get("battery_pct") if d is not None else None
        return self.seal(encode(Status(
            device_id=self.device_id, online=online,
            eligible=d.eligible if d is not None else True,
            reason=reason if reason is not None else (d.reason if d is not None else ""),
            model_version=model_version, time=wall,
            battery_pct=float(battery) if isinstance(battery, int | float) else None,
            session=self.session_id, global_accuracy=_figure(self.figures, "global_accuracy"),
            personal_accuracy=_figure(self.figures, "personal_accuracy"),
            cluster=_cluster(self.figures))))

    def publish(self, online: bool, model_version: int | None, now: Instant,
                reason: str | None = None) -> Publish:
        self._sent_at = now.monotonic
        return Publish(self.topic, self.payload(online, model_version, now.wall, reason),
                       retain=True)

    def stale(self, now: Instant) -> bool:
        """Due again, so a signed retained status stays within the aggregator's clock skew."""
        return now.monotonic - self._sent_at >= self.interval_s


def _figure(figures: dict[str, float], key: str) -> float | None:
    value = figures.get(key)
    return float(value) if value is not None and 0.0 <= value <= 1.0 else None


def _cluster(figures: dict[str, float]) -> int | None:
    value = figures.get("cluster")
    return int(value) if value is not None else None
