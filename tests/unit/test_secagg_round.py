"""The MQTT glue of secure aggregation without a broker: the aggregator's round driver
(`SecureRounds`, on a real SQLite store) and the devices' `DeviceSecAgg`, with every chunk
passed between them in memory. Exact sums, phase deadlines from `now`, dropouts,
duplicates and late messages, refusals counted as rejections, what is stored, the
config's refusals and the task field's wire form."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import numpy as np
import pytest

from aggregator.broker_config import device_acl_block
from aggregator.config import AggregatorConfig, SyncConfig, load_aggregator_config
from aggregator.privacy import PrivacyConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.secure_round import SecureRounds, forget_secure_round
from aggregator.store import Store
from aggregator.strategy import FedAvg
from edge_client.secagg_session import DeviceSecAgg, SecureRoundSession
from edge_client.shared.codecs import CodecConfig
from edge_client.shared.identity import load_or_create_identity
from edge_client.shared.protocol import Task, Topics, TrainConfig, decode, encode
from edge_client.shared.protocol.signing import seal
from edge_client.shared.protocol.tensors import flatten_sorted
from edge_client.shared.secagg import BadSecAggMessage, Phase
from edge_client.shared.secagg.messages import AdvertiseKeys, MaskedInput, decode_message
from edge_client.shared.secagg.prg import modulus_mask, to_wire
from edge_client.shared.secagg.task import SecAggTask
from edge_client.shared.security import AggregatorSecurity
from edge_client.shared.settings import ConfigError

FED = "unit"
MODEL = {"b": np.zeros(7, np.float32), "w": np.zeros((5, 9), np.float32)}  # 52 parameters
SIZE = 52
T0 = 1000.0  # the round's clock: every deadline is checked against `now`, never slept


def _config(tmp_path, devices: int = 5, target: int | None = None, min_fraction: float = 0.6,
            **secagg) -> AggregatorConfig:
    secagg.setdefault("phase_timeout_s", 10.0)
    return AggregatorConfig(federation=FED, db_path=tmp_path / "agg.sqlite3",
                            sync=SyncConfig(target_updates=target or devices,
                                            min_fraction=min_fraction, round_timeout_s=60),
                            secagg=SecAggConfig(enabled=True, **secagg))


def _task(devices: int, n: int = 1) -> Task:
    return Task(task_id=f"r{n}-abc", mode="sync", round=n, model_version=n - 1,
                train=TrainConfig(), deadline=T0 + 60,
                invited=tuple(f"dev-{i}" for i in range(devices)), chunk_size=1024)


class Fleet:
    """An aggregator's SecureRounds and its devices, relaying chunks in memory."""

    def __init__(self, tmp_path, devices: int = 5, seed: int = 0, **config) -> None:
        self.config = _config(tmp_path, devices=devices, **config)
        self.store = Store(self.config.db_path)
        self.topics = Topics(FED)
        self.secure = SecureRounds(self.config, self.store, self.topics, sign=lambda b: b)
        self.task = self.secure.open(_task(devices), SIZE, T0)
        self.settings = SecAggTask.from_wire(self.task.secagg)
        rng = np.random.default_rng(seed)
        self.deltas = {d: rng.normal(0, 0.3, SIZE) for d in self.task.invited}
        self.devices = {d: DeviceSecAgg(d, self.topics, 2**20, seal=lambda b: b)
                        for d in self.task.invited}
        self.inputs: dict[str, np.ndarray] = {}
        for device in self.devices.values():
            device.on_input = lambda task_id, x, d=device.device_id: self.inputs.__setitem__(d, x)
        self.rejections: list[tuple[str, str]] = []
        self.uplink: list[bytes] = []

    def join(self, devices=None) -> None:
        for d in devices if devices is not None else self.devices:
            self.up(d, self.devices[d].join(self.task, self.settings, self.deltas[d]))

    def up(self, device: str, chunks) -> None:
        for topic, chunk in chunks:
            assert topic in ("", self.topics.secagg(device))  # "": a test's own message
            self.uplink.append(chunk)
            reason = self.secure.receive(device, chunk, T0)
            if reason is not None:
                self.rejections.append((device, reason))

    def down(self, outgoing) -> None:
        for topic, chunk in outgoing:
            device = self.topics.device_of(topic)
            assert topic == self.topics.secagg_to(device)
            self.up(device, self.devices[device].on_chunk(chunk, unwrap=lambda b: b))

    def run(self, now: float = T0, limit: int = 8):
        """Tick until the round ends; returns the last step."""
        for _ in range(limit):
            step = self.secure.tick(now)
            if step.done or step.aborted:
                return step
            self.down(step.outgoing)
        raise AssertionError("the round did not end")

    def ring_sum(self, devices) -> np.ndarray:
        total = sum(self.inputs[d] for d in devices)
        return np.asarray(total, np.uint64) & modulus_mask(self.settings.bits)


