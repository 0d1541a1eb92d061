"""Drift-triggered retraining (issue 18, "Drift"): a rule over the drift scores devices
report in their statuses (edge_client/shared/protocol/drift.py) that opens a retraining
campaign when enough of them drift.

A campaign adds `campaign_rounds` versions to the federation's plan: a finished
federation opens rounds again, a running one makes that many more than it meant to.
With `rounds = 0` (no limit) training goes on anyway, and the campaign is a record of
when and why the fleet drifted. Campaigns are kept in the store (notes), so a restarted
aggregator finishes the one it had open. A device starts at most one campaign per
episode of drift: it counts again only after it reported being back under the rule.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from aggregator.store import Store
from edge_client.shared.protocol import Status
from edge_client.shared.protocol.drift import DriftReport

log = logging.getLogger("aggregator.service")
RULE_NOTE = "drift_rule"  # the rule as configured, for the dashboard
CAMPAIGNS_NOTE = "drift_campaigns"  # the latest campaigns, oldest first
COUNTED_NOTE = "drift_counted"  # devices whose current drift already opened a campaign
KEEP_CAMPAIGNS = 20
STATISTICS = ("max", "mean")


@dataclass
class DriftConfig:
    """[drift]: when devices' drift opens a retraining campaign (docs/configuration.md).
    Off unless psi_threshold or accuracy_floor is set."""

    psi_threshold: float | None = None  # a device drifts when its PSI passes this (0.25)
    statistic: str = "max"  # which PSI over the features: "max" or "mean"
    accuracy_floor: float | None = None  # ... or its accuracy on labels falls below this
    min_labelled: int = 20  # labels a device needs before its accuracy counts
    min_devices: int = 1  # drifting devices that open a campaign
    min_fraction: float = 0.0  # ... and their share of the devices reporting drift
    campaign_rounds: int = 3  # versions a campaign adds to the plan

    def __post_init__(self) -> None:
        if self.psi_threshold is not None and not (
                isinstance(self.psi_threshold, int | float) and self.psi_threshold > 0):
            raise ValueError(f"drift.psi_threshold must be a number > 0, "
                             f"not {self.psi_threshold!r}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"drift.statistic must be 'max' or 'mean', not {self.statistic!r}")
        if self.accuracy_floor is not None and not 0 < self.accuracy_floor <= 1:
            raise ValueError(f"drift.accuracy_floor must be in (0, 1], "
                             f"not {self.accuracy_floor!r}")
        if self.min_labelled < 1 or self.min_devices < 1 or self.campaign_rounds < 1:
            raise ValueError("drift: min_labelled, min_devices and campaign_rounds must be >= 1")
        if not 0 <= self.min_fraction <= 1:
            raise ValueError(f"drift.min_fraction must be from 0 to 1, not {self.min_fraction}")

    @property
    def enabled(self) -> bool:
        return self.psi_threshold is not None or self.accuracy_floor is not None

    def why_drifting(self, report: DriftReport) -> str | None:
        """Why this report counts as drift, or None."""
        value = report.psi_max if self.statistic == "max" else report.psi_mean
        if self.psi_threshold is not None and value is not None and value > self.psi_threshold:
            return f"PSI {self.statistic} {value:.3g} > {self.psi_threshold:g}"
        if (self.accuracy_floor is not None and report.accuracy is not None
                and report.labelled >= self.min_labelled
                and report.accuracy < self.accuracy_floor):
            return f"accuracy {report.accuracy:.3f} < {self.accuracy_floor:g}"
        return None


@dataclass(frozen=True)
class Campaign:
    """One retraining campaign: when and why it opened, and until which version."""

    number: int
    opened_at: float  # unix time
    at_version: int
    until_version: int | None  # None: the federation has no last version (rounds = 0)
    devices: tuple[str, ...]  # the drifting devices that opened it
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "devices": list(self.devices)}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Campaign:
        return cls(number=int(row["number"]), opened_at=float(row["opened_at"]),
                   at_version=int(row["at_version"]),
                   until_version=None if row.get("until_version") is None
                   else int(row["until_version"]),
                   devices=tuple(str(d) for d in row["devices"]), reason=str(row["reason"]))

    def open_at(self, version: int) -> bool:
        return self.until_version is not None and version < self.until_version


def campaigns(store: Store) -> list[Campaign]:
    """The stored campaigns, oldest first (malformed notes read as none)."""
    try:
        return [Campaign.from_json(r) for r in store.note(CAMPAIGNS_NOTE) or []]
    except (TypeError, KeyError, ValueError):
        return []


class DriftWatch:
    """The rule, fed every checked status by the core."""

    def __init__(self, config: DriftConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.latest: dict[str, tuple[bool, str | None]] = {}  # device: online, why drifting
        self.campaigns = campaigns(store)
        self.counted: set[str] = set(store.note(COUNTED_NOTE) or [])
        store.set_note(RULE_NOTE, {**asdict(config), "enabled": config.enabled})

    def resumed_rounds(self, rounds: int) -> int:
        """The plan after a restart: a campaign still open keeps its extra versions."""
        last = self.campaigns[-1] if self.campaigns else None
        if rounds and last is not None and last.until_version is not None:
            return max(rounds, last.until_version)
        return rounds

    def on_status(self, status: Status, wall: float, version: int, rounds: int,
                  stopped: str | None) -> Campaign | None:
        """Take one status; a campaign if the rule opens one now."""
        if status.drift is None and status.device_id not in self.latest:
            return None
        why = None if status.drift is None else self.config.why_drifting(status.drift)
        before = self.latest.get(status.device_id, (False, None))[1]
        self.latest[status.device_id] = (status.online, why)
        if (why is None) != (before is None):  # said when it changes, not at every status
            log.info("aggregator: %s %s; %d device(s) drift now (a campaign needs %d)",
                     status.device_id, f"drifts: {why}" if why else "no longer drifts",
                     len(self.drifting()), self.config.min_devices)
        if why is None and status.drift is not None and status.device_id in self.counted:
            self.counted.discard(status.device_id)  # back under the rule: episode over
            self.store.set_note(COUNTED_NOTE, sorted(self.counted))
        if not self.config.enabled or why is None:
            return None
        return self._maybe_open(wall, version, rounds, stopped)

    def _count(self, devices: Iterable[str]) -> None:
        """These devices' current drift is dealt with: they open no campaign until they
        were back under the rule."""
        fresh = set(devices) - self.counted
        if fresh:
            self.counted |= fresh
            self.store.set_note(COUNTED_NOTE, sorted(self.counted))

    def drifting(self) -> dict[str, str]:
        """Online devices whose latest scores count as drift, with why."""
        return {d: why for d, (online, why) in self.latest.items() if online and why}

    def _maybe_open(self, wall: float, version: int, rounds: int,
                    stopped: str | None) -> Campaign | None:
        c = self.config
        drifting = self.drifting()
        reporting = sum(1 for online, _ in self.latest.values() if online)
        fresh = [d for d in drifting if d not in self.counted]
        if not fresh or len(drifting) < c.min_devices or (
                len(drifting) < c.min_fraction * reporting):
            return None
        if self.campaigns and self.campaigns[-1].open_at(version):
            self._count(drifting)  # one at a time: the open one retrains them too
            return None
        names = sorted(drifting)
        reason = (f"{len(names)} of {reporting} device(s) reporting drift passed the rule "
                  f"(min_devices {c.min_devices}, min_fraction {c.min_fraction:g}): "
                  + "; ".join(f"{d}: {drifting[d]}" for d in names[:5])
                  + (f" and {len(names) - 5} more" if len(names) > 5 else ""))
        if stopped is not None:
            log.info("aggregator: no retraining campaign although %s: training stopped (%s)",
                     reason, stopped)
            self._count(names)
            return None
        until = max(rounds, version) + c.campaign_rounds if rounds else None
        campaign = Campaign(number=(self.campaigns[-1].number + 1) if self.campaigns else 1,
                            opened_at=wall, at_version=version, until_version=until,
                            devices=tuple(names), reason=reason)
        self.campaigns = [*self.campaigns, campaign][-KEEP_CAMPAIGNS:]
        self.store.set_note(CAMPAIGNS_NOTE, [k.to_json() for k in self.campaigns])
        self._count(names)
        plan = (f"training goes on to version {until}" if until is not None
                else "training runs without a last version anyway")
        log.info("aggregator: retraining campaign %d opened at version %d: %s; %s",
                 campaign.number, version, reason, plan)
        return campaign
