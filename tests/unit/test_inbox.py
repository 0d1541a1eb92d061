"""The byte-bounded inbox between paho's network thread and a service loop (fakes only:
the real paho path is tests/integration/test_inbox_backpressure.py)."""

from __future__ import annotations

import queue
import threading

import pytest

from edge_client.shared.inbox import MESSAGE_OVERHEAD, Inbox, message_cost
from edge_client.shared.transport import Connected, Inbound

WAIT_S = 5.0  # generous: only a failing test waits this long


def _message(size: int, topic: str = "t") -> Inbound:
    return Inbound(topic, b"x" * size, False)


def _put_in_thread(inbox: Inbox, event: object) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(inbox.put(event)), daemon=True)
    thread.start()
    return thread, result


def test_message_cost_counts_payload_topic_and_overhead():
    assert message_cost(_message(1000, "abc")) == 1000 + 3 + MESSAGE_OVERHEAD
    assert message_cost(Connected()) == 0


def test_a_full_inbox_blocks_the_putter_until_the_loop_takes_one():
    inbox = Inbox(max_bytes=2 * (1000 + 1 + MESSAGE_OVERHEAD), block_s=60)
    assert inbox.put(_message(1000)) and inbox.put(_message(1000))
    thread, result = _put_in_thread(inbox, _message(1000))
    thread.join(0.3)
    assert thread.is_alive() and result == []  # waiting: paho stops reading the socket
    assert inbox.blocked == 1 and inbox.qsize() == 2
    inbox.get(timeout=1)
    thread.join(WAIT_S)
    assert result == [True] and inbox.qsize() == 2
    assert inbox.held_bytes <= inbox.max_bytes and inbox.over_bound == 0


def test_control_events_never_block_and_are_not_counted():
    inbox = Inbox(max_bytes=2000, block_s=60)
    inbox.put(_message(1500))
    for event in (Connected(), "an operator's request"):
        assert inbox.put(event)  # would hang this test if it blocked
    assert inbox.held_bytes == 1500 + 1 + MESSAGE_OVERHEAD
    assert [type(inbox.get(timeout=1)) for _ in range(3)] == [Inbound, Connected, str]


def test_one_message_larger_than_the_bound_passes_an_empty_inbox():
    inbox = Inbox(max_bytes=1000, block_s=60)
    inbox.put(Connected())  # control events do not count as "not empty"
    assert inbox.put(_message(5000))
    assert inbox.blocked == 0 and inbox.peak_bytes > inbox.max_bytes


def test_after_block_s_one_message_is_let_in_over_the_bound_with_a_warning(caplog):
    inbox = Inbox(max_bytes=1500, block_s=0.2)
    inbox.put(_message(1000))
    with caplog.at_level("WARNING"):
        assert inbox.put(_message(1000))  # nobody reads: waits block_s, then passes
    assert inbox.over_bound == 1 and inbox.qsize() == 2
    assert "queue full" in caplog.text and "not keeping up" in caplog.text


def test_close_releases_a_waiting_putter_and_drops_later_messages():
    inbox = Inbox(max_bytes=1500, block_s=60)
    inbox.put(_message(1000))
    thread, result = _put_in_thread(inbox, _message(1000))
    thread.join(0.2)
    assert thread.is_alive()
    inbox.close()
    thread.join(WAIT_S)
    assert result == [False]
    assert inbox.put(_message(10)) is False and inbox.dropped == 2
    assert inbox.put(Connected())  # control events still pass
    inbox.reopen()  # a device back from sleep starts its link again
    inbox.get(timeout=1)
    assert inbox.put(_message(10)) and inbox.dropped == 2 and inbox.over_bound == 0


def test_get_times_out_like_a_queue():
    with pytest.raises(queue.Empty):
        Inbox().get(timeout=0.01)
    with pytest.raises(queue.Empty):
        Inbox().get_nowait()


def test_fifo_order_is_kept_across_a_wait():
    inbox = Inbox(max_bytes=1300, block_s=60)
    inbox.put(_message(1000, "a"))
    thread, _ = _put_in_thread(inbox, _message(1000, "b"))
    thread.join(0.1)
    assert [inbox.get(timeout=WAIT_S).topic for _ in range(2)] == ["a", "b"]
    thread.join(WAIT_S)


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"block_s": 0}])
def test_nonsense_bounds_are_refused(kwargs):
    with pytest.raises(ValueError):
        Inbox(**kwargs)


def test_a_waiting_putter_runs_while_waiting_between_waits():
    inbox = Inbox(max_bytes=1500, block_s=60)
    inbox.put(_message(1000))
    calls = []
    thread = threading.Thread(target=inbox.put, args=(_message(1000),),
                              kwargs={"while_waiting": lambda: calls.append(1)}, daemon=True)
    thread.start()
    thread.join(0.3)  # several wait slices: the link writes paho's packets in each
    assert len(calls) >= 2
    inbox.get(timeout=1)
    thread.join(WAIT_S)
    assert not thread.is_alive() and inbox.qsize() == 1


def test_with_sources_an_honest_message_does_not_wait_behind_a_flood():
    inbox = Inbox(max_bytes=10**7, source_of=lambda e: getattr(e, "topic", "").split("/")[-1])
    for i in range(100):
        inbox.put(Inbound("fedge/f/update/evil", i.to_bytes(2, "big"), False))
    inbox.put(Inbound("fedge/f/update/honest", b"h", False))
    inbox.put(Connected())  # control events share one source
    first = [inbox.get(timeout=1) for _ in range(3)]
    assert {getattr(e, "topic", "control") for e in first} == {
        "fedge/f/update/evil", "fedge/f/update/honest", "control"}
    rest = [inbox.get(timeout=1) for _ in range(99)]
    evil = [first[0], *rest]  # a source's own messages keep their order
    assert [int.from_bytes(e.payload, "big") for e in evil] == list(range(100))
    assert inbox.qsize() == 0 and inbox.held_bytes == 0
