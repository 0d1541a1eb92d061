"""Secure aggregation of sync rounds over MQTT: the aggregator's round driver.

`SecureRounds` is what the service asks, once per loop step, in the same sans-IO style as
the participation modes: it takes device messages (chunks on `fedge/<fed>/secagg/<id>`)
and the time, and returns the messages to publish, or that the round is done or aborted.
It never touches the socket; the service publishes and makes the model version.

A round is a sync task with a `secagg` field (`SecAggTask`): the task is phase 0's setup,
so devices train first and then advertise their keys (a device that never gets to train
simply takes no part, at no cost to the others). Phase 0 closes when every invited
device has advertised, when `target_updates` have (over-selection: the rest are left
out), or at the task's deadline; every later phase closes when every device still in
the round has answered, or `phase_timeout_s` after it opened. The sum of the
contributors' fixed-point inputs is exact; each contributor is credited with an equal
share of it (uniform weights: the aggregator cannot see sample counts without them
being another input), and those shares go through the configured strategy, which is
FedAvg or a server optimizer (their mean is the share), possibly wrapped by distributed
DP (which divides the sum by the expected cohort instead).

What is stored: the running masked sum and ids (`SecAggLog`), never an unmasked input.
The protocol state (keys, shares) is in memory only: a restart aborts the open round.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from aggregator.ingest import verified_body
from aggregator.limits import upload_assembler
from aggregator.secagg.config import max_invited, min_contributors
from aggregator.secagg.server import SecAggResult, SecAggServer
from aggregator.secagg.store import SecAggLog
from aggregator.strategy.base import Contribution
from aggregator.strategy.registry import MEAN_BASED, strategy_spec
from edge_client.shared.codecs.sparsify import k_for
from edge_client.shared.protocol import RemoteProtocolError, Task, Topics, Weights
from edge_client.shared.protocol.chunking import split
from edge_client.shared.protocol.tensors import unflatten_like
from edge_client.shared.secagg import BadSecAggMessage, GraphParams, Phase, RoundAborted, scatter
from edge_client.shared.secagg.messages import (
    AdvertiseKeys,
    FromDevice,
    MaskedInput,
    SecAggMessage,
    ShareKeys,
    UnmaskResponse,
    decode_message,
)
from edge_client.shared.secagg.prg import from_wire, modulus_mask
from edge_client.shared.secagg.task import SecAggTask

if TYPE_CHECKING:
    from aggregator.config import AggregatorConfig
    from aggregator.store import Store

log = logging.getLogger(__name__)
PHASES = (Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.UNMASKING)
_PHASE_OF = {AdvertiseKeys.KIND: Phase.ADVERTISE_KEYS, ShareKeys.KIND: Phase.SHARE_KEYS,
             MaskedInput.KIND: Phase.MASKED_INPUT, UnmaskResponse.KIND: Phase.UNMASKING}
RESTART_REASON = "the aggregator restarted mid-round (secure rounds keep their keys in memory)"


@dataclass(frozen=True)
class RoundStep:
    """What one look at the round gives the service."""

    outgoing: list[tuple[str, bytes]] = field(default_factory=list)  # (topic, chunk)
    done: bool = False  # the sum is unmasked: make a version with `outcome`
    aborted: str | None = None  # why the round cannot finish; start it again


@dataclass(frozen=True)
class SecureOutcome:
    """The unmasked round as the strategy takes it, and its facts for the version's info."""

    contributions: list[Contribution]
    info: dict[str, Any]
    result: SecAggResult


