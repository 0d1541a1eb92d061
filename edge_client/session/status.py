"""The device's retained status: what it says about itself, and when to say it again."""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_client.eligibility import Decision
from edge_client.session.actions import Publish
from edge_client.session.events import Instant
from edge_client.shared.protocol import Status, Topics, encode
from edge_client.shared.protocol.drift import DriftReport

log = logging.getLogger("edge_client.client")  # one logger for all the device says
DRIFT_RESEND_S = 5.0  # a status goes out early when the drift scores moved, at most this often
DRIFT_MOVE = 0.05  # ... by this much (PSI or accuracy)


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
        # The Predictor's drift scores (EdgeClient sets it when given one); read, not kept
        self.drift: Callable[[], DriftReport | None] | None = None
        self._drift_sent: DriftReport | None = None
        # Why the latest model was refused (too large, an architecture it cannot run):
        # said as the status's reason until a model installs (session.py)
        self.refusal: str | None = None

    def payload(self, online: bool, model_version: int | None, wall: float,
                reason: str | None = None) -> bytes:
        """The status, signed when the device has a key (also the last will, sealed once
        at start: the aggregator takes "offline" statuses at any age)."""
        d = self.decision
        battery = d.facts.get("battery_pct") if d is not None else None
        refused = self.refusal  # a model it cannot run: not eligible for its tasks
        return self.seal(encode(Status(
            device_id=self.device_id, online=online,
            eligible=(d.eligible if d is not None else True) and refused is None,
            reason=reason if reason is not None else (
                refused or (d.reason if d is not None else "")),
            model_version=model_version, time=wall,
            battery_pct=float(battery) if isinstance(battery, int | float) else None,
            session=self.session_id, drift=self._drift_now(),
            global_accuracy=_figure(self.figures, "global_accuracy"),
            personal_accuracy=_figure(self.figures, "personal_accuracy"),
            cluster=_cluster(self.figures))))

    def _drift_now(self) -> DriftReport | None:
        report = self.drift() if self.drift is not None else None
        self._drift_sent = report
        return report

    def refuse(self, version: int, why: str, held: int | None) -> bool:
        """Say from now on that model `version` was refused (the device keeps `held` and is
        not eligible for the refused model's tasks); False if that is already said."""
        refusal = (f"model refused: version {version}: {why}; "
                   f"{'serving version ' + str(held) if held is not None else 'no model'}")
        if refusal == self.refusal:
            return False
        log.info("%s: %s", self.device_id, refusal)
        self.refusal = refusal
        return True

    def publish(self, online: bool, model_version: int | None, now: Instant,
                reason: str | None = None) -> Publish:
        self._sent_at = now.monotonic
        return Publish(self.topic, self.payload(online, model_version, now.wall, reason),
                       retain=True)

    def stale(self, now: Instant) -> bool:
        """Due again, so a signed retained status stays within the aggregator's clock skew,
        or early because the drift scores moved."""
        since = now.monotonic - self._sent_at
        return since >= self.interval_s or (since >= DRIFT_RESEND_S and self._drift_moved())

    def _drift_moved(self) -> bool:
        if self.drift is None:
            return False
        return drift_moved(self._drift_sent, self.drift())


def drift_moved(before: DriftReport | None, now: DriftReport | None) -> bool:
    """Whether the aggregator should hear of `now`, having heard `before`."""
    if now is None or before is None:
        return now is not before
    for old, new in ((before.psi_max, now.psi_max), (before.accuracy, now.accuracy)):
        if (old is None) != (new is None):
            return True
        if old is not None and new is not None and abs(new - old) >= DRIFT_MOVE:
            return True
    return False


def _figure(figures: dict[str, float], key: str) -> float | None:
    value = figures.get(key)
    return float(value) if value is not None and 0.0 <= value <= 1.0 else None


def _cluster(figures: dict[str, float]) -> int | None:
    value = figures.get("cluster")
    return int(value) if value is not None else None
