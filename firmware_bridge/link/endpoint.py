"""One end of the serial link, sans-IO: bytes in, events and bytes out, timers by `now`.

Reliability is stop-and-wait, which is what a small MCU can afford: every message but
ACK/NACK is acknowledged; one is in flight per direction at a time; it is resent on a
NACK(BAD_FRAME or BUSY) or when no answer came within `ack_timeout_s`, up to
`max_retries` times, then reported as `Failed`. The receiver remembers the last seq it
accepted and answers a repeat with the same ACK without delivering it twice. A HELLO is
always delivered and starts a new session (the peer rebooted: its seq starts over).
Only what `answer` ACKs is delivered; a NACK BUSY is not remembered, so the peer's resend
of that message is judged afresh (the bridge answers BUSY when a sample's write fails).

It never touches a serial port: `fedge bridge` (firmware_bridge.bridge) is the thin
shell that moves bytes, and the tests drive two endpoints against each other directly.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge.link.errors import BadPayload, LinkError
from firmware_bridge.link.frames import (
    DEFAULT_MAX_PAYLOAD,
    Frame,
    FrameReader,
    MsgType,
    encode_frame,
)
from firmware_bridge.link.messages import (
    RETRYABLE_NACKS,
    Ack,
    Hello,
    Message,
    Nack,
    NackReason,
    decode_message,
    encode_payload,
    message_type,
)


@dataclass(frozen=True)
class RetryPolicy:
    ack_timeout_s: float = 0.5
    max_retries: int = 5  # resends after the first try

    def __post_init__(self) -> None:
        if self.ack_timeout_s <= 0 or self.max_retries < 0:
            raise ValueError("ack_timeout_s must be > 0 and max_retries >= 0")


# ------------------------------------------------------------------ events
@dataclass(frozen=True)
class Received:
    """A new message from the peer (already acknowledged)."""

    message: Message
    seq: int


@dataclass(frozen=True)
class Delivered:
    """The peer acknowledged a message we sent."""

    token: int
    message: Message
    ack: Ack


@dataclass(frozen=True)
class Failed:
    """A message we sent was refused (`nack`) or never acknowledged."""

    token: int
    message: Message
    reason: str
    nack: Nack | None = None


@dataclass(frozen=True)
class FrameError:
    """Bytes from the peer that did not decode; the peer was asked to resend."""

    error: LinkError


Event = Received | Delivered | Failed | FrameError
Answer = Callable[[Message], Ack | Nack]


@dataclass
class LinkStats:
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: Counter = field(default_factory=Counter)  # by LinkError code
    retransmissions: int = 0
    duplicates: int = 0  # repeats of an accepted message, answered but not delivered
    delivered: int = 0
    failed: int = 0


@dataclass
class _InFlight:
    token: int
    message: Message
    seq: int
    wire: bytes
    sent_at: float
    tries: int = 1


def ack_everything(message: Message) -> Ack | Nack:
    return Ack(0)


def _check_sendable(message: Message, limit: int) -> None:
    """ValueError now, not when it is the message's turn: an ACK or NACK (the endpoint
    sends those itself), a message that does not encode, or one over the peer's limit."""
    if isinstance(message, Ack | Nack):
        raise ValueError("ACK and NACK are sent by the endpoint itself")
    payload = encode_payload(message)
    if len(payload) > limit:
        raise ValueError(f"{type(message).__name__} payload of {len(payload)} bytes is "
                         f"over the link's maximum of {limit}")


