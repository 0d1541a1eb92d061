"""Who takes part and when a model version is due: sync rounds or buffered async.

Sans-IO: each mode takes what the service knows (online devices, the stored task of an
update, the number of pending updates, the time) and returns decisions; the service
does the MQTT and SQLite work. Both modes answer the same four questions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from aggregator.concurrency import InFlight, staleness_advice
from aggregator.config import AggregatorConfig
from aggregator.states import RoundDue, TaskState, UpdateState
from edge_client.shared.protocol import Task, Update
from edge_client.shared.protocol.cohort import EVERYONE, draw
from edge_client.shared.protocol.lean_update import LEAN_UPDATE_VERSION
from edge_client.shared.protocol.states import AckStatus

log = logging.getLogger("aggregator.service")


@dataclass(frozen=True)
class Verdict:
    """What to do with an incoming update: store it as `state`, or reject with `reason`."""

    ack: AckStatus  # accepted, late or rejected here; the service adds duplicate
    state: UpdateState = UpdateState.PENDING  # how it is stored when not rejected
    reason: str = ""


ACCEPT = Verdict(AckStatus.ACCEPTED, UpdateState.PENDING)


@dataclass(frozen=True)
class TaskInfo:
    """What the store knows of the task an update names."""

    mode: str
    model_version: int
    state: TaskState | str
    task: Task | None = None  # as issued (its invitation); None: every device

    def invites(self, device_id: str) -> bool:
        return self.task is None or self.task.invites(device_id)


class SyncRounds:
    """Rounds with over-selection, a target count, a deadline and a minimum fraction."""

    mode = "sync"

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.sync = config.sync
        self._rng = random.Random(config.seed)
        self._waiting_since: float | None = None
        self.timeout_s = config.sync.round_timeout_s  # grows after aborted rounds

    def plan(self, round_no: int, version: int, online: list[str], now: float,
             proven: Collection[str] | None = None) -> Task | None:
        """A task for the next round, or None while too few devices are online.

        The task names no device: it carries a cohort (edge_client/shared/protocol/
        cohort.py) that admits `invite_count` of `online`, drawn by a seed from this
        mode's random stream. `proven`: the devices with a track record (None: all of
        them). When the draw holds fewer proven devices than the round needs, the next
        proven ones are invited by name, at most as many as the round needs, so newcomers
        that never show up cannot hold the round (aggregator/presence.py): not in the
        task, which stays the same size, but in `members`, and each gets an Invitation on
        its own topic (aggregator/core/invitations.py).
        """
        target = self.sync.target_updates
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        enough = len(online) >= target or (
            online and len(online) >= self.min_updates()
            and waited >= self.sync.wait_for_devices_s)
        if not enough:
            return None
        self._waiting_since = None
        invite_count = min(len(online), math.ceil(target * (1 + self.sync.over_selection)))
        drawn = draw(self._rng.randrange(EVERYONE), online, invite_count, proven)
        return Task(task_id=f"r{round_no}-{uuid.uuid4().hex[:8]}", mode="sync",
                    round=round_no, model_version=version, train=self.config.train,
                    deadline=now + self.timeout_s, cohort=drawn.cohort,
                    invited=None, members=drawn.members,
                    chunk_size=self.config.chunk_size, codec=_uplink(self.config),
                    **_heterogeneity(self.config), update_version=LEAN_UPDATE_VERSION)

    def reinvite(self, task: Task, online: list[str], now: float) -> Task | None:
        """A sync round's invitation is fixed when it opens."""
        return None

    def wants_reinvite(self, now: float) -> bool:
        return False

    def min_updates(self) -> int:
        return max(1, math.ceil(self.sync.min_fraction * self.sync.target_updates))

    def round_aborted(self) -> None:
        """Too few updates by the deadline: give the next round longer, up to the cap."""
        self.timeout_s = min(self.sync.longest_round_timeout_s,
                             self.timeout_s * self.sync.deadline_growth)

    def version_made(self) -> None:
        """The fleet kept up: deadlines go back to round_timeout_s."""
        self.timeout_s = self.sync.round_timeout_s

    def judge(self, update: Update, task: TaskInfo, open_task: Task | None,
              current_version: int) -> Verdict:
        if task.mode != "sync":
            return Verdict(AckStatus.REJECTED, reason="task is not a sync round")
        if open_task is None or update.task_id != open_task.task_id:
            # late means invited, but after the round closed; others were never asked
            if not task.invites(update.device_id):
                return Verdict(AckStatus.REJECTED, reason="device was not invited to this round")
            return Verdict(AckStatus.LATE, UpdateState.LATE, "the round has closed")
        if not open_task.invites(update.device_id):
            return Verdict(AckStatus.REJECTED, reason="device was not invited to this round")
        if update.base_version != open_task.model_version:
            return Verdict(AckStatus.REJECTED, reason=f"base version {update.base_version} "
                           f"is not the round's {open_task.model_version}")
        return ACCEPT

    def due(self, pending: int, open_task: Task, now: float) -> RoundDue:
        """Aggregate, wait, or abort (the deadline passed with too few updates)."""
        if pending >= self.sync.target_updates:
            return RoundDue.AGGREGATE
        if open_task.deadline is not None and now >= open_task.deadline:
            return RoundDue.AGGREGATE if pending >= self.min_updates() else RoundDue.ABORT
        return RoundDue.WAIT

    def staleness_factor(self, update: Update, current_version: int) -> float:
        return 1.0

    @property
    def server_lr(self) -> float:
        return 1.0


