"""The device's side of a secure round over MQTT: glue between the device session and
SecAggClient. Loaded only when a task asks for a secure round (or a test sets its hooks).

The device trains as usual; then, instead of an update, it turns its delta into the
round's fixed-point integers (after its distributed-DP clip and noise, if the task asks
for them) and answers each phase of the round from a `SecAggClient`. Messages go out on
`fedge/<fed>/secagg/<device>`, signed when the device has a key and chunked like
updates; the aggregator's come back on `fedge/<fed>/secagg_to/<device>`, reassembled
here and checked against the pinned aggregator key by the caller's `unwrap`.

There is no outbox: a secure round is over in minutes and cannot use an input sent
after its phase closed. A device that misses a phase simply drops out of the round (the
others still get their sum). What the device keeps of a round is in memory only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np

from edge_client.shared.protocol import Assembler, Task, Topics
from edge_client.shared.protocol.chunking import split
from edge_client.shared.protocol.errors import LocalProtocolError, ProtocolError
from edge_client.shared.secagg import BadSecAggMessage, Phase, SecAggClient, gather
from edge_client.shared.secagg.messages import decode_message
from edge_client.shared.secagg.task import SecAggTask

log = logging.getLogger(__name__)
PHASES = (Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.UNMASKING)
Outgoing = list[tuple[str, bytes]]  # (topic, chunk) to publish


class SecureRoundSession:
    """One device in one round: its fixed-point input and its SecAggClient.

    `handle` answers each server message once; the same message again (a QoS 1
    redelivery, or a resend after the aggregator reconnected) gets the same answer, so
    the state machine never sees a message twice.
    """

    def __init__(self, device_id: str, task: Task, settings: SecAggTask, delta: np.ndarray,
                 rng: np.random.Generator) -> None:
        if task.invited is None or device_id not in task.invited:
            raise ValueError(f"{device_id!r} is not invited to round {task.task_id!r}")
        vector = np.asarray(delta, dtype=np.float64).reshape(-1)
        if vector.shape[0] != settings.size:
            raise ValueError(f"the round is over {settings.size} parameters, this device's "
                             f"model has {vector.shape[0]}")
        coordinates = settings.coordinates()
        if coordinates is not None:
            vector = gather(vector, coordinates)
        self.task_id = task.task_id
        self.input = settings.fixed_point(len(task.invited)).encode(vector, rng)
        self.setup = settings.setup(task.task_id, task.invited)
        self.client = SecAggClient(device_id, task.task_id, lambda: self.input)
        self._answers: dict[bytes, bytes] = {}  # server message -> our reply

    @property
    def phase(self) -> Phase:
        """The phase whose message this device answers next."""
        return self.client.phase

    def start(self) -> bytes:
        """Phase 0: our keys, advertised after training."""
        return self.client.handle(self.setup).to_bytes()

    def handle(self, body: bytes) -> bytes | None:
        """Our reply to one message of the aggregator, or None for another round's.

        BadSecAggMessage: bytes that do not decode change nothing; a message the client
        refuses ends the session (its phase is then ABORTED).
        """
        if body in self._answers:
            return self._answers[body]
        message = decode_message(body)
        if message.round_id != self.task_id:
            return None  # an older round's message, relayed late: not ours to judge
        reply = self.client.handle(message).to_bytes()
        self._answers[body] = reply
        return reply


class DeviceSecAgg:
    """The EdgeClient's secure rounds: the current session, chunking, signing, resends.

    Two hooks for tests and fleet simulations: `on_input(task_id, integers)` sees each
    round's fixed-point input (the integers before masking), and `silent_from` makes the
    device stop answering from that phase on, as a device that lost power would.
    """

    def __init__(self, device_id: str, topics: Topics, max_bytes: int,
                 seal: Callable[[bytes], bytes]) -> None:
        self.device_id = device_id
        self.topics = topics
        self._seal = seal
        self._assembler = Assembler(max_bytes, max_transfers_per_source=4, timeout_s=600.0)
        self._rng = np.random.default_rng()  # OS entropy: stochastic rounding nobody redraws
        self.session: SecureRoundSession | None = None
        self._chunk_size = 65536
        self._last: Outgoing = []  # our latest reply's chunks, resent after a reconnect
        self.rounds_joined = 0
        self.on_input: Callable[[str, np.ndarray], None] | None = None
        self.silent_from: Phase | None = None

    def join(self, task: Task, settings: SecAggTask, delta: np.ndarray) -> Outgoing:
        """Start a round with this trained delta; the keys to publish (phase 0), or
        nothing (logged) when this device cannot take part."""
        try:
            self.session = SecureRoundSession(self.device_id, task, settings, delta,
                                              self._rng)
            advertise = self.session.start()
        except (ValueError, ProtocolError) as exc:
            log.error("%s: cannot take part in secure round %s: %s", self.device_id,
                      task.task_id, exc)
            self.session = None
            return []
        self._chunk_size = task.chunk_size
        self.rounds_joined += 1
        if self.on_input is not None:
            self.on_input(task.task_id, self.session.input.copy())
        return self._send(advertise)

    def on_chunk(self, payload: bytes, unwrap: Callable[[bytes], bytes],
                 now: float | None = None) -> Outgoing:
        """One chunk from `secagg_to/<us>`; `unwrap` checks the aggregator's signature;
        `now` is monotonic time (read from the clock when not given).

        Returns what to publish (nothing until a whole message is in). A message this
        device refuses ends its part in the round, with a log line saying why.
        """
        done = self._assembler.add("aggregator", payload,
                                   time.monotonic() if now is None else now)
        if done is None:
            return []
        body = unwrap(done[1])
        session = self.session
        if session is None or session.phase in (Phase.DONE, Phase.ABORTED):
            return []
        if self.silent_from is not None and session.phase in PHASES and (
                PHASES.index(session.phase) >= PHASES.index(self.silent_from)):
            return []
        try:
            reply = session.handle(body)
        except BadSecAggMessage as exc:
            if session.phase is Phase.ABORTED:
                log.warning("%s: left secure round %s: %s", self.device_id, session.task_id,
                            exc.reason)
            else:  # undecodable bytes: nothing was used, the round goes on
                log.warning("%s: ignored an unreadable secagg message: %s", self.device_id,
                            exc.reason)
            return []
        except LocalProtocolError as exc:  # e.g. pycryptodome missing: fedge[secagg]
            log.error("%s: left secure round %s: %s", self.device_id, session.task_id, exc)
            return []
        return [] if reply is None else self._send(reply)

    def resend(self) -> Outgoing:
        """After a reconnect: our latest reply again (the aggregator ignores duplicates)."""
        session = self.session
        if session is None or session.phase is Phase.ABORTED:
            return []
        return list(self._last)

    def _send(self, reply: bytes) -> Outgoing:
        transfer = f"sa-{os.urandom(6).hex()}"
        topic = self.topics.secagg(self.device_id)
        self._last = [(topic, chunk) for chunk in split(self._seal(reply), transfer,
                                                        self._chunk_size)]
        return list(self._last)