# ---------------------------------------------------------------- whole rounds
def test_a_round_sums_exactly_and_credits_each_contributor_an_equal_share(tmp_path):
    fleet = Fleet(tmp_path, devices=5)
    fleet.join()
    assert fleet.run().done and not fleet.rejections
    result = fleet.secure.last_result
    assert result.contributors == fleet.task.invited
    assert np.array_equal(result.total, fleet.ring_sum(fleet.task.invited))
    outcome = fleet.secure.outcome(MODEL)
    fixed = fleet.settings.fixed_point(5)
    mean = fixed.decode_sum(result.total, 5) / 5
    assert [c.device_id for c in outcome.contributions] == list(fleet.task.invited)
    for c in outcome.contributions:
        assert np.allclose(flatten_sorted(c.delta), mean, atol=1e-6) and c.samples == 1
    plain = np.mean([np.clip(x, -fixed.clip, fixed.clip) for x in fleet.deltas.values()], 0)
    assert np.max(np.abs(mean - plain)) <= 1 / fixed.scale  # stochastic rounding only
    new = FedAvg().aggregate(MODEL, outcome.contributions)
    assert np.allclose(flatten_sorted(new), mean, atol=1e-6)
    info = outcome.info
    assert info["updates"] == 5 and info["devices"] == list(fleet.task.invited)
    assert info["secagg"]["contributors"] == 5 and info["secagg"]["dropped"] == 0
    assert info["update_bytes"] == 5 * SIZE * 4  # 32-bit words
    assert fleet.secure.round is None


def test_the_store_holds_the_masked_sum_and_never_an_input(tmp_path):
    fleet = Fleet(tmp_path, devices=4, min_fraction=0.75)
    fleet.join()
    fleet.run()
    fleet.secure.outcome(MODEL)
    rows = sqlite3.connect(fleet.config.db_path).execute(
        "SELECT state, phase, masked_count, masked_sum, bits FROM secagg_rounds").fetchall()
    assert len(rows) == 1
    state, phase, count, masked_sum, bits = rows[0]
    assert (state, phase, count) == ("done", "done", 4)
    masked = [decode_message(m) for m in _whole_messages(fleet.uplink)]
    masked = [m for m in masked if isinstance(m, MaskedInput)]
    words = sum(np.frombuffer(m.masked, "<u4").astype(np.uint64) for m in masked)
    assert masked_sum == to_wire(words & modulus_mask(bits), bits)  # the masked running sum
    stored = fleet.config.db_path.read_bytes() + _wal(fleet.config.db_path)
    for x in fleet.inputs.values():
        assert to_wire(x, bits)[:64] not in stored
    assert to_wire(fleet.ring_sum(fleet.inputs), bits)[:64] not in stored
    assert fleet.store.count_updates() == 0


