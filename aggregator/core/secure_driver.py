"""The round driver for secure aggregation: devices send masked inputs over several
phases (aggregator/secure_round.py runs them); plain updates are refused, and the round
makes a version from the unmasked sum."""

from __future__ import annotations

from aggregator.core.actions import Action, Publish, Subscribe
from aggregator.core.events import Instant
from aggregator.core.pending import PendingUpdates
from aggregator.core.rounds import Decision, RoundResult, RoundStep
from aggregator.narrator import LISTED_DEVICES, Narrator, Waiting
from aggregator.secure_round import SecureRound as PhasedRound
from aggregator.secure_round import SecureRounds
from edge_client.shared.protocol import Task, Topics, Weights

REFUSAL = ("this federation uses secure aggregation: plain updates are refused (the "
           "device must follow Task.secagg)")


class SecureRound:
    def __init__(self, rounds: SecureRounds, topics: Topics, narrator: Narrator) -> None:
        self.rounds = rounds  # tests and audits read `rounds.round` and `last_result`
        self.topics = topics
        self.narrator = narrator
        self._aborted = ""

    def on_link_up(self) -> list[Action]:
        return [Subscribe(self.topics.all_secagg), *_publish(self.rounds.resend())]

    def refusal(self) -> str | None:
        return REFUSAL  # never store an unmasked update, not even once

    def proven_matters(self) -> bool:
        return False  # the round's sizes assume uniformly drawn devices

    def check_strategy(self, name: str) -> None:
        self.rounds.check_strategy(name)

    def open(self, task: Task, size: int, at: Instant) -> Task:
        return self.rounds.open(task, size, at.wall)

    def on_message(self, device: str, payload: bytes, at: Instant) -> str | None:
        return self.rounds.receive(device, payload, at.wall, at.mono)

    def tick(self, task: Task, pending: PendingUpdates, at: Instant) -> RoundStep:
        step = self.rounds.tick(at.wall, at.mono)
        outgoing = tuple(_publish(step.outgoing))
        if step.aborted is not None:
            self._aborted = step.aborted
            return RoundStep(Decision.ABORT, outgoing, step.aborted)
        if step.done:
            return RoundStep(Decision.AGGREGATE, outgoing)
        phased = self.rounds.round
        if phased is not None:
            self.narrator.waiting(Waiting.UPDATES, lambda: _waiting(task, phased, at))
        return RoundStep(Decision.WAIT, outgoing)

    def abort_line(self, task: Task, pending: PendingUpdates) -> str:
        return (f"secure round {task.round} ({task.task_id}) aborted: {self._aborted}; "
                "starting it again")

    def result(self, pending: PendingUpdates, version: int,
               global_weights: Weights) -> RoundResult:
        outcome = self.rounds.outcome(global_weights)
        info = dict(outcome.info)
        return RoundResult(outcome.contributions, updates=info.pop("updates"),
                           update_bytes=info.pop("update_bytes"),
                           max_train_s=info.pop("max_train_s"), devices=info.pop("devices"),
                           extra=info)

    def not_used(self, task_id: str, reason: str) -> None:
        self.rounds.not_used(task_id, reason)


def _waiting(task: Task, phased: PhasedRound, at: Instant) -> tuple[object, str]:
    """Which phase the round is in and who it still waits for."""
    expecting = sorted(phased.server.expecting)
    named = ", ".join(expecting[:LISTED_DEVICES])
    more = f" and {len(expecting) - LISTED_DEVICES} more" if len(expecting) > LISTED_DEVICES else ""
    key = (task.task_id, phased.phase, len(expecting))
    return key, (f"secure round {task.round} in phase {phased.phase.value}: "
                 f"{len(expecting)} devices still to answer ({named}{more}); the phase "
                 f"closes in {phased.deadline - at.wall:.0f} s")


def _publish(messages: list[tuple[str, bytes]]) -> list[Action]:
    return [Publish(topic, payload) for topic, payload in messages]
