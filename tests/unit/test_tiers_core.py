"""Two tiers through the sans-IO cores alone (docs/tiers.md): two site cores with [upper]
and a top core, fed what their shells would carry. With dense updates and FedAvg at both
tiers, the top's version is the flat FedAvg of every device update (the exactness claim);
a site holds its rounds while its aggregate is out and adopts each upper model once."""

from __future__ import annotations

import dataclasses

import numpy as np

from aggregator.config import AggregatorConfig, DownlinkConfig, SyncConfig
from aggregator.core import (
    AdoptModel,
    AggregatorCore,
    LinkUp,
    PublishTask,
    SendAck,
    SiteAggregate,
    StatusMessage,
    Tick,
    UpdateChunk,
    UpperAsks,
    UpperFinished,
    VersionMade,
)
from aggregator.privacy import PrivacyConfig
from aggregator.store import Store
from aggregator.strategy.config import StrategyConfig
from aggregator.tier_view import upper
from aggregator.upper_config import UpperConfig
from edge_client.shared.protocol import Status, Task, Topics, TrainConfig, Update, encode
from edge_client.shared.protocol.chunking import split
from tests.unit.scripted_clock import ScriptedClock as Clock

RNG = np.random.default_rng(3)
WEIGHTS = {"b": RNG.normal(size=3).astype(np.float32),
           "w": RNG.normal(size=(2, 4)).astype(np.float32)}


class Tier:
    """One core on a scripted clock, and what it answered."""

    def __init__(self, tmp_path, name: str, clock: Clock, devices: list[str],
                 upper: UpperConfig | None = None,
                 privacy: PrivacyConfig | None = None,
                 strategy: StrategyConfig | None = None) -> None:
        self.topics = Topics(name)
        config = AggregatorConfig(
            federation=name, db_path=tmp_path / f"{name}.sqlite3", rounds=0 if upper else 2,
            train=TrainConfig(epochs=1), downlink=DownlinkConfig(delta=False),
            sync=SyncConfig(target_updates=len(devices), min_fraction=1.0),
            upper=upper or UpperConfig(), privacy=privacy or PrivacyConfig(),
            strategy=strategy or StrategyConfig())
        self.clock, self.devices = clock, devices
        self.store = Store(config.db_path)
        self.core = AggregatorCore(config, self.store, clock.at(), lambda b: b,
                                   initial_weights=WEIGHTS)
        self.actions: list = []

    def send(self, event) -> list:
        out = self.core.handle(event)
        self.actions += out
        return out

    def tick(self, advance: float = 1.0) -> list:
        self.clock.advance(advance)
        return self.send(Tick(self.clock.at(), connected=True))

    def connect(self) -> None:
        self.send(LinkUp(self.clock.at()))
        for device in self.devices:
            status = Status(device_id=device, online=True, model_version=0,
                            time=self.clock.wall)
            self.send(StatusMessage(self.topics.status(device), encode(status), False,
                                    self.clock.at()))

    def upload(self, update: Update) -> list:
        out = []
        for chunk in split(encode(update), update.nonce, 1024):
            out += self.send(UpdateChunk(self.topics.update(update.device_id), chunk, False,
                                         self.clock.at()))
        return [a.ack for a in out if isinstance(a, SendAck)]


def _task(actions: list) -> Task:
    [task] = [a.task for a in actions if isinstance(a, PublishTask)]
    return task


def _update(device: str, task: Task, delta: dict, samples: int) -> Update:
    return Update(device_id=device, task_id=task.task_id, nonce=f"{device}-{task.task_id}",
                  base_version=task.model_version, num_samples=samples, tensors=delta,
                  metrics={"train_loss": 0.5})


