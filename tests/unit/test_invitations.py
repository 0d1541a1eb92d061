"""The aggregator's side of invitations by name (aggregator/core/invitations.py): a
plain round's task stays small whatever the fleet and the round, the named top-ups get
an Invitation each, cleared when they answer or the round closes, and their updates are
accepted as invited."""

from __future__ import annotations

import dataclasses

import numpy as np

from aggregator.config import AggregatorConfig, SyncConfig
from aggregator.core.actions import ClearRetained, Publish, SendAck
from aggregator.core.invitations import Invitations, named_top_ups
from aggregator.participation import SyncRounds, TaskInfo
from aggregator.store import Store
from edge_client.shared.protocol import Ack, Invitation, Task, Topics, Update, decode, encode
from edge_client.shared.protocol.signing import is_signed

TOPICS = Topics("fed")


def _sign(body: bytes) -> bytes:
    return b"signed:" + body


def _fleet(devices: int, proven: int) -> tuple[list[str], set[str]]:
    fleet = [f"dev-{i:05d}" for i in range(devices)]
    return fleet, set(fleet[:proven])


def _plan(devices: int, proven: int, target: int) -> Task:
    fleet, known = _fleet(devices, proven)
    rounds = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=target), seed=4))
    task = rounds.plan(1, 0, fleet, now=0.0, proven=known)
    assert task is not None
    return task


def _update(device: str, task_id: str) -> Update:
    return Update(device_id=device, task_id=task_id, nonce="ab" * 8, base_version=0,
                  num_samples=1, tensors={"w": np.zeros(2, np.float32)})


def test_a_plain_task_at_10000_candidates_with_1000_proven_needed_is_under_1_kb():
    task = _plan(10_000, 1_000, 1_000)
    named = named_top_ups(task)
    assert len(named) > 800  # the draw holds ~100 proven: the rest are named
    assert task.invited is None and len(task.members) == 1_000 + len(named)
    size = len(encode(task))
    assert size < 1024, size
    assert len(encode(dataclasses.replace(task, invited=tuple(named)))) > 8 * size
    assert abs(len(encode(_plan(100, 10, 10))) - size) <= 8  # any fleet: only ints' widths


def test_the_named_devices_are_invited_and_judged_as_invited():
    task = _plan(300, 30, 10)
    named = named_top_ups(task)
    rounds = SyncRounds(AggregatorConfig(sync=SyncConfig(target_updates=10)))
    outsider = next(d for d in _fleet(300, 0)[0]
                    if d not in task.members and not task.cohort.includes(d))
    assert rounds.judge(_update(named[0], task.task_id), TaskInfo("sync", 0, "open", task),
                        task, 0).ack == "accepted"
    verdict = rounds.judge(_update(outsider, task.task_id), TaskInfo("sync", 0, "open", task),
                           task, 0)
    assert verdict.ack == "rejected" and verdict.reason == "device was not invited to this round"
    assert task.invited_count() == len(task.members)
    on_the_wire = decode(encode(task), expect=Task)  # a device sees no names
    assert not on_the_wire.invites(named[0]) and on_the_wire.members is None


def test_the_aggregator_remembers_whom_it_named_after_a_restart(tmp_path):
    task = _plan(300, 30, 10)
    store = Store(tmp_path / "a.sqlite3")
    store.add_task(task, encode(task))
    stored = store.open_task()[0]
    assert named_top_ups(stored) == named_top_ups(task)
    again = Invitations(TOPICS, _sign)
    again.resume(stored)
    assert again.devices == set(named_top_ups(task))
    store.close()


def test_invitations_are_published_signed_and_retained_then_cleared():
    task = _plan(300, 30, 10)
    named = named_top_ups(task)
    invitations = Invitations(TOPICS, _sign)
    opened = invitations.open(task)
    assert [a.topic for a in opened] == [TOPICS.invite(d) for d in sorted(named)]
    for action, device in zip(opened, sorted(named), strict=True):
        assert isinstance(action, Publish) and action.retain
        assert action.payload.startswith(b"signed:")
        message = decode(action.payload.removeprefix(b"signed:"), expect=Invitation)
        assert message == Invitation(task_id=task.task_id, device_id=device)
    assert invitations.republish() == opened
    first = sorted(named)[0]
    ack = SendAck(TOPICS.ack(first), b"", ack=Ack(status="accepted", task_id=task.task_id))
    other = SendAck(TOPICS.ack("dev-99999"), b"", ack=Ack(status="rejected"))
    assert invitations.answered([ack, other]) == [ClearRetained(TOPICS.invite(first))]
    assert invitations.answered([ack]) == []  # once
    closed = invitations.close()
    assert closed == [ClearRetained(TOPICS.invite(d)) for d in sorted(named)[1:]]
    assert invitations.close() == [] and invitations.republish() == []


def test_tasks_without_named_top_ups_send_no_invitations():
    everyone_proven = _plan(300, 300, 10)
    assert named_top_ups(everyone_proven) == []
    secure = Task("s1", "sync", 1, 0, everyone_proven.train, invited=("a", "b"))
    assert named_top_ups(secure) == [] and Invitations(TOPICS, _sign).open(secure) == []
    async_open = Task("v1-async", "async", 1, 0, everyone_proven.train)
    assert named_top_ups(async_open) == []
    assert not is_signed(encode(Invitation("t", "d")))
