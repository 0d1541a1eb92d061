"""Devices and the aggregator together, without a broker: N device sessions and one
aggregator core on an in-memory bus, one scripted clock (tests/unit/paired_harness.py).
Every scenario is deterministic; faults are chosen by predicate on the bus."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.config import AsyncConfig, DownlinkConfig, SyncConfig
from aggregator.secagg.config import SecAggConfig
from edge_client.shared.protocol import Ack, Status, Task, Weights, decode, encode
from edge_client.shared.secagg import Phase
from tests.unit.paired_bus import Bus, Fault, Message, topic_matches
from tests.unit.paired_harness import (
    FED,
    Federation,
    final_weights,
    first_send_of,
    initial_weights,
)
from tests.unit.scripted_clock import ScriptedClock
from tests.unit.session_driver import ineligible


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Weights:
    """The final model of the clean run: faults that lose nothing must not change it."""
    fed = Federation(tmp_path_factory.mktemp("clean"))
    fed.start()
    fed.run_to_end()
    return final_weights(fed)


def assert_same_model(got: Weights, want: Weights) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key


def test_topic_filters_match_as_mqtt_does():
    assert topic_matches("fedge/f/update/+", "fedge/f/update/dev-0")
    assert not topic_matches("fedge/f/update/+", "fedge/f/update/dev-0/x")
    assert topic_matches("fedge/f/model/3/+", "fedge/f/model/3/0")
    assert not topic_matches("fedge/f/model/3/+", "fedge/f/model/3/d/0")
    assert topic_matches("fedge/#", "fedge/f/model/3/d/0") and topic_matches("fedge/#", "fedge")
    assert not topic_matches("fedge/f/task", "fedge/f/task/x")


def test_the_bus_keeps_retained_messages_wills_and_clean_sessions():
    clock = ScriptedClock()
    bus = Bus(clock)
    bus.connect("a", will=("t/status/a", b"offline"))
    bus.connect("b")
    bus.publish("a", "t/model", b"m1", retain=True)
    bus.subscribe("b", "t/#")
    assert bus.next_delivery() == Message("a", "b", "t/model", b"m1", retained=True)
    bus.publish("a", "t/model", b"", retain=True)  # cleared, still delivered
    assert bus.next_delivery() == Message("a", "b", "t/model", b"")
    assert bus.retained == {}
    bus.publish("b", "t/update/b", b"u")
    bus.disconnect("b")  # queued for a session that ended: lost, even after a reconnect
    bus.connect("b")
    assert bus.next_delivery() is None and [m.payload for m in bus.lost] == [b"u"]
    bus.subscribe("b", "t/status/+")
    bus.disconnect("a", clean=False)
    assert bus.next_delivery() == Message("a", "b", "t/status/a", b"offline")
    late = bus.fault(lambda m: m.topic == "t/x", Fault.DELAY, delay_s=2, times=1)
    bus.subscribe("b", "t/x")
    bus.publish("c", "t/x", b"1")
    bus.publish("c", "t/x", b"2")
    assert bus.next_delivery() == Message("c", "b", "t/x", b"2")
    clock.advance(2)
    assert bus.next_delivery() == Message("c", "b", "t/x", b"1") and len(late.hits) == 1


def test_a_clean_federation_of_three_devices_reaches_three_versions(tmp_path):
    fed = Federation(tmp_path)
    fed.start()
    fed.run_to_end()
    agg = fed.aggregator
    assert [v.version for v in agg.versions] == [1, 2, 3]
    assert [v.updates for v in agg.versions] == [3, 3, 3]
    for device in fed.devices:
        assert device.ack_statuses() == ["accepted"] * 3
        assert len(device.fits) == 3 and len(set(device.fits)) == 3
        assert device.session.model_version == 3
        assert device.session.downlink.model.sha256 == agg.store.latest_model().sha256
    fed.assert_no_update_lost()
    print(fed.clock.mono - 500, fed.steps)


def test_the_same_seed_gives_the_same_final_model(tmp_path, clean_run):
    fed = Federation(tmp_path)
    fed.start()
    fed.run_to_end()
    assert_same_model(final_weights(fed), clean_run)
    start = initial_weights()
    assert not np.array_equal(clean_run["dense0.weight"], start["dense0.weight"])


def test_a_lost_ack_is_resent_acked_as_duplicate_and_counted_once(tmp_path, clean_run):
    fed = Federation(tmp_path)
    lost = fed.bus.fault(lambda m: m.recipient == "dev-1" and "/ack/" in m.topic, Fault.DROP,
                         times=1)
    fed.start()
    fed.run_to_end()
    [dropped] = [decode(m.payload, expect=Ack) for m in lost.hits]
    assert isinstance(dropped, Ack) and dropped.status == "accepted"
    dev1 = fed[1]
    assert [a.status for a in dev1.acks if a.nonce == dropped.nonce] == ["duplicate"]
    assert dev1.session.stats.acks["duplicate"] == 1 and dev1.session.stats.acks["accepted"] == 2
    agg = fed.aggregator
    assert [v.updates for v in agg.versions] == [3, 3, 3]
    assert agg.store.counter("duplicates") == 1
    fed.assert_no_update_lost()
    assert_same_model(final_weights(fed), clean_run)


@pytest.mark.parametrize("again_after_s", [0.0, 5.0],
                         ids=["each-chunk-twice", "whole-update-again"])
def test_an_update_delivered_twice_is_counted_once(tmp_path, clean_run, again_after_s):
    fed = Federation(tmp_path)
    twice = fed.bus.fault(first_send_of("dev-0"), Fault.DUPLICATE, delay_s=again_after_s)
    fed.start()
    fed.run_to_end()
    assert twice.hits
    dev0 = fed[0]
    assert dev0.session.stats.acks == {"accepted": 3}  # a second ack of a cleared update
    agg = fed.aggregator
    assert [v.updates for v in agg.versions] == [3, 3, 3]
    assert agg.store.counter("duplicates") == (1 if again_after_s else 0)
    fed.assert_no_update_lost()
    assert_same_model(final_weights(fed), clean_run)


def test_every_message_delivered_twice_changes_nothing(tmp_path, clean_run):
    fed = Federation(tmp_path)
    fed.bus.fault(lambda m: True, Fault.DUPLICATE)  # QoS 1 at least once, everywhere
    fed.start()
    fed.run_to_end()
    assert [v.updates for v in fed.aggregator.versions] == [3, 3, 3]
    for device in fed.devices:
        assert device.ack_statuses() == ["accepted"] * 6  # each ack twice, taken once
        assert dict(device.session.stats.acks) == {"accepted": 3}
        assert len(device.fits) == 3 and device.bad_messages == 0
    fed.assert_no_update_lost()
    assert_same_model(final_weights(fed), clean_run)


def test_a_device_cut_off_mid_download_fetches_the_model_after_reconnecting(tmp_path,
                                                                              clean_run):
    fed = Federation(tmp_path)
    dev2 = fed[2]
    fed.start()
    fed.run(lambda: dev2.session.downlink.fetcher.fetching == 2)
    dev2.disconnect(clean=False)
    fed.step()
    assert fed.aggregator.version == 2 and dev2.session.model_version == 1
    dev2.connect()
    fed.run_to_end()
    assert [d.session.stats.models_via_delta for d in fed.devices] == [3, 3, 3]
    fed.assert_no_update_lost()
    assert_same_model(final_weights(fed), clean_run)


def test_an_update_after_its_round_closed_is_acked_late_and_not_aggregated(tmp_path):
    fed = Federation(tmp_path, rounds=2, device={"ack_timeout_s": 100.0},
                     sync=SyncConfig(target_updates=3, min_fraction=0.6, round_timeout_s=60))
    held = fed.bus.fault(first_send_of("dev-2"), Fault.DELAY, delay_s=70)
    fed.start()
    fed.run_to_end()
    assert held.hits
    agg = fed.aggregator
    assert [v.updates for v in agg.versions] == [2, 3]  # round 1 closed at its deadline
    assert agg.versions[0].round_wall_s >= 60
    dev2 = fed[2]
    first_update, second_update = dev2.stored
    statuses = {a.nonce: a.status for a in dev2.acks}
    assert statuses == {first_update: "late", second_update: "accepted"}
    assert agg.store.count_updates("late") == 1
    fed.assert_no_update_lost()


def test_a_stale_update_is_rejected_and_the_device_moves_on(tmp_path):
    fed = Federation(tmp_path, mode="async", rounds=3,
                     async_=AsyncConfig(buffer_size=2, max_staleness=0))
    fed.bus.fault(first_send_of("dev-2"), Fault.DELAY, delay_s=1.5)  # past a version
    fed.start()
    fed.run_to_end()
    dev2, agg = fed[2], fed.aggregator
    [refused] = [a for a in dev2.acks if a.status == "rejected"]
    assert "staleness 1 exceeds the maximum of 0" in refused.reason
    assert refused.nonce not in dev2.io.outbox.nonces()  # dropped, never resent
    assert len(dev2.fits) == len(set(dev2.fits))  # never trained twice for one task
    assert "accepted" in dev2.ack_statuses()[1:]  # it took part again later
    assert [r[0] for r in agg.store.rejections()] == ["dev-2"]
    assert [v.version for v in agg.versions] == [1, 2, 3]
    fed.assert_no_update_lost()


def test_the_aggregator_restarts_mid_round_and_the_devices_carry_on(tmp_path, clean_run):
    fed = Federation(tmp_path)
    agg = fed.aggregator
    fed.start()
    fed.run(lambda: agg.version == 1 and len(agg.core.state.pending) == 2)
    agg.crash()  # the third update of round 2 is still on its way: lost with the process
    for _ in range(5):
        fed.step()
    agg.start()  # from the same store
    assert agg.version == 1 and len(agg.core.state.pending) == 2
    agg.connect()
    fed.run_to_end()
    assert agg.starts == 2 and fed.bus.lost
    assert [v.version for v in agg.versions] == [1, 2, 3]
    assert [row.updates for row in agg.store.model_history()[1:]] == [3, 3, 3]
    for device in fed.devices:
        assert device.ack_statuses() == ["accepted"] * 3
    fed.assert_no_update_lost()
    assert_same_model(final_weights(fed), clean_run)


def test_a_device_restarts_from_its_outbox_and_sends_the_update_once(tmp_path, clean_run):
    fed = Federation(tmp_path)
    dev1 = fed[1]
    fed.bus.fault(first_send_of("dev-1"), Fault.DROP)
    fed.start()
    fed.run(lambda: len(dev1.stored) == 1)
    [nonce] = dev1.stored
    dev1.crash()  # the update is in its outbox, never arrived
    assert dev1.io.outbox.nonces() == [nonce] and dev1.session.model_version == 0
    dev1.connect()  # sent again at once
    fed.run_to_end()
    assert dev1.boots == 2 and len(dev1.fits) == 3 and len(set(dev1.fits)) == 3
    assert dev1.ack_statuses() == ["accepted"] * 3 and dev1.acks[0].nonce == nonce
    assert [v.updates for v in fed.aggregator.versions] == [3, 3, 3]
    fed.assert_no_update_lost()
    assert_same_model(final_weights(fed), clean_run)


@pytest.mark.parametrize(("keep_deltas", "via_delta"), [(8, True), (1, False)])
def test_a_device_that_missed_versions_catches_up(tmp_path, keep_deltas, via_delta):
    fed = Federation(tmp_path, rounds=4, downlink=DownlinkConfig(keep_deltas=keep_deltas),
                     sync=SyncConfig(target_updates=2, min_fraction=1.0, round_timeout_s=60))
    away, agg = fed[2], fed.aggregator
    fed.start()
    fed.run(lambda: away.session.model_version == 1)
    away.disconnect(clean=False)  # the broker says it is offline: not invited
    fed.run(lambda: agg.version == 3)
    missed = away.session.stats.models_via_delta
    away.connect()
    fed.run(lambda: away.session.model_version == 3)
    assert away.session.stats.models_via_delta - missed == int(via_delta)
    assert away.session.downlink.model.sha256 == agg.store.latest_model().sha256
    fed.run_to_end()
    assert all(d.session.model_version == 4 for d in fed.devices)
    fed.assert_no_update_lost()


def test_a_secure_round_with_a_dropout_aggregates_the_survivors(tmp_path):
    fed = Federation(tmp_path, devices=5, rounds=1,
                     sync=SyncConfig(target_updates=5, min_fraction=0.6, round_timeout_s=60),
                     secagg=SecAggConfig(enabled=True, phase_timeout_s=10, graph="complete"))
    fed[3].session.secure.device.silent_from = Phase.MASKED_INPUT  # keys shared, then gone
    fed.start()
    fed.run_to_end()
    agg = fed.aggregator
    [made] = agg.versions
    assert made.updates == 4
    row = agg.store.model_history()[-1]
    assert row.devices == ("dev-0", "dev-1", "dev-2", "dev-4")
    assert row.secagg is not None
    assert row.secagg["dropped"] == 1 and row.secagg["contributors"] == 4
    assert agg.store.count_updates() == 0  # never an unmasked input stored
    assert all(d.acks == [] and d.io.outbox.nonces() == [] for d in fed.devices)
    assert all(d.session.model_version == 1 for d in fed.devices)


SECURE = {"sync": SyncConfig(target_updates=5, min_fraction=0.6, round_timeout_s=60),
          "secagg": SecAggConfig(enabled=True, phase_timeout_s=10, graph="complete")}


def test_a_secure_round_cut_by_an_aggregator_restart_starts_again(tmp_path):
    fed = Federation(tmp_path, devices=5, rounds=2, **SECURE)
    agg = fed.aggregator
    fed.start()
    fed.run(lambda: agg.version == 1)
    fed.step()
    cut = agg.core.state.task
    assert cut is not None and cut.round == 2 and cut.secagg is not None
    agg.crash()  # the round's keys were in memory only
    fed.step()
    agg.start()
    agg.connect()
    fed.run_to_end()
    assert agg.store.task_state(cut.task_id)[2] == "aborted"
    row = agg.store.model_history()[-1]
    assert row.version == 2 and row.secagg is not None
    assert row.secagg["contributors"] == 5
    assert all(len(d.fits) == 3 for d in fed.devices)  # round 2 trained for twice
    assert agg.store.count_updates() == 0


def test_a_device_that_restarts_mid_secure_round_drops_out_of_it(tmp_path):
    fed = Federation(tmp_path, devices=5, rounds=2, **SECURE)
    agg = fed.aggregator
    fed.start()
    fed.run(lambda: agg.version == 1)
    fed.step()  # round 2's keys are advertised
    fed[2].crash()
    fed[2].connect()
    fed.run_to_end()
    row = agg.store.model_history()[-1]
    assert row.version == 2 and row.devices == ("dev-0", "dev-1", "dev-3", "dev-4")
    assert row.secagg is not None and row.secagg["dropped"] == 1
    assert fed[2].fits.count(fed[2].fits[-1]) == 1  # not trained again after the restart
    assert fed[2].session.model_version == 2


def test_a_device_that_turns_ineligible_mid_fit_sends_nothing_and_trains_again(tmp_path):
    fed = Federation(tmp_path, sync=SyncConfig(target_updates=3, min_fraction=0.6,
                                               round_timeout_s=60))
    dev1, eligible = fed[1], fed[1].decision
    dev1.between_batches = [eligible, ineligible("on battery")]  # the 2nd batch check
    fed.start()
    fed.run(lambda: len(dev1.fits) == 1)
    assert dev1.stored == [] and dev1.session.stats.stopped_mid_training == 1
    dev1.decision = ineligible("on battery")
    fed.run(lambda: fed.aggregator.version == 1)  # the deadline: 2 of 3 are enough
    dev1.decision = eligible
    fed.run_to_end()
    assert [v.updates for v in fed.aggregator.versions] == [2, 3, 3]
    assert dev1.session.stats.skipped["stopped: on battery"] == 1
    assert dev1.ack_statuses() == ["accepted", "accepted"]
    fed.assert_no_update_lost()


def test_devices_that_sleep_between_tasks_come_back_at_their_check_in(tmp_path):
    fed = Federation(tmp_path, device={"sleep_between_tasks": True})
    fed.start()
    fed.run_to_end()
    assert [v.updates for v in fed.aggregator.versions] == [3, 3, 3]
    assert all(d.session.stats.sleeps == 3 for d in fed.devices)
    fed.assert_no_update_lost()


def _among_ghosts(tmp_path) -> Federation:
    """3 proven devices (as from an earlier run) and 40 ghosts (retained statuses only)."""
    fed = Federation(tmp_path, rounds=2, sync=SyncConfig(target_updates=3, min_fraction=1.0,
                                                         round_timeout_s=60))
    fed.aggregator.core.presence.proven.update(d.name for d in fed.devices)
    for i in range(40):
        ghost = f"ghost-{i:02d}"
        status = Status(device_id=ghost, online=True, time=fed.clock.wall)
        fed.bus.publish(ghost, f"fedge/{FED}/status/{ghost}", encode(status), retain=True)
    return fed


def _invites(fed: Federation) -> set[str]:
    return {t for t, (_, p) in fed.bus.retained.items() if "/invite/" in t and p}


def test_a_newcomer_heavy_draw_is_topped_up_by_invitations_and_the_rounds_complete(tmp_path):
    """40 ghost devices (statuses only) and 3 proven devices: the drawn cohort is mostly
    ghosts, so the proven ones are invited by name, each by an Invitation on its own
    topic, not in the task; they train, the rounds complete, the invitations go."""
    fed = _among_ghosts(tmp_path)
    agg = fed.aggregator
    done: list[object] = []  # what the aggregator did, in order
    perform = agg.perform
    agg.perform = lambda actions: (done.extend(actions), perform(actions))  # type: ignore
    fed.start()
    fed.run(lambda: agg.core.state.task is not None)
    task = agg.core.state.task
    named = sorted(d for d in task.members if not task.cohort.includes(d))
    assert named and set(named) <= {d.name for d in fed.devices}
    assert _invites(fed) == {f"fedge/{FED}/invite/{d}" for d in named}
    sent = decode(fed.bus.retained[f"fedge/{FED}/task"][1], expect=Task)
    assert sent.invited is None and sent.cohort == task.cohort  # no names in the task
    fed.run_to_end()
    assert [v.updates for v in agg.versions] == [3, 3]
    for device in fed.devices:
        assert device.ack_statuses() == ["accepted"] * 2
    for name in named:
        assert task.task_id in fed[int(name.split("-")[1])].fits
    kinds = [(type(a).__name__, getattr(a, "topic", "")) for a in done]
    made = kinds.index(("VersionMade", ""))
    for name in named:  # cleared once the device answered, before the round closed
        assert kinds.index(("ClearRetained", f"fedge/{FED}/invite/{name}")) < made
    assert _invites(fed) == set()
    fed.assert_no_update_lost()


def test_invitations_lost_with_an_aggregator_restart_are_published_again(tmp_path):
    """The aggregator dies as it opens a topped-up round and the broker loses the
    retained invitations: the restarted aggregator resumes the round from its store and
    invites its named devices again; the round completes."""
    fed = _among_ghosts(tmp_path)
    agg = fed.aggregator
    fed.start()
    fed.run(lambda: agg.core.state.task is not None)
    task_id, lost = agg.core.state.task.task_id, _invites(fed)
    assert lost
    agg.crash()
    for topic in lost:
        fed.bus.retained.pop(topic)
    agg.start()
    agg.connect()
    assert _invites(fed) == lost and agg.core.state.task.task_id == task_id
    fed.run_to_end()
    assert [v.updates for v in agg.versions] == [3, 3] and _invites(fed) == set()
    fed.assert_no_update_lost()