@pytest.mark.parametrize("graph", ["complete", "sparse"])
def test_dropouts_after_sharing_keys_and_after_masking_still_give_the_survivors_sum(
        tmp_path, graph):
    fleet = Fleet(tmp_path, devices=10, min_fraction=0.5, graph=graph)
    gone = ["dev-1", "dev-4"]  # shared keys, never send their masked input
    late = ["dev-7"]  # masked input in, then silent while unmasking
    for d in gone:
        fleet.devices[d].silent_from = Phase.MASKED_INPUT
    for d in late:
        fleet.devices[d].silent_from = Phase.UNMASKING
    fleet.join()
    now = T0
    for _ in range(6):
        step = fleet.secure.tick(now)
        if step.done or step.aborted:
            break
        fleet.down(step.outgoing)
        now += 11  # each phase waits for its deadline when somebody is silent
    assert step.done and not fleet.rejections
    result = fleet.secure.last_result
    survivors = sorted(set(fleet.task.invited) - set(gone))
    assert list(result.contributors) == survivors
    assert np.array_equal(result.total, fleet.ring_sum(survivors))
    info = fleet.secure.outcome(MODEL).info["secagg"]
    assert info["dropped"] == 2 and info["unmask_missing"] == 1 and info["contributors"] == 8


def test_phase_zero_closes_at_the_target_and_a_late_device_is_ignored(tmp_path):
    fleet = Fleet(tmp_path, devices=6, target=5)
    fleet.join(["dev-0", "dev-1", "dev-2", "dev-3"])
    assert fleet.secure.tick(T0).outgoing == []  # 4 of a target of 5: wait
    fleet.join(["dev-4"])
    step = fleet.secure.tick(T0)
    assert {Topics(FED).device_of(t) for t, _ in step.outgoing} == {f"dev-{i}" for i in range(5)}
    fleet.join(["dev-5"])  # finished training after the phase closed
    assert fleet.rejections == []
    fleet.down(step.outgoing)
    assert fleet.run().done
    assert "dev-5" not in fleet.secure.last_result.contributors


def test_a_round_without_enough_devices_aborts_at_the_deadline(tmp_path):
    fleet = Fleet(tmp_path, devices=5)  # minimum ceil(0.6 * 5) = 3
    fleet.join(["dev-0", "dev-1"])
    assert fleet.secure.tick(T0 + 59).outgoing == []
    step = fleet.secure.tick(T0 + 60)
    assert step.aborted is not None and "only 2 of 5 invited devices joined" in step.aborted
    assert fleet.secure.round is None
    assert fleet.secure.log.rounds()[0]["state"] == "aborted"


def test_too_few_masked_inputs_abort_before_unmasking(tmp_path):
    fleet = Fleet(tmp_path, devices=5, min_fraction=0.8)  # 4 inputs needed
    for d in ("dev-0", "dev-2"):
        fleet.devices[d].silent_from = Phase.MASKED_INPUT
    fleet.join()
    now, step = T0, None
    for _ in range(4):
        step = fleet.secure.tick(now)
        if step.aborted:
            break
        fleet.down(step.outgoing)
        now += 11
    assert step.aborted is not None and "only 3 devices sent their masked input" in step.aborted


def test_duplicates_and_late_messages_are_ignored_but_forgeries_are_rejected(tmp_path):
    fleet = Fleet(tmp_path, devices=4, min_fraction=0.75)
    fleet.join()
    advertise = fleet.devices["dev-0"].resend()
    fleet.up("dev-0", advertise)  # a resend after a reconnect: a duplicate
    assert fleet.rejections == []
    step = fleet.secure.tick(T0)
    fleet.up("dev-0", advertise)  # the same keys after the phase closed: late
    assert fleet.rejections == []
    fleet.down(step.outgoing + step.outgoing)  # relayed twice: devices answer the same
    assert fleet.rejections == []
    # dev-3 sends keys in dev-1's name, and a stranger talks on its own topic
    forged = AdvertiseKeys(round_id=fleet.task.task_id, device_id="dev-1", c_pk=bytes(32),
                           s_pk=bytes(32), seed_commitment=bytes(32))
    fleet.up("dev-3", _chunked(forged.to_bytes()))
    fleet.up("mallory", _chunked(dataclasses.replace(forged, device_id="mallory").to_bytes()))
    fleet.up("dev-2", _chunked(b"\x93not secagg"))
    assert [d for d, _ in fleet.rejections] == ["dev-3", "mallory", "dev-2"]
    assert "in the name of" in fleet.rejections[0][1]
    assert "not a participant" in fleet.rejections[1][1]
    assert fleet.run().done  # none of it changed the round


