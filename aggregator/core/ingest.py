"""Update chunks in, acks out: reassembly, signature, checks, the store, the verdict.

An update is acknowledged only after the store's commit returns (`Store.add_update`),
so an acked update survives a crash. Every refusal is answered once per transfer, rate
limited per device (aggregator/rejection_gate.py), logged and counted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from aggregator.anomalies import AnomalyWatch
from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, ClearRetained, SendAck
from aggregator.core.events import Instant, RefusedUpload, UpdateChunk, VerifiedUpdate
from aggregator.core.rounds import RoundDriver
from aggregator.core.state import CoreState
from aggregator.ingest import check_clock, check_sender, open_flat_update, verified_body
from aggregator.limits import upload_assembler
from aggregator.participation import Participation, TaskInfo, Verdict
from aggregator.presence import Presence
from aggregator.privacy.hooks import ServicePrivacy
from aggregator.refused_transfers import RefusedTransfers
from aggregator.rejection_gate import RejectionGate
from aggregator.states import TaskState, UpdateState
from aggregator.store import Store
from aggregator.strategy.folding import FlatUpdate
from edge_client.shared.protocol import Ack, RemoteProtocolError, Topics, Update, encode
from edge_client.shared.protocol.states import AckStatus

log = logging.getLogger("aggregator.service")
DUPLICATE = Verdict(AckStatus.DUPLICATE, reason="already stored for this task")
FINISHED = Verdict(AckStatus.LATE, UpdateState.LATE, "training has finished")


class UpdateIngest:
    def __init__(self, config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes], presence: Presence,
                 privacy: ServicePrivacy, anomalies: AnomalyWatch,
                 participation: Participation, driver: RoundDriver) -> None:
        self.config = config
        self.store = store
        self.topics = topics
        self.sign = sign
        self.presence = presence
        self.privacy = privacy
        self.anomalies = anomalies
        self.participation = participation
        self.driver = driver
        self.assembler = upload_assembler(config)
        limits = config.limits
        self._answers = RejectionGate(limits.answered_rejections_per_device_s,
                                      limits.answered_rejections_s)
        self._refused = RefusedTransfers()
        self._pace_rng = random.Random(config.seed)

    def on_event(self, event: UpdateChunk | VerifiedUpdate | RefusedUpload,
                 state: CoreState) -> list[Action]:
        """A chunk of an update, or an ingest worker's result for a whole one."""
        if not isinstance(event, UpdateChunk):
            return self.on_worker_result(event, state)
        # devices never retain updates: read a retained one only once
        cleared: list[Action] = [ClearRetained(event.topic)] if event.retained else []
        return cleared + self.on_chunk(event, state)

    def on_chunk(self, event: UpdateChunk, state: CoreState) -> list[Action]:
        out: list[Action] = []
        try:
            device = self.topics.device_of(event.topic)
        except ValueError:
            return out  # cannot even answer: the topic has no valid device id
        try:
            done = self.assembler.add(device, event.payload, event.at.mono)
        except RemoteProtocolError as exc:
            if not self._refused.already_answered(device, exc.transfer):
                out += self.reject(device, exc.transfer or "", "", exc.reason, event.at)
            return out
        if done is None:
            return out
        transfer, message = done
        try:
            security = self.config.security
            message = verified_body(message, device, self.store.device_key(device),
                                    required=security.enabled)
            self.presence.sent_something(device)  # even if refused below: not a no-show
            update, values = self._validate(device, transfer, message, state)
            if security.enabled:
                check_clock(update, event.at.wall, security.max_clock_skew_s)
        except RemoteProtocolError as exc:
            return self.reject(device, transfer, "", exc.reason, event.at)
        return self._store_and_ack(update, values, message, state, event.at)

    def on_worker_result(self, event: VerifiedUpdate | RefusedUpload,
                         state: CoreState) -> list[Action]:
        """What an ingest worker made of an upload (parallel ingest): the same checks,
        verdicts and acks as `on_chunk` after its signature and decoding steps.

        A round's refusal comes before a decoding error, as in `_validate`."""
        device, transfer = event.device, event.transfer
        if isinstance(event, RefusedUpload):
            reason = event.reason
            if event.verified:
                self.presence.sent_something(device)
                reason = self.driver.refusal() or reason
            return self.reject(device, transfer, "", reason, event.at)
        self.presence.sent_something(device)  # even if refused below: not a no-show
        update = event.update
        try:
            refusal = self.driver.refusal()
            if refusal is not None:
                raise RemoteProtocolError(refusal)
            check_sender(update, device, transfer)
            self.privacy.check_update(update)
            if self.config.security.enabled:
                check_clock(update, event.at.wall, self.config.security.max_clock_skew_s)
        except RemoteProtocolError as exc:
            return self.reject(device, transfer, "", exc.reason, event.at)
        return self._store_and_ack(update, event.values, event.payload, state, event.at)

    def expire(self, at: Instant) -> None:
        for device, transfer in self.assembler.expire(at.mono):
            log.warning("aggregator: dropped a stalled upload %s from %s", transfer[:8], device)

    def _validate(self, device: str, transfer: str, message: bytes,
                  state: CoreState) -> tuple[Update, FlatUpdate]:
        refusal = self.driver.refusal()
        if refusal is not None:
            raise RemoteProtocolError(refusal)
        update, values = open_flat_update(message, state.weights)
        check_sender(update, device, transfer)
        self.privacy.check_update(update)
        return update, values

    def _store_and_ack(self, update: Update, values: FlatUpdate, message: bytes,
                       state: CoreState, at: Instant) -> list[Action]:
        if self.store.has_update(update.device_id, update.task_id):
            # A resend whose first ack was lost, a replay, or a second update for one task:
            # counted once, never stored again.
            self.store.count("duplicates")
            return [self._ack(update, DUPLICATE)]
        info = self._task_info(update.task_id, state)
        if info is None:
            return self.reject(update.device_id, update.nonce, update.task_id,
                               "unknown task", at)
        verdict = self.participation.judge(update, info, state.task, state.version)
        if state.finished and verdict.ack == "accepted":
            # the last version is made: kept on disk as late, never held for a round
            verdict = FINISHED
        if verdict.ack == "rejected":
            return self.reject(update.device_id, update.nonce, update.task_id,
                               verdict.reason, at)
        if not self.store.add_update(update, message, verdict.state):
            return [self._ack(update, DUPLICATE)]
        self.presence.update_seen(update.device_id, update.task_id)
        if verdict.state == "pending":
            # folded into the round's sum now; only a small record stays
            state.pending.add(update, len(message), values,
                              self.participation.staleness_factor(update, state.version))
        return [self._ack(update, verdict)]

    def _task_info(self, task_id: str, state: CoreState) -> TaskInfo | None:
        """The open task from memory (most updates name it: no read and decode of the
        stored task per update, which cost O(cohort) each); others from the store."""
        task = state.task
        if task is not None and task.task_id == task_id:
            return TaskInfo(task.mode, task.model_version, TaskState.OPEN, task)
        stored = self.store.task_state(task_id)
        return None if stored is None else TaskInfo(*stored)

    def _ack(self, update: Update, verdict: Verdict) -> SendAck:
        ack = Ack(status=verdict.ack, task_id=update.task_id, nonce=update.nonce,
                  reason=verdict.reason, next_checkin_s=self._next_checkin())
        return SendAck(self.topics.ack(update.device_id), self.sign(encode(ack)), ack=ack)

    def _next_checkin(self) -> float:
        """Pace steering: when this device should look again, jittered so that a fleet
        does not come back all at once."""
        jitter = self.config.checkin_jitter
        return self.config.checkin_interval_s * self._pace_rng.uniform(1 - jitter, 1 + jitter)

    def reject(self, device: str, nonce: str, task_id: str, reason: str,
               at: Instant) -> list[Action]:
        if not self._answers.allow(device, at.mono):
            return []  # a flood: counted, and summed up in the log (rejection_gate.py)
        log.warning("aggregator: rejected an update from %s: %s", device, reason)
        self.store.add_rejection(device, nonce, reason)
        self.anomalies.after_rejection(device)
        ack = Ack(status=AckStatus.REJECTED, task_id=task_id, nonce=nonce, reason=reason)
        return [SendAck(self.topics.ack(device), self.sign(encode(ack)), ack=ack)]
