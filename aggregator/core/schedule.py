"""The core's clock-driven half: at every tick, open the next round, step the open one
through its driver, end it with a version or start it again, or say what it waits for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, ClearRetained
from aggregator.core.events import Instant, Tick
from aggregator.core.ingest import UpdateIngest
from aggregator.core.invitations import Invitations
from aggregator.core.models import ModelPublisher
from aggregator.core.plain_round import updates_wanted
from aggregator.core.rounds import Decision, RoundDriver
from aggregator.core.state import CoreState
from aggregator.core.versions import VersionMaker
from aggregator.narrator import Narrator, Waiting
from aggregator.participation import Participation
from aggregator.presence import Presence
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.status import FINISHED_NOTE, HEARTBEAT_NOTE, HEARTBEAT_S
from aggregator.store import Store
from edge_client.shared.protocol import Task, Topics, encode

if TYPE_CHECKING:
    from aggregator.core.upper import UpperLink
    from aggregator.lifecycle.driver import LifecycleDriver as Lifecycle

log = logging.getLogger("aggregator.service")
STOPPED_NOTE = "stopped"  # why training ended early, for the dashboard


class RoundSchedule:
    def __init__(self, config: AggregatorConfig, store: Store, topics: Topics,
                 state: CoreState, narrator: Narrator, participation: Participation,
                 presence: Presence, privacy: ServicePrivacy, driver: RoundDriver,
                 ingest: UpdateIngest, versions: VersionMaker,
                 publisher: ModelPublisher, invitations: Invitations,
                 outbox: list[Action], upper: UpperLink) -> None:
        self.config = config
        self.upper = upper  # a site of an upper tier holds its rounds (docs/tiers.md)
        self.store = store
        self.topics = topics
        self.state = state
        self.narrator = narrator
        self.participation = participation
        self.presence = presence
        self.privacy = privacy
        self.driver = driver
        self.ingest = ingest
        self.versions = versions
        self.publisher = publisher
        self.invitations = invitations  # the named top-ups of the open task
        self.out = outbox  # the core's: what is decided stays decided if a later step fails
        # What limit the broker may be at, for the waiting line while not connected; the
        # shell sets it (aggregator/broker_limits.py reads /proc), the core never does I/O.
        self.broker_hint: Callable[[], str] = lambda: ""
        # Stages and canaries (aggregator/lifecycle/driver.py): it ticks first, and while
        # a candidate is under canary evaluation no round opens (it says why at INFO).
        self.lifecycle: Lifecycle | None = None

    def tick(self, event: Tick) -> None:
        at, state = event.at, self.state
        if at.wall - state.heartbeat_at >= HEARTBEAT_S:  # /api/health: the loop runs
            state.heartbeat_at = at.wall
            self.store.set_note(HEARTBEAT_NOTE, at.wall)
        self.ingest.expire(at)
        if self.lifecycle is not None:
            self.out += self.lifecycle.tick(at)
        if not event.connected:
            self.narrator.waiting(Waiting.BROKER, lambda: (state.link_problem, (
                f"not connected to {self.config.host}:{self.config.port} "
                f"({state.link_problem}){_hint(self.broker_hint())}")))
        elif state.paused:
            self.narrator.waiting(Waiting.PAUSED, lambda: (None, "training is paused; resume "
                                  "it from the dashboard or POST /api/admin/training"))
        elif self._holds():
            return
        elif state.finished:
            if not state.done_published:  # also when started with every version made
                self._publish_done()
        elif state.task is None and self.upper.holding:
            self.narrator.waiting(Waiting.UPPER, self.upper.waiting_line)
        elif state.task is None:
            if at.mono - state.connected_at >= self.config.presence_settle_s:
                self.open_task(at)  # retained statuses of online devices are in
        else:
            self._reinvite(state.task, at)
            self._step_round(state.task, at)

    def _reinvite(self, task: Task, at: Instant) -> None:
        """Async under [async] concurrency: widen the open task as updates free places
        (aggregator/concurrency.py); the same task id, re-published and re-stored."""
        if not self.participation.wants_reinvite(at.wall):
            return
        widened = self.participation.reinvite(task, self._candidates(), at.wall)
        if widened is None:
            return
        self.store.reissue_task(widened, encode(widened))
        self.state.task = widened
        self.out.append(self.publisher.task(widened))

    def _step_round(self, task: Task, at: Instant) -> None:
        """Ask the round's driver; end the round with a version or start it again."""
        state = self.state
        step = self.driver.tick(task, state.pending, at)
        self.out += step.outgoing
        if step.decision is Decision.WAIT:
            return
        self._round_over(task.task_id, at)
        if step.decision is Decision.AGGREGATE:
            records, made = list(state.pending.records), state.version
            self.out += self.versions.make(state, at)
            if state.version > made:
                self.out += self.upper.counted(records, state)
            self.open_task(at)
            return
        self.participation.round_aborted()
        log.warning("aggregator: %s", self.driver.abort_line(task, state.pending))
        self.store.abort_task(task.task_id)
        state.pending.clear()
        state.task = None

    def open_task(self, at: Instant) -> None:
        """Plan the next round or async task and publish it, or say why not yet."""
        state = self.state
        if state.finished or self.upper.holding or self._holds():
            return
        candidates = self._candidates()
        # no top-up when DP accounting or secure sizes assume uniformly drawn devices
        proven = (self.presence.proven if self.driver.proven_matters()
                  and not self.config.privacy.enabled else None)
        task = self.participation.plan(state.version + 1, state.version, candidates, at.wall,
                                       proven=proven)
        if task is None:
            self.narrator.waiting(Waiting.DEVICES, lambda: self.narrator.for_devices(
                state.version + 1, len(candidates), updates_wanted(self.config)))
            return
        task, stop = self.privacy.admit(task, len(candidates))
        if stop is not None:
            log.warning("aggregator: training stops at version %d: %s", state.version, stop)
            state.stopped = stop
            self.store.set_note(STOPPED_NOTE, stop)
            return
        task = self.driver.open(task, sum(w.size for w in state.weights.values()), at)
        self.store.add_task(task, encode(task))
        state.task, state.task_opened = task, at.mono
        self.presence.round_opened(task)
        self.out += self.invitations.open(task)  # first: a device has it when the task comes
        self.out.append(self.publisher.task(task))
        self.narrator.round_opened(task, len(candidates))

    def _holds(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.holds()

    def task_again(self) -> list[Action]:
        """The open task and its invitations, published again (after a reconnect: the
        broker may have lost what it retained)."""
        if self.state.task is None:
            return []
        return [*self.invitations.republish(), self.publisher.task(self.state.task)]

    def _candidates(self) -> list[str]:
        """Devices that may be invited: available and not benched, and (with security)
        still enrolled, so a revocation made from another process counts from the next
        task on."""
        candidates = self.presence.candidates()
        if not self.config.security.enabled:
            return candidates
        return [d for d in candidates if self.store.device_key(d) is not None]

    def _round_over(self, task_id: str, at: Instant) -> None:
        """Clear the round's invitations still out; count its no-shows; clear the retained
        statuses of benched newcomers (never seen with an update), so they do not come
        back at every start."""
        self.out += self.invitations.close()
        for device in self.presence.round_ended(task_id, at.mono):
            self.out.append(ClearRetained(self.topics.status(device)))

    def _publish_done(self) -> None:
        state = self.state
        self.out.append(self.publisher.done(state.version))
        if not self.store.note(FINISHED_NOTE):
            why = state.stopped or f"{state.version} of {self.config.rounds} versions made"
            log.info("aggregator: training finished at version %d (%s); devices are told "
                     "to stop", state.version, why)
        state.done_published = True
        self.store.set_note(FINISHED_NOTE, True)  # `fedge status`: every round is done


def _hint(line: str) -> str:
    return f"; {line}" if line else ""
