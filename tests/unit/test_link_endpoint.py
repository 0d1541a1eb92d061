"""Two link endpoints back to back, with a wire that drops, corrupts and repeats frames."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from firmware_bridge.link import (
    Ack,
    Delivered,
    Failed,
    Frame,
    FrameError,
    FrameReader,
    Hello,
    LinkEndpoint,
    Log,
    ModelBegin,
    Nack,
    NackReason,
    Received,
    RetryPolicy,
    Sample,
    decode_message,
    encode_frame,
)

RETRY = RetryPolicy(ack_timeout_s=1.0, max_retries=3)
Tamper = Callable[[bytes], list[bytes]]  # one frame in, what the wire delivers out


def frames_of(data: bytes) -> list[bytes]:
    parts = data.split(b"\x00")
    return [p + b"\x00" for p in parts[:-1]]


class Pair:
    """Endpoints a (the bridge) and b (the MCU) and a wire between them, all by hand."""

    def __init__(self, a_to_b: Tamper | None = None, b_to_a: Tamper | None = None,
                 answer_b=None) -> None:
        self.a = LinkEndpoint(retry=RETRY)
        self.b = LinkEndpoint(retry=RETRY, **({"answer": answer_b} if answer_b else {}))
        self.tamper = {"ab": a_to_b or (lambda f: [f]), "ba": b_to_a or (lambda f: [f])}
        self.now = 0.0
        self.events: dict[str, list] = {"a": [], "b": []}

    def pump(self, rounds: int = 50) -> None:
        """Move bytes until both sides are quiet, advancing time when only timers remain."""
        for _ in range(rounds):
            moved = self._move("ab", self.a, self.b, "b") | self._move("ba", self.b, self.a,
                                                                         "a")
            if moved:
                continue
            deadlines = [t for t in (self.a.poll_timeout(), self.b.poll_timeout()) if t]
            if not deadlines:
                return
            self.now = min(deadlines)
            self.events["a"] += self.a.handle_timeout(self.now)
            self.events["b"] += self.b.handle_timeout(self.now)

    def _move(self, key: str, src: LinkEndpoint, dst: LinkEndpoint, name: str) -> bool:
        data = src.data_to_send()
        for frame in frames_of(data):
            for piece in self.tamper[key](frame):
                self.events[name] += dst.receive_data(piece, self.now)
        return bool(data)

    def of(self, side: str, kind: type) -> list:
        return [e for e in self.events[side] if isinstance(e, kind)]


def sample(i: int) -> Sample:
    return Sample.from_values([i, i + 1], (2,), label=i % 10)


def test_messages_are_delivered_once_and_acknowledged() -> None:
    pair = Pair()
    tokens = [pair.b.send(sample(i), pair.now) for i in range(5)]
    pair.pump()
    assert [e.message for e in pair.of("a", Received)] == [sample(i) for i in range(5)]
    assert [e.token for e in pair.of("b", Delivered)] == tokens
    assert pair.b.idle and pair.b.stats.retransmissions == 0


def _corrupt_nth(n: int, kind: int | None = None) -> Tamper:
    """Flip a bit in the n-th frame (of one message type, if given) once."""
    seen = [0]

    def tamper(frame: bytes) -> list[bytes]:
        reader = FrameReader()
        reader.feed(frame)
        f = reader.next_frame()
        if kind is not None and f is not None and f.type != kind:
            return [frame]
        seen[0] += 1
        if seen[0] != n:
            return [frame]
        bad = bytearray(frame)
        bad[len(bad) // 2] ^= 0x04 if bad[len(bad) // 2] != 0x04 else 0x08
        return [bytes(bad)]
    return tamper


def test_a_corrupted_frame_is_nacked_and_resent() -> None:
    pair = Pair(b_to_a=_corrupt_nth(2))
    for i in range(3):
        pair.b.send(sample(i), pair.now)
    pair.pump()
    assert [e.message for e in pair.of("a", Received)] == [sample(i) for i in range(3)]
    assert len(pair.of("a", FrameError)) == 1
    assert pair.b.stats.retransmissions == 1
    assert pair.now == 0.0  # the NACK made it quick: no timeout was needed


def test_a_lost_ack_is_resent_after_the_timeout_and_the_repeat_is_not_delivered() -> None:
    dropped = []

    def drop_first_ack(frame: bytes) -> list[bytes]:
        if not dropped:
            dropped.append(frame)
            return []
        return [frame]
    pair = Pair(a_to_b=drop_first_ack)
    pair.b.send(sample(1), pair.now)
    pair.b.send(sample(2), pair.now)
    pair.pump()
    assert [e.message for e in pair.of("a", Received)] == [sample(1), sample(2)]
    assert pair.a.stats.duplicates == 1
    assert pair.b.stats.retransmissions == 1
    assert pair.now == RETRY.ack_timeout_s


def test_a_message_nobody_answers_fails_after_bounded_retries() -> None:
    pair = Pair(b_to_a=lambda f: [])
    token = pair.b.send(Log(1, "hello?"), pair.now)
    pair.pump()
    failed = pair.of("b", Failed)
    assert [f.token for f in failed] == [token]
    assert "4 tries" in failed[0].reason
    assert pair.b.stats.retransmissions == RETRY.max_retries
    assert pair.b.idle


def test_a_refusal_fails_without_resending_and_carries_the_reason() -> None:
    def refuse_models(message):
        return Nack(0, NackReason.NO_SPACE, 1000) if isinstance(message, ModelBegin) else Ack(0)
    pair = Pair(answer_b=refuse_models)
    token = pair.a.send(ModelBegin(5000, 1, 1), pair.now)
    pair.a.send(Log(1, "after"), pair.now)
    pair.pump()
    failed = pair.of("a", Failed)
    assert [f.token for f in failed] == [token]
    assert failed[0].nack == Nack(0, NackReason.NO_SPACE, 1000)
    assert [type(e.message) for e in pair.of("b", Received)] == [Log]  # refused: not delivered
    assert pair.a.stats.retransmissions == 0


def test_ack_detail_reaches_the_sender() -> None:
    pair = Pair(answer_b=lambda m: Ack(0, 0xCAFE))
    pair.a.send(Log(1, "x"), pair.now)
    pair.pump()
    assert pair.of("a", Delivered)[0].ack == Ack(0, 0xCAFE)


def test_hello_starts_a_new_session_so_a_rebooted_peer_is_not_taken_for_a_repeat() -> None:
    pair = Pair()
    pair.b.send(sample(0), pair.now)  # seq 0
    pair.pump()
    rebooted = LinkEndpoint(retry=RETRY)
    pair.b = rebooted
    rebooted.send(Hello("mcu", 1, 0, 128), pair.now)  # seq 0 again, after the reboot
    rebooted.send(sample(5), pair.now)  # seq 1
    pair.pump()
    got = [e.message for e in pair.of("a", Received)]
    assert got == [sample(0), Hello("mcu", 1, 0, 128), sample(5)]
    assert pair.a.peer_max_payload == 128


def test_sending_refuses_payloads_over_the_peers_maximum() -> None:
    endpoint = LinkEndpoint()
    endpoint.peer_max_payload = 32
    with pytest.raises(ValueError, match="over the link's maximum of 32"):
        endpoint.send(Log(1, "x" * 40), 0.0)
    with pytest.raises(ValueError, match="sent by the endpoint"):
        endpoint.send(Ack(1), 0.0)


def test_queue_is_bounded() -> None:
    endpoint = LinkEndpoint(max_queue=2)
    for i in range(3):  # one in flight, two queued
        endpoint.send(sample(i), 0.0)
    with pytest.raises(OverflowError):
        endpoint.send(sample(9), 0.0)


def test_a_garbled_answer_is_never_answered() -> None:
    """A bad ACK/NACK payload gets no NACK back, or two ends could argue forever."""
    endpoint = LinkEndpoint()
    endpoint.receive_data(encode_frame(Frame(0x20, 0, b"\x01")), 0.0)
    assert endpoint.data_to_send() == b""
    assert endpoint.stats.errors["bad_payload"] == 1


def test_every_answer_decodes() -> None:
    endpoint = LinkEndpoint()
    peer = LinkEndpoint()
    peer.send(sample(3), 0.0)
    endpoint.receive_data(peer.data_to_send() + b"\x01\x02\x00", 0.0)
    reader = FrameReader()
    reader.feed(endpoint.data_to_send())
    answers = [decode_message(f) for f in reader.frames()]
    assert answers == [Ack(0), Nack(0, NackReason.BAD_FRAME)]