def test_signed_messages_are_checked_against_each_devices_enrolled_key(tmp_path):
    config = _config(tmp_path, devices=4, min_fraction=0.75)
    config.security = AggregatorSecurity(enabled=True, key_file=tmp_path / "agg.key")
    store = Store(config.db_path)
    secure = SecureRounds(config, store, Topics(FED), sign=lambda b: b)
    task = secure.open(_task(4), SIZE, T0)
    settings = SecAggTask.from_wire(task.secagg)
    keys = {d: load_or_create_identity(tmp_path / f"{d}.key") for d in task.invited}
    for d in task.invited[:3]:
        store.enroll(d, keys[d].public_text)
    outcomes = {}
    for d in ("dev-0", "dev-2", "dev-3"):  # dev-1's key is enrolled; others speak for it
        device = DeviceSecAgg(d, Topics(FED), 2**20, seal=lambda b, d=d: seal(b, keys[d]))
        outcomes[d] = [secure.receive(d, c, T0)
                       for _, c in device.join(task, settings, np.zeros(SIZE))]
    assert outcomes["dev-0"] == [None] and outcomes["dev-2"] == [None]
    assert outcomes["dev-3"] == ["device 'dev-3' is not enrolled, or was revoked"]
    impostor = DeviceSecAgg("dev-1", Topics(FED), 2**20,
                            seal=lambda b: seal(b, keys["dev-0"]))  # dev-0 signs as dev-1
    forged = [secure.receive("dev-1", c, T0)
              for _, c in impostor.join(task, settings, np.zeros(SIZE))]
    assert forged == ["bad signature"]
    unsigned = DeviceSecAgg("dev-1", Topics(FED), 2**20, seal=lambda b: b)
    assert [secure.receive("dev-1", c, T0)
            for _, c in unsigned.join(task, settings, np.zeros(SIZE))] != [None]
    assert secure.round.joined == 2  # dev-0 and dev-2; the forgeries changed nothing


def test_random_k_rounds_mask_the_shared_coordinates_only(tmp_path):
    fleet = Fleet(tmp_path, devices=4, min_fraction=0.75, sparsify="randk", fraction=0.25)
    assert fleet.settings.dim == 13 and fleet.settings.coordinates().shape == (13,)
    fleet.join()
    assert fleet.run().done
    masked = [m for m in map(decode_message, _whole_messages(fleet.uplink))
              if isinstance(m, MaskedInput)]
    assert all(len(m.masked) == 13 * 4 for m in masked)
    outcome = fleet.secure.outcome(MODEL)
    share = flatten_sorted(outcome.contributions[0].delta)
    kept = fleet.settings.coordinates()
    assert np.count_nonzero(np.delete(share, kept)) == 0
    fixed = fleet.settings.fixed_point(4)
    expected = fixed.decode_sum(fleet.ring_sum(fleet.inputs), 4) / 4
    assert np.allclose(share[kept], expected, atol=1e-6)


def test_a_restart_aborts_the_open_secure_round(tmp_path):
    fleet = Fleet(tmp_path, devices=4)
    fleet.store.add_task(fleet.task, encode(fleet.task))
    fleet.join()
    opened = fleet.store.open_task()
    assert opened is not None and opened[0].secagg is not None
    assert forget_secure_round(fleet.store, opened) is None
    assert fleet.store.task_state(fleet.task.task_id)[2] == "aborted"
    row = fleet.secure.log.rounds()[0]
    assert row["state"] == "aborted" and "restarted" in row["info"]["reason"]
    plain = dataclasses.replace(fleet.task, task_id="r2-plain", secagg=None)
    assert forget_secure_round(fleet.store, (plain, 1.0)) == (plain, 1.0)


