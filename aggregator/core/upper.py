"""A site's link to its upper tier, sans-IO (docs/tiers.md): count, hold, adopt.

With [upper] enabled, the site's rounds start from the upper tier's model and stop after
`every_versions` site versions: the core then hands its shell a SiteAggregate (the site's
model now and the samples behind it) for the uplink to send upward, and opens no round
until the upper tier's next model is adopted (AdoptModel) as the site's next version.
What this counts is kept in the store (a note), so a site killed mid-round resumes
holding the same aggregate, and adopting the same upper version twice changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.core.actions import Action, SiteAggregate, VersionMade, VersionReport
from aggregator.core.events import AdoptModel, UpperAsks, UpperFinished
from aggregator.core.pending import PendingRecord
from aggregator.core.schedule import STOPPED_NOTE, RoundSchedule
from aggregator.core.state import CoreState
from aggregator.downlink import representable
from aggregator.store import Store
from aggregator.upper_config import LINK_NOTE, UPPER_NOTE, UpperConfig
from aggregator.version_record import VersionRecord
from edge_client.shared.protocol import Model, encode
from edge_client.shared.protocol.chunking import sha256_hex

log = logging.getLogger("aggregator.service")


@dataclass
class UpperCount:
    """Since the site adopted upper version `upper_version` as its `site_version`."""

    upper_version: int | None = None  # None: no upper model adopted yet
    site_version: int = 0
    asked: bool = False  # the upper tier invited the site to a round from it
    versions: int = 0  # site versions made since
    samples: int = 0  # the samples of the updates those versions used
    updates: int = 0
    loss_sum: float = 0.0  # train_loss weighted by samples

    @classmethod
    def of(cls, note: Any) -> UpperCount:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in note.items() if k in known}) if isinstance(
            note, dict) else cls()


class UpperLink:
    def __init__(self, config: UpperConfig, store: Store) -> None:
        self.enabled = config.enabled
        self.every = config.every_versions
        self.site_id = config.site_id
        self.store = store
        self.count = UpperCount.of(store.note(UPPER_NOTE)) if config.enabled else UpperCount()
        store.set_note(LINK_NOTE, {
            "site_id": config.site_id, "broker": f"{config.host}:{config.port}",
            "federation": config.federation, "every_versions": config.every_versions,
        } if config.enabled else None)

    @property
    def holding(self) -> bool:
        """No new round: no upper model yet, the upper tier has not invited the site to a
        round from it, or this site's aggregate is out."""
        c = self.count
        return self.enabled and (c.upper_version is None or not c.asked
                                 or c.versions >= self.every)

    def waiting_line(self) -> tuple[object, str]:
        c = self.count
        if c.upper_version is None:
            return (None, "the upper tier's model (rounds start from it)")
        if not c.asked:
            return ((c.upper_version, "ask"), f"the upper tier's invitation to a round from "
                    f"its model {c.upper_version} (this site's version {c.site_version})")
        return (c.upper_version, f"the upper tier's model after version {c.upper_version}: "
                f"this site's aggregate of {c.versions} version(s), {c.samples} samples, "
                "is with the uplink")

    def at_start(self, state: CoreState) -> list[Action]:
        """A site restarted while holding: its aggregate again, for the uplink."""
        if self.enabled and self.count.upper_version is not None and self.holding:
            return [self._aggregate(state)]
        return []

    def counted(self, records: list[PendingRecord], state: CoreState) -> list[Action]:
        """A site version was made from `records`: count it; the aggregate when due."""
        if not self.enabled or self.count.upper_version is None:
            return []
        c = self.count
        c.versions += 1
        for r in records:
            c.samples += r.num_samples
            loss = r.metrics.get("train_loss", 0.0)
            c.loss_sum += r.num_samples * (loss if np.isfinite(loss) else 0.0)
        made = state.history[-1].updates if state.history else None
        if not records and made:  # a secure round: one sum, no samples known; weigh by
            c.samples += made     # its contributors
        c.updates += len(records) or (made or 0)
        self.store.set_note(UPPER_NOTE, dataclasses.asdict(c))
        if c.versions < self.every:
            return []
        log.info("aggregator: site version %d is this site's aggregate for the upper tier "
                 "(%d version(s) since upper version %d, %d updates, %d samples); no new "
                 "round until the upper tier's next model", state.version, c.versions,
                 c.upper_version, c.updates, c.samples)
        return [self._aggregate(state)]

    def _aggregate(self, state: CoreState) -> SiteAggregate:
        c = self.count
        assert c.upper_version is not None
        return SiteAggregate(c.upper_version, state.version, dict(state.weights),
                             c.samples, c.versions, c.loss_sum / max(1, c.samples),
                             c.updates)

    def on_event(self, event: AdoptModel | UpperAsks | UpperFinished, state: CoreState,
                 schedule: RoundSchedule) -> list[Action]:
        if not self.enabled:
            log.warning("aggregator: ignored the upper tier's %s: [upper] is not enabled",
                        type(event).__name__)
            return []
        known = self.count.upper_version
        if isinstance(event, UpperFinished):
            return self._finished(event, state, schedule)
        if isinstance(event, UpperAsks):
            if event.upper_version == known and not self.count.asked:
                log.info("aggregator: the upper tier invites this site to a round from its "
                         "model %d: site rounds start", event.upper_version)
                self.count.asked = True
                self.store.set_note(UPPER_NOTE, dataclasses.asdict(self.count))
            return []
        if known is not None and event.upper_version <= known:
            return []  # adopted already (a restart installs it again) or older
        return self._adopt(event, state, schedule)

    def _finished(self, event: UpperFinished, state: CoreState,
                  schedule: RoundSchedule) -> list[Action]:
        """The site ends on the upper tier's last model, whatever it made since."""
        if state.stopped is not None or state.finished:
            return []
        out = self._close_task(state, schedule, "the upper tier's end")
        known, c = self.count.upper_version, self.count
        if known is None or event.upper_version > known or state.version != c.site_version:
            out += self._adopt(AdoptModel(event.weights, event.upper_version, event.at), state,
                              schedule)
        log.info("aggregator: the upper tier finished (%s): so does this site, at version "
                 "%d", event.reason, state.version)
        state.stopped = f"the upper tier finished ({event.reason})"
        self.store.set_note(STOPPED_NOTE, state.stopped)
        return out

    def _adopt(self, event: AdoptModel, state: CoreState,
               schedule: RoundSchedule) -> list[Action]:
        """The upper model becomes the next site version, stored and published as any."""
        out = self._close_task(state, schedule, f"the upper tier's model {event.upper_version}")
        maker = schedule.versions
        version = state.version + 1
        adopted = representable({k: np.asarray(v, dtype=np.float32)
                                 for k, v in event.weights.items()},
                                schedule.config.downlink.full)
        weights, delta = maker.downlink.step(state.weights, adopted, version)
        blob = encode(Model(version=version, tensors=maker.publisher.wire(weights),
                            arch=state.arch))
        info = {"round": version, "updates": 0, "model_bytes": len(blob),
                "delta_bytes": len(delta) if delta else 0, "round_wall_s": 0.0,
                "devices": [], "upper_version": event.upper_version}
        self.store.add_model(version, blob, sha256_hex(blob), info, delta=delta,
                             residual=maker.downlink.state())
        self.count = UpperCount(upper_version=event.upper_version, site_version=version)
        self.store.set_note(UPPER_NOTE, dataclasses.asdict(self.count))
        state.history.append(VersionRecord.from_info(version, event.at.wall, info))
        state.weights, state.version = weights, version
        log.info("aggregator: version %d is the upper tier's model %d; this site's rounds go "
                 "on from it when the upper tier invites the site", version,
                 event.upper_version)
        report = VersionReport(version, version, 0, 0.0, {})
        return [*out, *maker.publisher.model(version, weights, state.arch),
                VersionMade(report, state.snapshot())]

    def _close_task(self, state: CoreState, schedule: RoundSchedule, why: str) -> list[Action]:
        """The open task ends without a version: its updates start from a model `why`
        replaces (they stay stored, marked as in any aborted round)."""
        task = state.task
        if task is None:
            return []
        log.info("aggregator: task %s closed without a version: %s came first (%d pending "
                 "updates not used)", task.task_id, why, len(state.pending))
        self.store.abort_task(task.task_id)
        schedule.driver.not_used(task.task_id, f"{why} came first")
        state.pending.clear()
        state.task = None
        return schedule.invitations.close()
