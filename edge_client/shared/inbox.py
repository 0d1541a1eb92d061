"""The event queue between paho's network thread and the owner's loop, bounded in bytes.

When the loop falls behind (a flood, a slow aggregation), `put` of a received message
blocks paho's network thread instead of growing without bound. paho then stops reading
the socket, TCP's window closes, and QoS 1 messages wait at the broker (up to its own
`max_queued_messages`). Nothing is dropped while the owner runs: after `block_s` the
waiting message is let in over the bound with a log line, so a loop stuck for good cannot
hang the network thread (and its keepalives) forever either; at most one message per
`block_s` gets past the bound that way.

Deadlock: the owner's loop publishes through the same paho client while the network
thread may be blocked here. paho 2.x's `publish()` from another thread only appends to
its outgoing deque and pokes a socketpair (it takes no lock that the network thread holds
during `on_message`), so a publish never waits for this queue. But only the network thread
writes those packets, so while it waits here it writes them itself (`while_waiting`, see
`MqttLink`): otherwise our acks, and our PUBACKs that let the broker send more, would
queue up behind the flood. Waiting for a publish's confirmation (`MqttLink.flush`) needs
the network thread, which is why the link closes this queue before it flushes on stop.

Events that are not received messages (connected, disconnected, an operator's request)
never block and are not counted: they are few, and an admin thread must not hang.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# What one queued message costs beyond its payload and topic (the event object, the bytes
# and str headers): so that a flood of empty messages is bounded too.
MESSAGE_OVERHEAD = 256
DEFAULT_MAX_BYTES = 32 * 2**20
DEFAULT_BLOCK_S = 10.0
WAIT_SLICE_S = 0.05  # a waiting putter wakes at least this often (to write, and to re-check)


def message_cost(event: Any) -> int:
    """Bytes a received message holds while queued; 0 for every other event."""
    payload = getattr(event, "payload", None)
    if not isinstance(payload, bytes | bytearray):
        return 0
    return len(payload) + len(getattr(event, "topic", "")) + MESSAGE_OVERHEAD


class Inbox:
    """A queue like `queue.Queue` (put / get with timeout), bounded in bytes of messages.

    With `source_of` (event -> a key, e.g. the device id in its topic) it is fair: `get`
    takes from each source's own FIFO in turn, so an honest device's message waits behind
    at most one message of each other busy source, not behind a flood from one of them.
    Order is kept within a source. Without it, one FIFO (a device keeps the order of
    model chunks, tasks and acks as they came).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES,
                 block_s: float = DEFAULT_BLOCK_S,
                 source_of: Callable[[Any], str] | None = None) -> None:
        if max_bytes < 1 or block_s <= 0:
            raise ValueError("Inbox: need max_bytes >= 1 and block_s > 0")
        self.max_bytes = max_bytes
        self.block_s = block_s
        self._source_of = source_of
        self.held_bytes = 0
        self.peak_bytes = 0
        self.blocked = 0  # puts that had to wait
        self.over_bound = 0  # messages let in over the bound after waiting block_s
        self.dropped = 0  # messages refused after close()
        self._queues: dict[str, collections.deque[tuple[Any, int]]] = {}  # per source
        self._turns: collections.deque[str] = collections.deque()  # sources with items
        self._count = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, event: Any, while_waiting: Callable[[], object] | None = None) -> bool:
        """Queue `event`; a message waits while the queue is full. False: dropped (closed).

        `while_waiting` runs (outside the lock) before each wait and after each wake-up:
        the link uses it to write paho's pending packets, so acks and PUBACKs keep flowing
        while the network thread is held here.
        """
        cost = message_cost(event)
        with self._cond:
            if not cost or self._closed or self._fits(cost):
                return self._take(event, cost)
            self.blocked += 1
        started = time.monotonic()
        while True:
            if while_waiting is not None:
                while_waiting()
            with self._cond:
                waited = time.monotonic() - started
                if self._closed or self._fits(cost):
                    return self._take(event, cost)
                if waited >= self.block_s:
                    self.over_bound += 1
                    log.warning("inbox: queue full (%d of %d bytes) for %.3g s: letting one "
                                "message in over the bound; the loop is not keeping up",
                                self.held_bytes, self.max_bytes, waited)
                    return self._take(event, cost)
                self._cond.wait(min(WAIT_SLICE_S, self.block_s - waited))

    def _take(self, event: Any, cost: int) -> bool:
        """Append under the lock; a message after close() is dropped."""
        if self._closed and cost:
            self.dropped += 1
            return False
        source = self._source_of(event) if self._source_of is not None else ""
        items = self._queues.get(source)
        if items is None:
            items = self._queues[source] = collections.deque()
            self._turns.append(source)
        items.append((event, cost))
        self._count += 1
        self.held_bytes += cost
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        self._cond.notify_all()
        return True

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next event (the oldest of the next source in turn); raises queue.Empty
        when none comes within `timeout`."""
        with self._cond:
            if block:
                self._cond.wait_for(lambda: self._count > 0, timeout)
            if not self._count:
                raise queue.Empty
            source = self._turns.popleft()
            items = self._queues[source]
            event, cost = items.popleft()
            if items:
                self._turns.append(source)  # its next one after everyone else's
            else:
                del self._queues[source]
            self._count -= 1
            self.held_bytes -= cost
            self._cond.notify_all()
            return event

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def close(self) -> None:
        """The owner is stopping: release a waiting network thread; later messages are
        dropped (QoS 1 senders resend them: their acks never come)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def reopen(self) -> None:
        """The owner starts again (a device back from sleep): messages are taken again."""
        with self._cond:
            self._closed = False

    def qsize(self) -> int:
        with self._cond:
            return self._count

    def empty(self) -> bool:
        return self.qsize() == 0

    def _fits(self, cost: int) -> bool:
        # An empty queue takes any one message, so a message larger than the bound passes.
        return self.held_bytes == 0 or self.held_bytes + cost <= self.max_bytes