class LinkEndpoint:
    """Send reliable messages and receive the peer's, over any byte stream.

    `answer(message)` decides how a new message is acknowledged (an ACK detail, or a
    NACK with a reason); the default ACKs everything. The seq field of its result is
    filled in here.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 retry: RetryPolicy | None = None, max_queue: int = 64,
                 answer: Answer = ack_everything) -> None:
        if not 16 <= max_payload <= 0xFFFF:
            raise ValueError(f"max_payload {max_payload} is not 16..65535")
        self.max_payload = max_payload
        self.peer_max_payload = max_payload  # lowered by the peer's HELLO
        self.retry = retry or RetryPolicy()
        self.max_queue = max_queue
        self.answer = answer
        self.stats = LinkStats()
        self._reader = FrameReader(max_payload)
        self._out = bytearray()
        self._queue: deque[tuple[int, Message]] = deque()
        self._inflight: _InFlight | None = None
        self._next_seq = 0
        self._next_token = 1
        self._last_seq: int | None = None
        self._last_answer: bytes = b""

    # ------------------------------------------------------------ sending
    def send(self, message: Message, now: float) -> int:
        """Queue a message to be delivered reliably; returns a token its events carry."""
        _check_sendable(message, self.peer_max_payload)
        if len(self._queue) >= self.max_queue:
            raise OverflowError(f"{self.max_queue} messages already wait to be sent")
        token = self._next_token
        self._next_token += 1
        self._queue.append((token, message))
        self._start_next(now)
        return token

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing queued."""
        return self._inflight is None and not self._queue

    @property
    def pending(self) -> int:
        return len(self._queue) + (self._inflight is not None)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def reset(self, reason: str) -> list[Failed]:
        """Start over on a new line: drop partial input, what is in flight and queued, and
        the memory of the peer's last seq."""
        self._reader = FrameReader(self.max_payload)
        self._out.clear()
        self._last_seq = None
        self.peer_max_payload = self.max_payload
        return self.cancel_all(reason)

    def cancel_all(self, reason: str) -> list[Failed]:
        """Drop what is queued or in flight (the peer restarted, or we shut down)."""
        dropped = [] if self._inflight is None else [(self._inflight.token,
                                                       self._inflight.message)]
        dropped += list(self._queue)
        self._inflight = None
        self._queue.clear()
        self.stats.failed += len(dropped)
        return [Failed(token, message, reason) for token, message in dropped]

    def _start_next(self, now: float) -> None:
        if self._inflight is not None or not self._queue:
            return
        token, message = self._queue.popleft()
        seq = self._next_seq
        self._next_seq = (seq + 1) & 0xFF
        frame = Frame(message_type(message), seq, encode_payload(message))
        wire = encode_frame(frame, self.max_payload)
        self._inflight = _InFlight(token, message, seq, wire, now)
        self._write(wire)

    def _write(self, wire: bytes) -> None:
        self._out += wire
        self.stats.frames_out += 1
        self.stats.bytes_out += len(wire)

    def _resend(self, now: float, why: str) -> list[Event]:
        flight = self._inflight
        assert flight is not None
        if flight.tries > self.retry.max_retries:
            self._inflight = None
            self.stats.failed += 1
            self._start_next(now)
            return [Failed(flight.token, flight.message,
                           f"{why} after {flight.tries} tries")]
        flight.tries += 1
        flight.sent_at = now
        self.stats.retransmissions += 1
        self._write(flight.wire)
        return []

    # ------------------------------------------------------------ timers
    def poll_timeout(self) -> float | None:
        """When `handle_timeout` should next be called (monotonic seconds), if at all."""
        if self._inflight is None:
            return None
        return self._inflight.sent_at + self.retry.ack_timeout_s

    def handle_timeout(self, now: float) -> list[Event]:
        deadline = self.poll_timeout()
        if deadline is None or now < deadline:
            return []
        return self._resend(now, "no answer")

    # ------------------------------------------------------------ receiving
    def receive_data(self, data: bytes, now: float) -> list[Event]:
        self.stats.bytes_in += len(data)
        self._reader.feed(data)
        events: list[Event] = []
        while True:
            try:
                frame = self._reader.next_frame()
            except LinkError as exc:
                events += self._bad_frame(exc)
                continue
            if frame is None:
                return events
            self.stats.frames_in += 1
            events += self._on_frame(frame, now)

    def _bad_frame(self, exc: LinkError, seq: int = 0,
                   reason: NackReason = NackReason.BAD_FRAME) -> list[Event]:
        self.stats.errors[exc.code] += 1
        self._reply(Nack(seq, reason))
        return [FrameError(exc)]

    def _reply(self, answer: Ack | Nack) -> bytes:
        wire = encode_frame(Frame(message_type(answer), 0, encode_payload(answer)),
                            self.max_payload)
        self._write(wire)
        return wire

    def _on_frame(self, frame: Frame, now: float) -> list[Event]:
        try:
            message = decode_message(frame)
        except LinkError as exc:
            if frame.type in (MsgType.ACK, MsgType.NACK):
                self.stats.errors[exc.code] += 1
                return [FrameError(exc)]  # never answer an answer
            reason = NackReason.BAD_PAYLOAD if isinstance(exc, BadPayload) \
                else NackReason.UNSUPPORTED
            return self._bad_frame(exc, frame.seq, reason)
        if isinstance(message, Ack):
            return self._on_ack(message, now)
        if isinstance(message, Nack):
            return self._on_nack(message, now)
        if isinstance(message, Hello):
            self._last_seq = None  # a new session: the peer's seq starts over
            self.peer_max_payload = min(self.max_payload, message.max_payload)
        elif frame.seq == self._last_seq:
            self.stats.duplicates += 1
            self._write(self._last_answer)
            return []
        answer = self.answer(message)
        wire = self._reply(_with_seq(answer, frame.seq))
        if isinstance(answer, Nack) and answer.reason == NackReason.BUSY:
            return []  # not taken: the peer resends it, and that resend is judged afresh
        self._last_seq, self._last_answer = frame.seq, wire
        return [] if isinstance(answer, Nack) else [Received(message, frame.seq)]

    def _on_ack(self, ack: Ack, now: float) -> list[Event]:
        flight = self._inflight
        if flight is None or ack.seq != flight.seq:
            return []  # a late answer to something already settled
        self._inflight = None
        self.stats.delivered += 1
        self._start_next(now)
        return [Delivered(flight.token, flight.message, ack)]

    def _on_nack(self, nack: Nack, now: float) -> list[Event]:
        flight = self._inflight
        if flight is None:
            return []
        if nack.reason == NackReason.BAD_FRAME:
            return self._resend(now, "peer could not decode it")  # its seq is a guess
        if nack.seq != flight.seq:
            return []
        if nack.reason in RETRYABLE_NACKS:
            return self._resend(now, f"peer busy ({nack.reason})")
        self._inflight = None
        self.stats.failed += 1
        self._start_next(now)
        return [Failed(flight.token, flight.message, _nack_text(nack), nack)]


def _with_seq(answer: Ack | Nack, seq: int) -> Ack | Nack:
    if isinstance(answer, Ack):
        return Ack(seq, answer.detail)
    return Nack(seq, answer.reason, answer.detail)


def _nack_text(nack: Nack) -> str:
    try:
        name = NackReason(nack.reason).name
    except ValueError:
        name = f"reason {nack.reason}"
    return f"refused by the peer: {name} (detail {nack.detail})"