def test_two_tiers_of_fedavg_make_the_flat_fedavg_of_every_device_update(tmp_path):
    clock = Clock()
    top = Tier(tmp_path, "top", clock, ["site-a", "site-b"])
    top.connect()
    top_task = _task(top.tick())
    sites = {name: Tier(tmp_path, name, clock, [f"{name}-d0", f"{name}-d1"],
                        UpperConfig(enabled=True, site_id=name, federation="top"))
             for name in ("site-a", "site-b")}
    flat: list[tuple[int, dict]] = []
    for s, (name, site) in enumerate(sites.items()):
        site.connect()
        assert not [a for a in site.tick() if isinstance(a, PublishTask)]  # no upper model
        made = site.send(AdoptModel(WEIGHTS, 0, clock.at()))
        assert [a.report.version for a in made if isinstance(a, VersionMade)] == [1]
        assert not [a for a in site.tick() if isinstance(a, PublishTask)]  # not invited yet
        site.send(UpperAsks(0, clock.at()))
        task = _task(site.tick())
        assert task.model_version == 1
        for d, device in enumerate(site.devices):
            delta = {k: RNG.normal(size=v.shape).astype(np.float32) for k, v in WEIGHTS.items()}
            samples = 10 + 7 * s + 3 * d
            flat.append((samples, delta))
            assert [a.status for a in site.upload(_update(device, task, delta, samples))] == [
                "accepted"]
        out = site.tick()
        [aggregate] = [a for a in out if isinstance(a, SiteAggregate)]
        assert (aggregate.upper_version, aggregate.site_version) == (0, 2)
        assert aggregate.samples == sum(n for n, _ in flat[-2:])
        assert not [a for a in out + site.tick(5) if isinstance(a, PublishTask)]  # held
        up = {k: aggregate.weights[k] - WEIGHTS[k] for k in WEIGHTS}  # what the uplink sends
        assert [a.status for a in top.upload(_update(name, top_task, up, aggregate.samples))
                ] == ["accepted"]
    top.tick()
    assert top.core.state.version == 1
    total = sum(n for n, _ in flat)
    for k in WEIGHTS:
        expected = WEIGHTS[k] + sum(n * d[k].astype(np.float64) for n, d in flat) / total
        np.testing.assert_allclose(top.core.state.weights[k], expected, rtol=1e-5, atol=1e-6)

    site = sites["site-a"]
    new = dict(top.core.state.weights)
    site.send(AdoptModel(new, 1, clock.at()))
    site.send(UpperAsks(1, clock.at()))
    assert site.core.state.version == 3 and _task(site.tick()).model_version == 3
    assert site.send(AdoptModel(new, 1, clock.at())) == []  # a restart installs it again
    assert site.core.state.version == 3
    view = upper(site.store)  # /api/upper
    assert view is not None and {k: view[k] for k in (
        "upper_version", "site_version", "asked", "versions", "updates", "samples",
        "site_id", "holding")} == {"upper_version": 1, "site_version": 3, "asked": True,
                                   "versions": 0, "updates": 0, "samples": 0,
                                   "site_id": "site-a", "holding": False}
    assert upper(top.store) is None
    site.send(UpperFinished("done", new, 1, clock.at()))
    assert site.core.state.finished and site.core.state.task is None  # its round ended
    assert site.core.state.version == 3  # already on the upper model
    for k in WEIGHTS:
        np.testing.assert_array_equal(site.core.state.weights[k], new[k])


def test_a_restarted_site_that_was_holding_hands_its_aggregate_out_again(tmp_path):
    clock = Clock()
    upper = UpperConfig(enabled=True, site_id="site-a", federation="top")
    site = Tier(tmp_path, "site-a", clock, ["d0"], upper)
    site.connect()
    site.send(AdoptModel(WEIGHTS, 4, clock.at()))
    site.send(UpperAsks(4, clock.at()))
    task = _task(site.tick())
    site.upload(_update("d0", task, {k: np.ones_like(v) for k, v in WEIGHTS.items()}, 12))
    [first] = [a for a in site.tick() if isinstance(a, SiteAggregate)]
    site.store.close()
    again = Tier(tmp_path, "site-a", clock, ["d0"], upper)
    [second] = [a for a in again.send(Tick(clock.at(), connected=True))
                if isinstance(a, SiteAggregate)]
    assert dataclasses.replace(second, weights={}) == dataclasses.replace(first, weights={})
    assert again.core.schedule.upper.holding


def test_robust_tiers_stop_a_poisoned_device_at_its_site_and_a_poisoned_site_at_the_top(
        tmp_path):
    """Trimmed mean at each site, coordinate-wise median at the top: a device sending a
    huge update moves neither its site's aggregate nor the top model far, and a whole
    site sending one (a compromised gateway) is outvoted by the two honest sites."""
    clock = Clock()
    honest = {k: np.full(v.shape, 0.1, np.float32) for k, v in WEIGHTS.items()}
    poison = {k: np.full(v.shape, 1000.0, np.float32) for k, v in WEIGHTS.items()}
    names = ("site-a", "site-b", "site-c")
    top = Tier(tmp_path, "top", clock, list(names), strategy=StrategyConfig(name="median"))
    top.connect()
    top_task = _task(top.tick())
    for name in names:
        site = Tier(tmp_path, name, clock, [f"{name}-d{i}" for i in range(5)],
                    UpperConfig(enabled=True, site_id=name, federation="top"),
                    strategy=StrategyConfig(name="trimmed_mean", trim_fraction=0.2))
        site.connect()
        site.tick()
        site.send(AdoptModel(WEIGHTS, 0, clock.at()))
        site.send(UpperAsks(0, clock.at()))
        task = _task(site.tick())
        for i, device in enumerate(site.devices):  # the last device of every site attacks
            delta = poison if i == 4 else {
                k: v + RNG.normal(scale=0.01, size=v.shape).astype(np.float32)
                for k, v in honest.items()}
            assert [a.status for a in site.upload(_update(device, task, delta, 10))] == [
                "accepted"]
        [aggregate] = [a for a in site.tick() if isinstance(a, SiteAggregate)]
        up = {k: aggregate.weights[k] - WEIGHTS[k] for k in WEIGHTS}
        for k in WEIGHTS:  # the site's trimmed mean cut its poisoned device
            np.testing.assert_allclose(up[k], honest[k], atol=0.02)
        if name == "site-c":  # a compromised site gateway poisons its whole aggregate
            up = poison
        assert [a.status for a in top.upload(_update(name, top_task, up, aggregate.samples))
                ] == ["accepted"]
    top.tick()
    assert top.core.state.version == 1
    for k in WEIGHTS:  # the median of three sites ignores the poisoned one
        np.testing.assert_allclose(top.core.state.weights[k] - WEIGHTS[k], honest[k],
                                   atol=0.02)