class SecureRound:
    """One secure round: a SecAggServer, its phase deadlines, and the masked running sum."""

    def __init__(self, task: Task, settings: SecAggTask, target: int, minimum: int,
                 phase_timeout_s: float, now: float) -> None:
        if task.invited is None or task.deadline is None:
            raise ValueError("a secure round needs a sync task with invited devices")
        self.task = task
        self.settings = settings
        self.target = target
        self.minimum = minimum
        self.phase_timeout_s = phase_timeout_s
        self.server = SecAggServer(task.task_id, task.invited, settings.dim, bits=settings.bits,
                                   params=settings.graph, round_seed=settings.round_seed)
        self.fixed_point = settings.fixed_point(len(task.invited))
        self.deadline = task.deadline  # phase 0: devices train first
        self.masked_sum = np.zeros(settings.dim, dtype=np.uint64)
        self.masked_count = 0
        self.masked_bytes = 0
        self.bytes_in = 0
        self.outgoing: dict[str, SecAggMessage] = {}  # this phase's message to each device
        self.phase_started = now
        self.phase_s: dict[str, float] = {}
        self._accepted: set[tuple[str, str]] = set()  # (device, kind): duplicates are ignored

    @property
    def phase(self) -> Phase:
        return self.server.phase

    @property
    def joined(self) -> int:
        """Devices that advertised keys (so far, in phase 0)."""
        if self.phase is Phase.ADVERTISE_KEYS:
            return len(self.server.setup.participants) - len(self.server.expecting)
        return len(self.server.setup.participants) - sum(
            1 for d in self.server.dropouts.values() if d.phase == Phase.ADVERTISE_KEYS.value)

    def receive(self, device: str, body: bytes) -> tuple[str | None, bool]:
        """(rejection reason or None, whether a masked input was added to the sum).

        Late messages (a phase that has closed, a device already dropped) and duplicates
        (QoS 1 redeliveries, resends) are ignored without a rejection: they are what an
        honest device sends when it is slow, not what a forger sends.
        """
        try:
            message = decode_message(body)
        except BadSecAggMessage as exc:
            return exc.reason, False
        kind = message.KIND
        if not isinstance(message, FromDevice):  # exactly the kinds in _PHASE_OF
            return f"a device never sends {kind!r}", False
        phase = _PHASE_OF[kind]
        if message.round_id != self.task.task_id:
            log.info("secagg: ignored a %s from %s for round %s", kind, device,
                     message.round_id)
            return None, False
        if device not in self.server.setup.participants:
            return f"{device!r} is not a participant of round {self.task.task_id!r}", False
        if message.device_id != device:  # a forgery whatever its phase
            return f"{device!r} sent a message in the name of {message.device_id!r}", False
        if (device, kind) in self._accepted:
            return None, False
        if self._late(device, phase):
            log.info("secagg: ignored a late %s from %s", kind, device)
            return None, False
        try:
            self.server.receive(device, message)
        except BadSecAggMessage as exc:
            return exc.reason, False
        self._accepted.add((device, kind))
        if isinstance(message, MaskedInput):
            self._add_masked(message.masked)
            return None, True
        return None, False

    def _late(self, device: str, phase: Phase) -> bool:
        if device in self.server.dropouts:
            return True
        current = self.phase
        return current in PHASES and PHASES.index(phase) < PHASES.index(current)

    def _add_masked(self, masked: bytes) -> None:
        """Our own copy of the masked running sum, the one that is persisted."""
        self.masked_sum += from_wire(masked, self.settings.bits)
        self.masked_sum &= modulus_mask(self.settings.bits)
        self.masked_count += 1
        self.masked_bytes += len(masked)

    def due(self, now: float) -> bool:
        """Whether the current phase should close now."""
        if self.phase is Phase.ADVERTISE_KEYS:
            return (not self.server.expecting or self.joined >= self.target
                    or now >= self.deadline)
        return not self.server.expecting or now >= self.deadline

    def close(self, now: float) -> dict[str, SecAggMessage]:
        """Close the phase; RoundAborted when the round cannot finish."""
        phase = self.phase
        if phase is Phase.ADVERTISE_KEYS and self.joined < self.minimum:
            raise RoundAborted(phase.value, f"only {self.joined} of "
                                            f"{len(self.task.invited or ())} invited devices "
                                            f"joined by the deadline; {self.minimum} needed")
        outgoing = self.server.close_phase()
        self.phase_s[phase.value] = now - self.phase_started
        self.phase_started = now
        self.deadline = now + self.phase_timeout_s
        if phase is Phase.MASKED_INPUT and len(outgoing) < self.minimum:  # one per input
            raise RoundAborted(phase.value, f"only {len(outgoing)} devices sent their masked "
                                            f"input; {self.minimum} needed")
        self.outgoing = outgoing
        return outgoing

    def outcome(self, global_weights: Weights) -> SecureOutcome:
        """The unmasked sum as equal shares per contributor, and the facts of the round."""
        result = self.server.result
        assert result is not None
        count = len(result.contributors)
        summed = self.fixed_point.decode_sum(result.total, count)
        coordinates = self.settings.coordinates()
        if coordinates is not None:
            summed = scatter(self.settings.size, coordinates, summed)
        share = unflatten_like(summed / count, global_weights)
        contributions = [Contribution(device, share, samples=1)
                         for device in result.contributors]
        return SecureOutcome(contributions, self._info(result), result)

    def _info(self, result: SecAggResult) -> dict[str, Any]:
        left = sorted(d for d, why in result.dropouts.items()
                      if why.phase != Phase.ADVERTISE_KEYS.value)
        s = self.settings
        return {
            "updates": len(result.contributors),
            "devices": list(result.contributors),
            "update_bytes": self.masked_bytes,
            "max_train_s": 0.0,  # devices send no metrics under secure aggregation
            "secagg": {
                "invited": len(self.server.setup.participants), "joined": self.joined,
                "contributors": len(result.contributors),
                "dropped": len(set(left) - set(result.contributors)),
                "unmask_missing": len(set(left) & set(result.contributors)),
                "bad_share_holders": list(result.bad_share_holders),
                "degree": s.degree, "threshold": s.threshold, "bits": s.bits, "dim": s.dim,
                "sparsify": s.sparsify, "bytes_in": self.bytes_in,
                "phase_s": dict(self.phase_s)}}