# ---------------------------------------------------------------- the device's session
def test_a_session_answers_a_repeated_message_the_same_and_ignores_other_rounds(tmp_path):
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    fleet.join()
    step = fleet.secure.tick(T0)
    topic, chunk = step.outgoing[0]
    device = fleet.devices[Topics(FED).device_of(topic)]
    first = device.on_chunk(chunk, unwrap=lambda b: b)
    again = device.on_chunk(chunk, unwrap=lambda b: b)
    assert [c for _, c in first] != [] and _whole_messages([c for _, c in first]) == \
        _whole_messages([c for _, c in again])
    assert device.session.phase is Phase.MASKED_INPUT
    other = SecAggTask.from_wire(fleet.task.secagg)
    stale = dataclasses.replace(fleet.task, task_id="r0-old")
    old_session = SecureRoundSession(device.device_id, stale, other, np.zeros(SIZE),
                                     np.random.default_rng(0))
    assert device.session.handle(old_session.setup.to_bytes()) is None  # not its round
    assert device.session.phase is Phase.MASKED_INPUT


def test_a_refused_message_ends_the_device_session_and_the_loop_goes_on(tmp_path, caplog):
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    fleet.join()
    device = fleet.devices["dev-0"]
    bogus = AdvertiseKeys(round_id=fleet.task.task_id, device_id="dev-0", c_pk=bytes(32),
                          s_pk=bytes(32), seed_commitment=bytes(32))  # not for devices
    assert device.on_chunk(_chunked(bogus.to_bytes())[0][1], unwrap=lambda b: b) == []
    assert device.session.phase is Phase.ABORTED and "left secure round" in caplog.text
    assert device.resend() == []


def test_a_device_refuses_a_round_its_model_does_not_fit(tmp_path, caplog):
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    device = fleet.devices["dev-0"]
    assert device.join(fleet.task, fleet.settings, np.zeros(SIZE + 1)) == []
    assert device.session is None and "cannot take part" in caplog.text
    with pytest.raises(ValueError, match="not invited"):
        SecureRoundSession("dev-9", fleet.task, fleet.settings, np.zeros(SIZE),
                           np.random.default_rng(0))


# ---------------------------------------------------------------- the task field
def test_the_task_field_round_trips_through_the_task_message(tmp_path):
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    task = decode(encode(fleet.task), expect=Task)
    assert task.secagg == fleet.task.secagg and task.codec is None
    settings = SecAggTask.from_wire(task.secagg)
    assert settings == fleet.settings and len(settings.round_seed) == 32
    assert settings.setup(task.task_id, task.invited) == fleet.secure.round.server.setup