class BufferedAsync:
    """FedBuff: every device may train on the newest model; aggregate every K updates.

    Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation",
    https://arxiv.org/abs/2106.06639
    """

    mode = "async"
    timeout_s = None  # async tasks have no deadline

    def __init__(self, config: AggregatorConfig) -> None:
        self.config = config
        self.cfg = config.async_
        self.flight = InFlight(config.async_)  # the concurrency bound (concurrency.py)
        self._rng = random.Random(config.seed)
        self._held_said_at: float | None = None
        advice = staleness_advice(config.async_)
        if advice is not None:
            log.warning("aggregator: %s", advice)

    def plan(self, round_no: int, version: int, online: list[str], now: float,
             proven: Collection[str] | None = None) -> Task | None:
        """The task of `version`: open to every device, or, under [async] concurrency, a
        cohort of as many idle devices as there is room for."""
        task = Task(task_id=f"v{version}-async", mode="async", round=round_no,
                    model_version=version, train=self.config.train, deadline=None,
                    invited=None, chunk_size=self.config.chunk_size, codec=_uplink(self.config),
                    **_heterogeneity(self.config), update_version=LEAN_UPDATE_VERSION)
        if not self.cfg.concurrency:
            return task
        self.flight.refresh(version, online)
        idle = self.flight.idle(online)
        drawn = draw(self._rng.randrange(EVERYONE), idle, self.flight.room, open_ended=False)
        self.flight.invited(drawn.members, version, now)
        self._say_held(task, len(idle) - len(drawn.members), now, force=True)
        return dataclasses.replace(task, cohort=drawn.cohort, members=drawn.members)

    def reinvite(self, task: Task, online: list[str], now: float) -> Task | None:
        """The open task widened to idle devices as updates freed places, or None."""
        if task.cohort is None:
            return None
        self.flight.refresh(task.model_version, online)
        idle = self.flight.idle(online)
        cohort, added = self.flight.widen(task.cohort, idle)
        self.flight.invited(added, task.model_version, now)  # also: not again within 1 s
        self._say_held(task, len(idle) - len(added), now, force=False)
        if not added:
            return None
        members = tuple(sorted({*(task.members or ()), *added}))
        return dataclasses.replace(task, cohort=cohort, members=members)

    def wants_reinvite(self, now: float) -> bool:
        return self.flight.may_widen(now)

    def _say_held(self, task: Task, held: int, now: float, force: bool) -> None:
        """Devices left idle by the bound, at INFO: at every version, and while it lasts,
        every waiting_log_s."""
        if held <= 0:
            return
        if not force and self._held_said_at is not None and \
                now - self._held_said_at < self.config.waiting_log_s:
            return
        self._held_said_at = now
        log.info("aggregator: task %s: %d available device(s) not invited for now: %d "
                 "of [async] concurrency = %d are training; more are invited as their "
                 "updates come in", task.task_id, held, len(self.flight),
                 self.cfg.concurrency)

    def judge(self, update: Update, task: TaskInfo, open_task: Task | None,
              current_version: int) -> Verdict:
        """Also frees the device's place under the concurrency bound, whatever the
        verdict: it is done with its invitation."""
        self.flight.answered(update.device_id)
        if task.mode != "async":
            return Verdict(AckStatus.REJECTED, reason="task is not an async task")
        if update.base_version != task.model_version:
            return Verdict(AckStatus.REJECTED, reason="base version does not match the task")
        staleness = current_version - update.base_version
        if staleness > self.cfg.max_staleness:
            return Verdict(AckStatus.REJECTED, reason=f"staleness {staleness} exceeds the maximum "
                                              f"of {self.cfg.max_staleness}")
        return ACCEPT

    def due(self, pending: int, open_task: Task, now: float) -> RoundDue:
        return RoundDue.AGGREGATE if pending >= self.cfg.buffer_size else RoundDue.WAIT

    def round_aborted(self) -> None:
        """Async tasks have no deadline to grow."""

    def version_made(self) -> None:
        """Async tasks have no deadline to reset."""

    def staleness_factor(self, update: Update, current_version: int) -> float:
        staleness = max(0, current_version - update.base_version)
        return 1.0 / (1.0 + staleness) ** self.cfg.staleness_exponent

    @property
    def server_lr(self) -> float:
        return self.cfg.server_lr


def _uplink(config: AggregatorConfig) -> dict | None:
    return None if config.uplink is None else config.uplink.to_wire()


Participation = SyncRounds | BufferedAsync


def participation_for(config: AggregatorConfig) -> Participation:
    return SyncRounds(config) if config.mode == "sync" else BufferedAsync(config)


def _heterogeneity(config: AggregatorConfig) -> dict[str, Any]:
    """The task's personalisation and cluster count (docs/heterogeneity.md); neither is
    sent when off, so plain tasks stay as they were."""
    return {"personal": config.personalize.wire(),
            "clusters": config.clusters.k if config.clusters.on else None}
