"""Two tiers for integration tests: a top mosquitto, a mosquitto per site bridged to it,
the digits job split over every site's devices (docs/tiers.md)."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from aggregator.broker_bridge import BridgePlan, bridge_section
from aggregator.config import AggregatorConfig, DownlinkConfig, SyncConfig
from aggregator.ingest import open_flat_update
from edge_client.client import ClientConfig
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.protocol import Model, TrainConfig, Weights, decode
from edge_client.shared.protocol.tensors import flatten_sorted, unflatten_like
from edge_client.training import mlp_trainer
from fedge.broker import MosquittoBroker
from fedge.tiers.federation import TieredFederation
from tests.integration.fleet import Digits

TOP = "top"


def site_config(workdir: Path, name: str, devices: int) -> AggregatorConfig:
    """Dense updates, FedAvg, whole models down: what the exactness check needs."""
    return AggregatorConfig(federation=name, db_path=workdir / f"{name}.sqlite3", rounds=0,
                            train=TrainConfig(epochs=1, lr=0.1, momentum=0.5),
                            sync=SyncConfig(target_updates=devices, round_timeout_s=60),
                            downlink=DownlinkConfig(delta=False))


def top_config(workdir: Path, sites: int, rounds: int, **sync: float) -> AggregatorConfig:
    return AggregatorConfig(federation=TOP, db_path=workdir / "top.sqlite3", rounds=rounds,
                            sync=SyncConfig(target_updates=sites, **sync),  # type: ignore[arg-type]
                            downlink=DownlinkConfig(delta=False))


def bridged_brokers(stack: ExitStack, workdir: Path, sites: list[str]
                    ) -> tuple[MosquittoBroker, dict[str, MosquittoBroker]]:
    """The top broker, then one broker per site with a bridge to it."""
    top = stack.enter_context(MosquittoBroker.start(workdir=workdir / "broker-top"))
    brokers = {}
    for site in sites:
        bridge = bridge_section(BridgePlan(site, TOP, top.host, top.port))
        brokers[site] = stack.enter_context(MosquittoBroker.start(
            workdir=workdir / f"broker-{site}", extra_conf=bridge))
    return top, brokers


def build(tiers: TieredFederation, workdir: Path, data: Digits, sites: list[str],
          brokers: dict[str, MosquittoBroker], per_site: int, rounds: int,
          bridged: bool = True, **top_settings: object) -> None:
    """`top_settings`: AggregatorConfig fields of the top tier (broker_auth, mode, ...)."""
    top = dataclasses.replace(top_config(workdir, len(sites), rounds), **top_settings)
    tiers.add_top(top, data.initial_weights(),
                  {"kind": "mlp", "sizes": data.sizes},
                  evaluate=lambda w: {"accuracy": data.accuracy(w)})
    for s, name in enumerate(sites):
        site = tiers.add_site(name, site_config(workdir, name, per_site), brokers[name],
                              data.initial_weights(), {"kind": "mlp", "sizes": data.sizes},
                              bridged=bridged)
        for d in range(per_site):
            i = s * per_site + d
            x, y = data.shards[i]
            device = ClientConfig(device_id=f"{name}-d{d}", federation=name,
                                  state_dir=workdir / f"{name}-d{d}",
                                  eligibility=EligibilityConfig(enabled=False))
            site.federation.add_device(device, mlp_trainer(data.sizes, i), x, y)


def stored_model(db: Path, version: int) -> Weights:
    with sqlite3.connect(db) as con:
        blob = con.execute("SELECT blob FROM models WHERE version=?", (version,)).fetchone()[0]
    model = decode(blob, expect=Model)
    assert isinstance(model, Model)
    return {k: v.astype(np.float32) for k, v in model.tensors.items()}


def device_updates(db: Path, used_in: int, like: Weights) -> list[tuple[int, np.ndarray]]:
    """(samples, flat delta) of each device update a site version used."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT payload FROM updates WHERE used_in=?", (used_in,)).fetchall()
    out = []
    for (payload,) in rows:
        update, _values = open_flat_update(payload, like)
        out.append((update.num_samples, flatten_sorted(update.tensors)))
    return out


def flat_fedavg(base: Weights, updates: list[tuple[int, np.ndarray]]) -> Weights:
    total = sum(n for n, _ in updates)
    mean = sum(n * d.astype(np.float64) for n, d in updates) / total
    return unflatten_like(flatten_sorted(base) + mean, base)
