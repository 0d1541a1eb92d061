"""The device's protocol logic as a sans-IO state machine: events in, actions out.

`DeviceSession.handle(event, now)` takes what happened (a task, a manifest, a model
chunk, an ack, an eligibility decision, a finished fit, a tick) with the time it
happened, and returns what the device does next (publish, subscribe, check eligibility,
install a model, start or stop a fit, write the outbox or its state, sleep, wake). It
never touches the network, the disk, the trainer or a clock: the shell
(edge_client.client.EdgeClient) does, and feeds the answers of CheckEligibility,
InstallModel, StartFit and StoreUpdate straight back as events. Resend times, the
eligibility re-check and the sleep until the next check-in are plain numbers here, so
tests drive a session with a scripted clock (tests/unit/test_device_session.py).
"""

from __future__ import annotations

import logging
import os

from edge_client.client_config import ClientConfig
from edge_client.eligibility import Decision
from edge_client.narration import DeviceNarrator, eligibility_kind_changed
from edge_client.session.acks import on_ack
from edge_client.session.actions import (
    Action,
    CheckEligibility,
    CheckPurpose,
    Publish,
    PublishUpdate,
    SaveModel,
    SaveTasks,
    StopFit,
    Subscribe,
    Wake,
)
from edge_client.session.downlink import Downlink
from edge_client.session.events import (
    AckReceived,
    CanaryEvaluated,
    EligibilityChecked,
    Event,
    FitFinished,
    Instant,
    InvitationReceived,
    LinkDown,
    LinkUp,
    ManifestReceived,
    ModelChunkReceived,
    ModelInstalled,
    ModelRefused,
    Resumed,
    RolloutReceived,
    SecAggChunkReceived,
    ShuttingDown,
    TaskReceived,
    Tick,
    UpdateNotStored,
    UpdateStored,
)
from edge_client.session.inbound import OwnStatusReceived, decode_inbound
from edge_client.session.keys import DeviceKeys
from edge_client.session.pace import Pace
from edge_client.session.participation import Participation
from edge_client.session.refusals import on_manifest, refused
from edge_client.session.resend import ResendSchedule
from edge_client.session.resume import resume
from edge_client.session.secure_rounds import SecureRounds
from edge_client.session.serving import ServingGate
from edge_client.session.stats import ClientStats
from edge_client.session.status import StatusBoard
from edge_client.session.task_book import TaskBook
from edge_client.session.update_maker import UpdateMaker
from edge_client.shared.protocol import DEFAULT_CHUNK_SIZE, Task, Topics
from edge_client.shared.protocol.chunking import split

log = logging.getLogger("edge_client.client")  # one logger for all the device says