@pytest.mark.parametrize("change, problem", [
    ({"v": 2}, "version 2 is not supported"),
    ({"extra": 1}, "unknown keys ['extra']"),
    ({"bits": "32"}, "must be integers"),
    ({"clip": True}, "must be numbers"),
    ({"bits": 99}, "bits must be in"),
    ({"round_seed": b"short"}, "round_seed must be 32 bytes"),
    ({"dim": 3}, "does not match size"),
    ({"sparsify": "topk"}, "sparsify must be one of"),
    ({"threshold": 1}, "threshold must be in"),
    ({"scale": 1e-9}, "rounds every value to 0"),
])
def test_bad_task_fields_are_refused_with_the_reason(tmp_path, change, problem):
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    raw = {**fleet.task.secagg, **change}
    with pytest.raises(BadSecAggMessage, match=problem.replace("[", r"\[").replace("]", r"\]")):
        SecAggTask.from_wire(raw)
    missing = dict(fleet.task.secagg)
    del missing["degree"]
    with pytest.raises(BadSecAggMessage, match="missing"):
        SecAggTask.from_wire(missing)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("table, keys", [
    ({"mode": "async"}, "mode = 'sync'"),
    ({"strategy": {"name": "median"}}, "strategy.name"),
    ({"strategy": {"name": "krum"}, "sync": {"target_updates": 9}}, "strategy.name"),
    ({"privacy": {"mode": "central"}}, "privacy.mode = 'distributed'"),
    ({"uplink": {"sparsify": "topk"}}, "uplink.sparsify = 'topk'"),
    ({"uplink": {"quantize": "q8"}}, "leave the [uplink] table out"),
    ({"sync": {"target_updates": 3, "min_fraction": 0.5}}, "sync.target_updates or sync.min"),
    ({"secagg": {"enabled": True, "bits": 16}}, "secagg.clip, secagg.value_bits and secagg.bits"),
    ({"secagg": {"enabled": True, "sparsify": "topk"}}, "secagg.sparsify"),
    ({"privacy": {"mode": "distributed", "clip": 2.0}}, "secagg.clip (1) must be at least"),
])
def test_the_config_refuses_what_secure_aggregation_cannot_do(table, keys):
    table = {"secagg": {"enabled": True}, **table}
    with pytest.raises(ConfigError, match=keys.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        load_aggregator_config(table)


def test_config_defaults_choose_the_word_that_holds_the_sum():
    config = load_aggregator_config({"secagg": {"enabled": True},
                                     "sync": {"target_updates": 10, "over_selection": 0.5},
                                     "privacy": {"mode": "distributed", "clip": 0.5},
                                     "strategy": {"name": "fedadam"}})
    s = config.secagg
    assert s.scale == pytest.approx(32767.0) and s.modulus_bits(15) == 32
    assert dataclasses.replace(s, value_bits=8).modulus_bits(15) == 16
    assert SecAggConfig().enabled is False
    with pytest.raises(ConfigError):
        load_aggregator_config({"secagg": {"enabled": True, "phase_timeout_s": 0}})
    assert load_aggregator_config({"uplink": {"sparsify": "topk"}}).uplink == CodecConfig(
        sparsify="topk")  # without [secagg] nothing changes


def test_the_strategy_switch_refuses_robust_rules(tmp_path):
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    fleet.secure.check_strategy("fedyogi")
    with pytest.raises(ValueError, match="needs individual updates"):
        fleet.secure.check_strategy("trimmed_mean")


def test_each_device_may_write_only_its_own_secagg_topic_and_read_only_its_own_relay():
    block = device_acl_block("fed", "dev-1").splitlines()
    assert "topic write fedge/fed/secagg/dev-1" in block
    assert "topic read fedge/fed/secagg_to/dev-1" in block
    assert not any("secagg/+" in line or "secagg_to/+" in line or "#" in line.split("/")[-1]
                   for line in block if "secagg" in line)


# ---------------------------------------------------------------- helpers
def _chunked(body: bytes) -> list[tuple[str, bytes]]:
    from edge_client.shared.protocol.chunking import split
    return [("", c) for c in split(body, "t-" + str(len(body)), 4096)]


def _whole_messages(chunks: list[bytes]) -> list[bytes]:
    from edge_client.shared.protocol import Assembler
    assembler, out = Assembler(2**24, max_transfers_per_source=64), []
    for chunk in chunks:
        done = assembler.add("x", chunk, 0.0)
        if done is not None:
            out.append(done[1])
    return out


def _wal(db_path) -> bytes:
    wal = db_path.with_name(db_path.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_privacy_config_is_importable_with_secagg():  # distributed DP rides on the sum
    config = load_aggregator_config({"secagg": {"enabled": True, "clip": 2.0},
                                     "privacy": {"mode": "distributed", "clip": 1.0}})
    assert config.privacy == PrivacyConfig(mode="distributed", clip=1.0)


def test_a_sum_the_strategy_refuses_leaves_the_round_aborted_not_done(tmp_path):
    """The service's failure path: no version, so the secure round's row must not say done."""
    from aggregator.service import Aggregator, now

    class Refusing:
        def aggregate(self, global_weights, contributions, server_lr=1.0):
            raise ValueError("overflow")

    fleet = Fleet(tmp_path, devices=4)
    agg = Aggregator(fleet.config, initial_weights=MODEL, strategy=Refusing())
    agg.core.driver.rounds, agg.core.state.task = fleet.secure, fleet.task
    fleet.store.add_task(fleet.task, b"task")
    fleet.join()
    assert fleet.run().done
    assert agg.core.versions.make(agg.core.state, now()) == []  # takes the secure outcome
    assert agg.core.state.version == 0 and agg.core.state.task is None
    states = {r["task_id"]: (r["state"], r["info"]) for r in fleet.secure.log.rounds()}
    state, info = states[fleet.task.task_id]
    assert state == "aborted" and "overflow" in json.dumps(info)
