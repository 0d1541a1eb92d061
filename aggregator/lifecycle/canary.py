"""One candidate's canary evaluation as the aggregator holds it: who evaluates it, since
when, and the reports taken so far (stored, so a restart resumes the same decision)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from aggregator.ingest import verified_body
from aggregator.store import Store
from edge_client.shared.protocol import RemoteProtocolError
from edge_client.shared.protocol.rollout import CanaryReport, decode_report
from edge_client.shared.security import AggregatorSecurity

log = logging.getLogger("aggregator.service")
CANARY_NOTE = "canary"  # the open canary (JSON), for restarts and the dashboard


@dataclass(frozen=True)
class Canary:
    candidate: int
    production: int
    canaries: tuple[str, ...]
    started_at: float  # wall time

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "canaries": list(self.canaries)}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Canary:
        return cls(int(row["candidate"]), int(row["production"]),
                   tuple(str(d) for d in row["canaries"]), float(row["started_at"]))


def open_report(canary: Canary | None, device: str, payload: bytes, store: Store,
                security: AggregatorSecurity) -> CanaryReport:
    """The report `device` sent, checked: signed by its key when security is on, about
    the open canary, from one of its canary devices. RemoteProtocolError otherwise."""
    key = store.device_key(device) if security.enabled else None
    body = verified_body(payload, device, key, security.enabled, what="canary report")
    report = decode_report(body)
    if report.device_id != device:
        raise RemoteProtocolError(f"canary report names device {report.device_id!r} but "
                                  f"came on {device!r}'s topic")
    if canary is None:
        raise RemoteProtocolError(f"canary report on version {report.candidate}, but no "
                                  "canary is open")
    if (report.candidate, report.production) != (canary.candidate, canary.production):
        raise RemoteProtocolError(
            f"canary report compares version {report.candidate} with {report.production}; "
            f"the open canary is {canary.candidate} against {canary.production}")
    if device not in canary.canaries:
        raise RemoteProtocolError(f"{device!r} is not a canary device for version "
                                  f"{canary.candidate}")
    return report


def report_figures(report: CanaryReport) -> dict[str, Any]:
    """What is stored of a report: the figures the rule reads, nothing else."""
    return {k: v for k, v in asdict(report).items() if k != "time"}