class DeviceSession:
    """One device's side of the federation, from its first connect to the final model."""

    def __init__(self, config: ClientConfig, narrator: DeviceNarrator,
                 keys: DeviceKeys | None = None, session_id: str | None = None) -> None:
        self.config = config
        self.me = config.device_id
        self.topics = Topics(config.federation)
        self.narrator = narrator
        self.keys = keys or DeviceKeys()
        self.stats = ClientStats()
        self.book = TaskBook()
        self.pending = ResendSchedule(config.ack_timeout_s)
        self.maker = UpdateMaker(self.me)
        self.downlink = Downlink(self.me, self.topics, config.max_model_bytes,
                                 config.max_model_elements)
        self.status = StatusBoard(self.me, self.topics, self.keys.seal,
                                  session_id or os.urandom(6).hex(), config.status_interval_s)
        self.participation = Participation(self)
        self.task: Task | None = None
        self.connected = False
        self.pace = Pace(config.eligibility_check_s)
        self._asked: CheckPurpose | None = None  # the CheckEligibility awaiting its answer
        self.secure = SecureRounds(self.me, self.topics, config.max_model_bytes,
                                   self.keys.seal)
        self.serving = ServingGate(self.me, self.topics, self.keys.seal, self.status)

    # ------------------------------------------------------------ what the shell reads
    @property
    def model_version(self) -> int | None:
        return self.downlink.version

    @property
    def sleeping(self) -> bool:
        return self.pace.sleeping

    @property
    def finished(self) -> bool:
        """The aggregator says the federation is done and its final model is here.
        Unacked updates, if any, stay in the outbox on disk for a later run."""
        task, version = self.task, self.model_version
        return (self.config.exit_when_done and task is not None and task.done and (
            (version is not None and version >= task.model_version)
            or self.status.refusal is not None))  # it keeps the model it holds

    def poll_timeout(self, now: float) -> float:
        """How long the shell may wait for a message before the next Tick is due."""
        return self.pace.poll_timeout(now, self.pending.next_due())

    def will_payload(self, now: Instant) -> bytes:
        """The offline status the broker publishes if the link dies."""
        return self.status.payload(False, self.model_version, now.wall)

    # ------------------------------------------------------------ events
    def receive(self, topic: str, payload: bytes, now: Instant) -> list[Action]:
        """A message from the broker. RemoteProtocolError: one to ignore (bad bytes, a
        bad signature, a model over this device's limits)."""
        event = decode_inbound(topic, payload, self.topics, self.me, self.keys)
        if event is None:
            return []
        if isinstance(event, OwnStatusReceived):
            self.narrator.own_status(event.status, self.status.session_id)
            return []
        return self.handle(event, now)

    def handle(self, event: Event, now: Instant) -> list[Action]:
        match event:
            case Tick():
                return self._tick(now)
            case EligibilityChecked(decision):
                return self._checked(decision, now)
            case TaskReceived(task):
                return self.participation.on_task(task)
            case InvitationReceived(invitation):
                return self.participation.on_invitation(invitation, self._asked is not None)
            case ManifestReceived(manifest):
                return on_manifest(self, manifest, now)
            case ModelChunkReceived(topic, payload):
                return self.downlink.on_chunk(topic, payload, now.monotonic)
            case ModelInstalled(version):
                return self._installed(version, now)
            case ModelRefused(version, reason):
                self.downlink.refused(version, reason)
                self.stats.bad_messages += 1
                return refused(self, version, reason, now)
            case AckReceived(ack):
                return on_ack(self, ack, now)
            case SecAggChunkReceived(payload):
                return [*self.secure.on_chunk(payload, self.keys.from_aggregator,
                                              now.monotonic)]
            case FitFinished() | UpdateStored() | UpdateNotStored():
                return self.participation.handle(event, now)
            case LinkUp():
                return self._link_up(now)
            case LinkDown():
                self.connected = False
                return []
            case Resumed():
                return resume(self, event)
            case ShuttingDown():
                return [self._status(False, now)] if self.connected else []
            case RolloutReceived() | CanaryEvaluated():  # what the app serves
                return self.serving.handle(event)
        raise TypeError(f"not a session event: {event!r}")

    # ------------------------------------------------------------ the link and time
    def _link_up(self, now: Instant) -> list[Action]:
        self.connected = True
        t = self.topics
        # the invitation before the task: a device invited by name knows it when the task comes
        actions: list[Action] = [Subscribe(topic) for topic in (
            t.rollout, t.model, t.invite(self.me), t.task, t.ack(self.me), t.secagg_to(self.me),
            t.status(self.me))]
        actions.append(self._status(True, now))
        actions += [self.publish_update(nonce, now) for nonce in self.pending.nonces()]
        actions += self.secure.resend()
        return actions

    def _tick(self, now: Instant) -> list[Action]:
        actions: list[Action] = []
        if self.pace.wake_due(now.monotonic):
            actions.append(Wake())
        elif self.pace.sleeping:
            return []  # honour the aggregator's pace
        if self.connected:
            for nonce in self.pending.due(now.monotonic):
                log.info("%s: no ack for %s after %.0f s; resending", self.me, nonce[:8],
                         self.config.ack_timeout_s)
                actions.append(self.publish_update(nonce, now))
        if self.pace.check_due(now.monotonic):
            actions.append(self.ask(CheckPurpose.RECHECK))
        return actions

    # ------------------------------------------------------------ eligibility and tasks
    def ask(self, purpose: CheckPurpose) -> CheckEligibility:
        self._asked = purpose
        return CheckEligibility(purpose)

    def _checked(self, decision: Decision, now: Instant) -> list[Action]:
        """A fresh decision: a change is reported on the status topic at once (compared
        without readings, or every check would publish); then what it was asked for."""
        before, self.status.decision = self.status.decision, decision
        actions: list[Action] = []
        if eligibility_kind_changed(decision, before):
            self.narrator.eligibility_changed(decision, before)
            if self.connected:
                actions.append(self._status(True, now))
        if self.participation.must_stop(decision.eligible, now.wall):
            actions.append(StopFit())
        purpose, self._asked = self._asked, None
        if purpose is CheckPurpose.RECHECK and self.connected and self.status.stale(now):
            actions.append(self._status(True, now))
        if purpose is not None:
            actions += self.participation.on_decision(purpose, decision)
        return actions + self.serving.checked(before)

    def _installed(self, version: int, now: Instant) -> list[Action]:
        step = self.downlink.installed(version)
        if step is None:
            return []
        self.stats.models_via_delta += int(step.via_delta)
        self.narrator.model_installed(version, step.via_delta, len(step.blob))
        self.status.refusal = None  # a model it runs: eligible again
        return [SaveModel(version, step.blob), *self.serving.installed(self.downlink.model),
                self._save_tasks(), self._status(True, now), *self.participation.maybe_train()]

    # ------------------------------------------------------------ uplink and acks
    def publish_update(self, nonce: str, now: Instant) -> PublishUpdate:
        payload = self.pending.sent(nonce, now.monotonic)
        chunk_size = self.task.chunk_size if self.task else DEFAULT_CHUNK_SIZE
        return PublishUpdate(nonce, self.topics.update(self.me),
                             tuple(split(payload, nonce, chunk_size)))

    # ------------------------------------------------------------ state
    def mark_done(self, task_id: str) -> SaveTasks:
        """The one place a task becomes done: never trained for again, even after a reboot."""
        self.book.mark_done(task_id)
        return self._save_tasks()

    def _save_tasks(self) -> SaveTasks:
        return SaveTasks(self.book.done, self.model_version)

    def _status(self, online: bool, now: Instant, reason: str | None = None) -> Publish:
        return self.status.publish(online, self.model_version, now, reason)
