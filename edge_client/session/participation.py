"""A device's part in one task: the checks before training, the fit, the update made of
it, the outbox write, the first send. Part of the DeviceSession state machine, split out
so each class stays readable; it reads and updates the session's pieces.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_client.eligibility import Decision
from edge_client.session.actions import (
    Action,
    CheckPurpose,
    SaveResidual,
    StartFit,
    StoreUpdate,
)
from edge_client.session.events import FitFinished, Instant, UpdateNotStored, UpdateStored
from edge_client.session.held_model import copy_weights
from edge_client.session.partial_work import deadline_reached, keep_early_stop
from edge_client.session.update_maker import FeedbackSnapshot
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.codecs.dp import DeviceDp
from edge_client.shared.protocol import Invitation, RemoteProtocolError, Task, Update
from edge_client.shared.protocol.messages import encode_update
from edge_client.shared.protocol.reasons import reason_kind
from edge_client.shared.protocol.tensors import Weights, flatten_sorted

if TYPE_CHECKING:
    from edge_client.session.session import DeviceSession

log = logging.getLogger("edge_client.client")  # one logger for all the device says


@dataclass(frozen=True)
class Plan:
    """A task this device is about to train for, with its settings read."""

    task: Task
    codec: CodecConfig | None
    dp: DeviceDp | None
    secagg: Any | None  # SecAggTask; typed loosely so a plain device never imports it


@dataclass
class RunningFit:
    plan: Plan
    base: Weights = field(repr=False)  # the global model the fit started from
    feedback: FeedbackSnapshot = field(repr=False)
    at_deadline: bool = False  # partial_work: the session stopped it at the task's deadline


@dataclass(frozen=True)
class Storing:
    """An update made and handed to the outbox (StoreUpdate), not yet published."""

    task: Task
    update: Update = field(repr=False)
    payload: bytes = field(repr=False)
    dense_bytes: int
    feedback: FeedbackSnapshot = field(repr=False)


class Participation:
    def __init__(self, session: DeviceSession) -> None:
        self.session = session
        self._plan: Plan | None = None  # checked, waiting for the eligibility decision
        self._fit: RunningFit | None = None
        self._storing: Storing | None = None
        self.invited_to = ""  # the task id of the latest Invitation by name

    @property
    def fitting(self) -> bool:
        return self._fit is not None

    def must_stop(self, eligible: bool, wall: float) -> bool:
        """The running fit is to stop now: the device is no longer eligible, or (partial
        work) its task's deadline is near (partial_work.py)."""
        if self._fit is None:
            return False
        return not eligible or deadline_reached(self.session, self._fit, wall)

    def skip(self, task: Task, reason: str) -> None:
        """Count a task this device could not do, once per task and reason."""
        session = self.session
        if session.book.first_skip(task.task_id):
            session.stats.skipped[reason_kind(reason)] += 1
            if reason != "not invited":  # said with the task already
                session.narrator.skipped(task, reason)

    def invites(self, task: Task) -> bool:
        """Whether `task` invites this device: by its cohort or names, or by an
        Invitation on this device's own topic (aggregator/core/invitations.py)."""
        return task.invites(self.session.me) or (
            not task.done and task.task_id == self.invited_to)

    def on_task(self, task: Task) -> list[Action]:
        s = self.session
        s.task = task
        done_here = s.book.is_done(task.task_id)
        s.narrator.task(task, done_here, s.config.exit_when_done, self.invites(task))
        if task.done or done_here:
            return []
        # Every round a device sits out is counted once, with why (the demo summary).
        return [s.ask(CheckPurpose.TASK)]

    def on_invitation(self, invitation: Invitation, asking: bool) -> list[Action]:
        """An invitation by name: for the current task, train as if in its cohort; for
        one not here yet, kept until it comes. `asking`: an eligibility decision is
        awaited, and its answer gets to training."""
        s = self.session
        if invitation.device_id != s.me:  # signed for another device: not ours to use
            log.warning("%s: ignored an invitation meant for %s", s.me, invitation.device_id)
            s.stats.bad_messages += 1
            return []
        if invitation.task_id == self.invited_to:
            return []
        self.invited_to = invitation.task_id
        task = s.task
        if task is None or task.task_id != invitation.task_id or task.done:
            return []
        if s.book.is_done(task.task_id):
            return []
        s.narrator.task(task, False, s.config.exit_when_done, True)
        return [] if asking else self.maybe_train()

    def on_decision(self, purpose: CheckPurpose, decision: Decision) -> list[Action]:
        """The fresh eligibility decision the session asked for, for `purpose`."""
        task = self.session.task
        if purpose is CheckPurpose.BEFORE_FIT:
            return self.start(decision)
        if purpose is CheckPurpose.TASK and task is not None:
            if not decision.eligible:
                self.skip(task, decision.reasons[0])
            elif not self.invites(task):
                self.skip(task, "not invited")
            return self.maybe_train()
        return self.maybe_train() if decision.eligible else []

    def maybe_train(self) -> list[Action]:
        """Train for the current task if everything but eligibility allows it; then a
        fresh eligibility decision decides (CheckPurpose.BEFORE_FIT)."""
        s, task, model = self.session, self.session.task, self.session.downlink.model
        if task is None or task.done or model is None or self._fit or self._storing:
            return []
        if task.model_version != model.version or not self.invites(task):
            return []
        if s.book.is_done(task.task_id):
            return []
        if len(s.pending) >= s.config.outbox_max:
            log.error("%s: outbox full; not training until acks arrive", s.me)
            return []
        try:
            self._plan = _plan(task)
        except RemoteProtocolError as exc:
            log.error("%s: task %s asks for a codec, DP or secure aggregation this device "
                      "cannot use: %s", s.me, task.task_id, exc.reason)
            return [s.mark_done(task.task_id)]  # never retried; the round goes on
        return [s.ask(CheckPurpose.BEFORE_FIT)]

    def start(self, decision: Decision) -> list[Action]:
        plan, self._plan = self._plan, None
        model = self.session.downlink.model
        if plan is None or model is None:
            return []
        if not decision.eligible:
            self.skip(plan.task, decision.reasons[0])
            return []
        fit = dataclasses.replace(plan.task.train, seed=self.session.maker.seed(plan.task))
        self._fit = RunningFit(plan, model.tensors, self.session.maker.snapshot())
        return [StartFit(plan.task, copy_weights(model.tensors), fit)]

    def handle(self, event: FitFinished | UpdateStored | UpdateNotStored,
               now: Instant) -> list[Action]:
        if isinstance(event, FitFinished):
            return self._fit_finished(event, now)
        if isinstance(event, UpdateStored):
            return self._stored(event, now)
        return self._not_stored(event)

    # ------------------------------------------------------------ after the fit
    def _fit_finished(self, event: FitFinished, now: Instant) -> list[Action]:
        running, self._fit = self._fit, None
        if running is None or running.plan.task.task_id != event.task_id:
            return []
        s, plan = self.session, running.plan
        task = plan.task
        if event.result.stopped_early and not keep_early_stop(self, running, event):
            # stopped at a batch boundary: nothing is published; past its deadline the
            # task is over for this device, else it trains again at the next check
            return [s.mark_done(task.task_id)] if running.at_deadline else []
        s.stats.train_s.append(event.result.train_s)
        work = 1.0  # a fit that ran to its end did all its work, however it counts batches
        if event.result.stopped_early and task.train.partial_work != "off":
            work = task.train.work_done(event.num_samples, event.result.batches)
        try:
            update = s.maker.make(task, running.base, event.weights, event.result,
                                  event.before, event.num_samples,
                                  None if plan.secagg else plan.codec, plan.dp, now.wall,
                                  work, event.metrics, None if plan.secagg else event.only)
        except ValueError as exc:  # a diverged run: no noisy update can be made of it
            log.error("%s: task %s: no update sent: %s", s.me, task.task_id, exc)
            return [s.mark_done(task.task_id)]  # retraining would diverge again
        s.status.figures = dict(event.metrics) or s.status.figures
        if plan.secagg is not None:  # the masked round replaces the update, its outbox, ack
            done = s.mark_done(task.task_id)
            return [done, *s.secure.join(task, plan.secagg, flatten_sorted(update.tensors))]
        payload = s.keys.seal(encode_update(update, task))  # resends repeat these bytes
        dense = 4 * sum(w.size for w in running.base.values())
        self._storing = Storing(task, update, payload, dense, running.feedback)
        return [StoreUpdate(update.nonce, payload)]

    def _stored(self, event: UpdateStored, now: Instant) -> list[Action]:
        storing, self._storing = self._storing, None
        if storing is None or storing.update.nonce != event.nonce:
            return []
        s, update = self.session, storing.update
        actions: list[Action] = []
        if s.maker.feedback is not None:  # after the outbox: a crash between loses no update
            actions.append(SaveResidual(s.maker.feedback, s.maker.feedback_version))
        s.stats.update_bytes += len(storing.payload)
        s.stats.dense_bytes += storing.dense_bytes
        actions.append(s.mark_done(storing.task.task_id))
        s.pending.add(update.nonce, storing.payload)
        actions.append(s.publish_update(update.nonce, now))
        s.stats.updates_sent += 1
        s.narrator.sent(storing.task, update.nonce, len(storing.payload),
                        update.metrics.get("train_s", 0.0))
        if s.status.figures and s.connected:  # the personal figures, on the status too
            actions.append(s.status.publish(True, s.model_version, now))
        return actions

    def _not_stored(self, event: UpdateNotStored) -> list[Action]:
        storing, self._storing = self._storing, None
        if storing is None or storing.update.nonce != event.nonce:
            return []
        s = self.session
        s.maker.restore(storing.feedback)
        if event.full:
            log.error("%s: %s", s.me, event.reason)
        else:  # a full or read-only disk: train again at the next check
            log.error("%s: task %s: %s; nothing sent, trying again in %.0f s", s.me,
                      storing.task.task_id, event.reason, s.config.eligibility_check_s)
        return []


def _plan(task: Task) -> Plan:
    """The task's codec, DP and secure-round settings. RemoteProtocolError: ones this
    device cannot use. The secure-round code is imported only when a task asks for it."""
    codec = CodecConfig.from_wire(task.codec) if task.codec is not None else None
    dp = DeviceDp.from_wire(task.dp) if task.dp is not None else None
    secagg = None
    if task.secagg is not None:
        from edge_client.shared.secagg.task import SecAggTask

        secagg = SecAggTask.from_wire(task.secagg)
    return Plan(task, codec, dp, secagg)
