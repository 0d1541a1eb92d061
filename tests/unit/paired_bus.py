"""An MQTT broker in memory for paired tests: topic filters with + and #, retained
messages delivered on subscribe, at-least-once delivery in publish order, and faults
chosen by predicate (drop, duplicate, delay). No socket, no thread: the test pumps it.

What it keeps of MQTT is what fedge relies on: clean sessions (a client that is not
connected misses what is published meanwhile, and its subscriptions end with it), the
last will published when a client vanishes, and a zero-byte retained publish clearing
what the broker holds (still delivered to current subscribers, as brokers do).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from tests.unit.scripted_clock import ScriptedClock


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: `+` is one level, a final `#` is this level and all below."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


@dataclass(frozen=True)
class Message:
    """One delivery: what `sender` published on `topic`, on its way to `recipient`."""

    sender: str
    recipient: str
    topic: str
    payload: bytes = field(repr=False)
    retained: bool = False  # sent from the broker's retained store (on subscribe)


class Fault(Enum):
    DROP = "drop"
    DUPLICATE = "duplicate"
    DELAY = "delay"


@dataclass
class FaultRule:
    """Applied to the deliveries `matches` picks, at most `times` of them (None: all):
    DROP loses each, DELAY hands it over `delay_s` later, DUPLICATE hands it over now and
    a copy `delay_s` later (0: right behind it, as a QoS 1 redelivery)."""

    matches: Callable[[Message], bool]
    fault: Fault
    delay_s: float = 0.0
    times: int | None = None
    hits: list[Message] = field(default_factory=list)

    def takes(self, message: Message) -> bool:
        spent = self.times is not None and len(self.hits) >= self.times
        if spent or not self.matches(message):
            return False
        self.hits.append(message)
        return True


class Bus:
    def __init__(self, clock: ScriptedClock) -> None:
        self.clock = clock
        self.subscriptions: dict[str, list[str]] = {}  # connected clients and their filters
        self.retained: dict[str, tuple[str, bytes]] = {}  # topic -> (sender, payload)
        self.wills: dict[str, tuple[str, bytes]] = {}
        self.faults: list[FaultRule] = []
        self.delivered: list[Message] = []  # everything handed to a client, in order
        self.lost: list[Message] = []  # queued for a client that went away first
        self._queue: list[tuple[float, int, int, Message]] = []  # due, order, session, msg
        self._order = itertools.count()
        self._sessions: dict[str, int] = {}  # client -> its current session's number

    # ------------------------------------------------------------ faults
    def fault(self, matches: Callable[[Message], bool], fault: Fault, delay_s: float = 0.0,
              times: int | None = None) -> FaultRule:
        rule = FaultRule(matches, fault, delay_s, times)
        self.faults.append(rule)
        return rule

    # ------------------------------------------------------------ clients
    def connected(self, client: str) -> bool:
        return client in self.subscriptions

    def connect(self, client: str, will: tuple[str, bytes] | None = None) -> None:
        self.subscriptions[client] = []
        self._sessions[client] = next(self._order)
        if will is not None:
            self.wills[client] = will
        else:
            self.wills.pop(client, None)

    def disconnect(self, client: str, clean: bool = True) -> None:
        """End the client's session; an unclean end publishes its last will (retained)."""
        self.subscriptions.pop(client, None)
        will = self.wills.pop(client, None)
        if will is not None and not clean:
            self.publish(client, will[0], will[1], retain=True)

    def subscribe(self, client: str, topic_filter: str) -> None:
        filters = self.subscriptions[client]
        if topic_filter not in filters:
            filters.append(topic_filter)
        for topic, (sender, payload) in list(self.retained.items()):
            if topic_matches(topic_filter, topic):
                self._route(Message(sender, client, topic, payload, retained=True))

    def unsubscribe(self, client: str, topic_filter: str) -> None:
        filters = self.subscriptions.get(client, [])
        if topic_filter in filters:
            filters.remove(topic_filter)

    # ------------------------------------------------------------ messages
    def publish(self, sender: str, topic: str, payload: bytes, retain: bool = False) -> None:
        if retain and payload:
            self.retained[topic] = (sender, payload)
        elif retain:
            self.retained.pop(topic, None)
        for client, filters in self.subscriptions.items():
            if any(topic_matches(f, topic) for f in filters):  # once per client
                self._route(Message(sender, client, topic, payload))

    def _route(self, message: Message) -> None:
        now = self.clock.mono
        rule = next((r for r in self.faults if r.takes(message)), None)
        if rule is None:
            due = [now]
        elif rule.fault is Fault.DROP:
            due = []
        elif rule.fault is Fault.DUPLICATE:  # the copy `delay_s` later (0: right behind)
            due = [now, now + rule.delay_s]
        else:
            due = [now + rule.delay_s]
        session = self._sessions.get(message.recipient, -1)
        for when in due:
            heapq.heappush(self._queue, (when, next(self._order), session, message))

    def next_delivery(self) -> Message | None:
        """The next message due by now, in the order sent; None when none is due. A
        message for a client no longer connected, or connected again since, is lost (clean
        sessions)."""
        while self._queue and self._queue[0][0] <= self.clock.mono:
            _, _, session, message = heapq.heappop(self._queue)
            client = message.recipient
            if client not in self.subscriptions or self._sessions[client] != session:
                self.lost.append(message)
                continue
            self.delivered.append(message)
            return message
        return None

    def in_flight(self) -> int:
        return len(self._queue)