class SecureRounds:
    """The service's side of secure aggregation across rounds; see the module docstring."""

    def __init__(self, config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes]) -> None:
        self.config = config
        self.secagg = config.secagg
        self.store = store
        self.topics = topics
        self.log = SecAggLog(store.db)
        self._sign = sign
        self._assembler = upload_assembler(config)
        self.round: SecureRound | None = None
        self.last_result: SecAggResult | None = None  # the last exact sum (tests, audits)

    # ------------------------------------------------------------ rounds
    def open(self, task: Task, size: int, now: float) -> Task:
        """The task with its secure-aggregation setup; the round starts with it. A secure
        round lists its participants (`invited`, the cohort's members): the masks are
        agreed between named devices, so no cohort is sent (docs/protocol.md)."""
        invited = task.expected() or ()
        settings = self.settings_for(len(invited), size)
        task = replace(task, secagg=settings.to_wire(), codec=None, invited=invited,
                       cohort=None, members=None)
        self.round = SecureRound(task, settings, self.config.sync.target_updates,
                                 min_contributors(self.config), self.secagg.phase_timeout_s,
                                 now)
        self.log.opened(task.task_id, self.round.server.setup.participants, settings.bits,
                        settings.dim, Phase.ADVERTISE_KEYS.value)
        log.info("secagg: round %s opened for %d devices (degree %d, threshold %d, %d-bit "
                 "sums of %d values)", task.task_id, len(invited), settings.degree,
                 settings.threshold, settings.bits, settings.dim)
        return task

    def settings_for(self, devices: int, size: int) -> SecAggTask:
        """A fresh round seed and this config's parameters for `devices` participants."""
        s = self.secagg
        params = (GraphParams.complete(devices) if s.graph == "complete"
                  else GraphParams.sparse(devices))
        fraction = s.fraction if s.sparsify == "randk" else 1.0
        dim = k_for(size, fraction) if s.sparsify == "randk" else size
        return SecAggTask(round_seed=os.urandom(32), size=size, dim=dim,
                          bits=s.modulus_bits(max_invited(self.config)),
                          degree=params.degree, threshold=params.threshold, clip=s.clip,
                          scale=s.scale, sparsify=s.sparsify, fraction=fraction)

    def check_strategy(self, name: str) -> None:
        """Refuse a strategy switch (from the dashboard) that cannot run on a sum."""
        if not strategy_spec(name).mean_based:
            raise ValueError(f"strategy {name!r} needs individual updates; under secure "
                             f"aggregation only {MEAN_BASED} can run")

    # ------------------------------------------------------------ messages in
    def receive(self, device: str, payload: bytes, now: float,
                mono: float | None = None) -> str | None:
        """Take one chunk from `device`'s secagg topic; the rejection reason, or None.
        `mono`: the monotonic time for the reassembly timers (default: `now`)."""
        try:
            done = self._assembler.add(device, payload, now if mono is None else mono)
        except RemoteProtocolError as exc:
            return exc.reason
        if done is None:
            return None
        _, message = done
        try:
            body = verified_body(message, device, self.store.device_key(device),
                                 required=self.config.security.enabled)
        except RemoteProtocolError as exc:
            return exc.reason
        round_ = self.round
        if round_ is None:
            log.info("secagg: ignored a message from %s: no secure round is open", device)
            return None
        round_.bytes_in += len(message)
        reason, added = round_.receive(device, body)
        if added:
            self.log.masked(round_.task.task_id, round_.masked_sum, round_.masked_count,
                            round_.settings.bits)
        return reason

    # ------------------------------------------------------------ time
    def tick(self, now: float, mono: float | None = None) -> RoundStep:
        """Close the phase when it is due; the messages that relays, or the round's end."""
        for device, transfer in self._assembler.expire(now if mono is None else mono):
            log.info("secagg: dropped a stalled message %s from %s", transfer[:12], device)
        round_ = self.round
        if round_ is None:  # a plain task resumed after secure aggregation was turned on
            return RoundStep(aborted="the open task is not a secure round")
        if not round_.due(now):
            return RoundStep()
        task_id = round_.task.task_id
        try:
            outgoing = round_.close(now)
        except RoundAborted as abort:
            self.round = None
            self.log.ended(task_id, "aborted", {"reason": str(abort),
                                                "dropouts": _dropouts(round_.server)})
            return RoundStep(aborted=str(abort))
        self.log.phase(task_id, round_.phase.value)
        if round_.server.result is not None:
            self.last_result = round_.server.result
            return RoundStep(done=True)
        return RoundStep(outgoing=self._chunks(round_, outgoing))

    def outcome(self, global_weights: Weights) -> SecureOutcome:
        """The finished round for the strategy; the round ends here."""
        round_ = self.round
        assert round_ is not None and round_.server.result is not None
        self.round = None
        outcome = round_.outcome(global_weights)
        self.log.ended(round_.task.task_id, "done",
                       {"contributors": list(outcome.result.contributors),
                        "dropouts": _dropouts(round_.server)})
        return outcome

    def not_used(self, task_id: str, reason: str) -> None:
        """The round ended with a sum but made no version (the strategy refused it): its
        row says so, so an audit does not show a finished round without a model."""
        self.log.ended(task_id, "aborted", {"reason": reason})

    def resend(self) -> list[tuple[str, bytes]]:
        """This phase's messages again (after a reconnect) for devices yet to answer."""
        round_ = self.round
        if round_ is None:
            return []
        waiting = round_.server.expecting
        return self._chunks(round_, {d: m for d, m in round_.outgoing.items() if d in waiting})

    def _chunks(self, round_: SecureRound, messages: dict[str, SecAggMessage]
                ) -> list[tuple[str, bytes]]:
        out = []
        for device, message in sorted(messages.items()):
            transfer = f"{message.KIND}-{os.urandom(4).hex()}"
            for chunk in split(self._sign(message.to_bytes()), transfer,
                               round_.task.chunk_size):
                out.append((self.topics.secagg_to(device), chunk))
        return out


def _dropouts(server: SecAggServer) -> dict[str, str]:
    return {device: why.phase for device, why in sorted(server.dropouts.items())}


def forget_secure_round(store: Store, opened: tuple[Task, float] | None
                        ) -> tuple[Task, float] | None:
    """After a restart: the open task to resume, unless it was a secure round, whose keys
    and shares were in memory only; that round is aborted and starts again."""
    SecAggLog(store.db).abort_open(RESTART_REASON)
    if opened is None or opened[0].secagg is None:
        return opened
    log.warning("secagg: round %s aborted: %s; starting it again", opened[0].task_id,
                RESTART_REASON)
    store.abort_task(opened[0].task_id)
    return None
