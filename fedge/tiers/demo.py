"""`fedge demo --sites N --devices-per-site M`: two tiers of aggregators on one machine.

Each site is the flat demo's gateway (its config from the same flags) over its own
devices; the top aggregator federates the sites, each one device to it. With mosquitto,
every site has its own broker, bridged to a top broker (aggregator/broker_bridge.py);
without it, every party shares one embedded broker and the uplinks connect directly.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aggregator.broker_bridge import BridgePlan, bridge_section
from aggregator.config import AggregatorConfig, DownlinkConfig, SyncConfig
from aggregator.service import VersionReport
from edge_client.client import ClientConfig
from fedge.broker import BrokerHandle, MosquittoBroker, find_mosquitto, start_broker
from fedge.codec_spec import describe, parse_codec
from fedge.digits_job import DigitsJob
from fedge.fleet import SimulatedFleet
from fedge.profiles import profile_by_name
from fedge.tiers.federation import TieredFederation, TieredResult

if TYPE_CHECKING:
    from fedge.demo import Demo

TOP = "top"
TOP_UPLINK = "q8"  # site aggregates: 8-bit with error feedback at each site's uplink


def run_tiered_demo(demo: Demo, workdir: Path,
                    on_version: Callable[[VersionReport], None] | None = None
                    ) -> dict[str, Any]:
    fleet = demo.fleet
    started = time.monotonic()
    with ExitStack() as stack:
        top_broker, site_brokers, kind = _brokers(stack, workdir, fleet.sites, fleet.broker)
        result = _federate(demo, workdir, top_broker, site_brokers, on_version)
    return _summary(demo, result, kind, time.monotonic() - started)


def _brokers(stack: ExitStack, workdir: Path, sites: int, choice: str
             ) -> tuple[BrokerHandle, list[BrokerHandle], str]:
    """A mosquitto per site bridged to a top one; else one broker for everyone."""
    if choice != "embedded" and find_mosquitto() is not None:
        top = stack.enter_context(MosquittoBroker.start(workdir=workdir / "broker-top"))
        sites_brokers: list[BrokerHandle] = [stack.enter_context(MosquittoBroker.start(
            workdir=workdir / f"broker-{_site(s)}",
            extra_conf=bridge_section(BridgePlan(_site(s), TOP, top.host, top.port))))
            for s in range(sites)]
        return top, sites_brokers, f"mosquitto x {sites + 1} (sites bridged to the top)"
    if choice == "mosquitto":
        raise RuntimeError("mosquitto not found: apt-get install mosquitto")
    shared = stack.enter_context(start_broker(choice))
    return shared, [shared] * sites, f"{shared.kind} (one broker, direct uplinks)"


def _federate(demo: Demo, workdir: Path, top_broker: BrokerHandle,
              site_brokers: list[BrokerHandle],
              on_version: Callable[[VersionReport], None] | None) -> TieredResult:
    fleet, config = demo.fleet, demo.aggregator
    per_site, sites = fleet.devices_per_site, fleet.sites
    job = DigitsJob.split(sites * per_site, fleet.alpha, config.seed, fleet.hidden)
    simulated = SimulatedFleet(profile_by_name(fleet.profile, config.seed), workdir,
                               sites * per_site)
    with TieredFederation(top_broker) as tiers:
        tiers.add_top(top_config(config, workdir, sites), job.initial_weights(), job.arch,
                      evaluate=job.evaluator(), on_version=on_version)
        tiers.top.add_helper(simulated.run, "simulator")
        for s, broker in enumerate(site_brokers):
            site = tiers.add_site(_site(s), site_config(config, workdir, s, per_site), broker,
                                  job.initial_weights(), job.arch,
                                  bridged=broker is not top_broker,
                                  every_versions=fleet.site_versions)
            for d in range(per_site):
                i = s * per_site + d
                device = ClientConfig(device_id=f"{_site(s)}-device-{d}",
                                      federation=_site(s), state_dir=workdir / f"device-{i}",
                                      eligibility_check_s=0.2)
                xs, ys = job.shards[i]
                site.federation.add_device(device, simulated.trainer(i, job.device_trainer(i)),
                                           xs, ys, policy=simulated.policy(i))
        return tiers.run(fleet.timeout_s)


def top_config(flat: AggregatorConfig, workdir: Path, sites: int) -> AggregatorConfig:
    """The demo's gateway settings, over sites: each round waits for every site."""
    return dataclasses.replace(
        flat, federation=TOP, db_path=workdir / "top.sqlite3", uplink=parse_codec(TOP_UPLINK),
        downlink=DownlinkConfig(delta=False),
        sync=SyncConfig(target_updates=sites, round_timeout_s=300.0, wait_for_devices_s=60.0))


def site_config(flat: AggregatorConfig, workdir: Path, index: int,
                devices: int) -> AggregatorConfig:
    """The flat demo's gateway over this site's devices; its versions follow the top's."""
    return dataclasses.replace(flat, federation=_site(index), rounds=0,
                               db_path=workdir / f"{_site(index)}.sqlite3",
                               sync=dataclasses.replace(flat.sync, target_updates=devices))


def _site(index: int) -> str:
    return f"site-{index}"


def _summary(demo: Demo, result: TieredResult, broker: str, wall_s: float) -> dict[str, Any]:
    fleet, history = demo.fleet, result.top.history
    devices_up = sum(r.bytes_up for r in result.sites.values())
    train_s = [t for r in result.sites.values() for st in r.device_stats.values()
               for t in st.train_s]
    return {
        "final_accuracy": result.final_accuracy,
        "accuracy_per_version": result.top.accuracy_per_version,
        "rounds": fleet.rounds, "model_versions": len(history), "mode": demo.aggregator.mode,
        "sites": fleet.sites, "devices_per_site": fleet.devices_per_site,
        "devices": fleet.sites * fleet.devices_per_site, "broker": broker,
        "bytes_up": devices_up + sum(result.uplink_bytes_up.values()),
        "bytes_down": sum(r.bytes_down for r in result.sites.values())
        + sum(result.uplink_bytes_down.values()),
        "uplink_codec": {"devices": describe(demo.aggregator.uplink), "sites": TOP_UPLINK},
        "wall_s": round(wall_s, 3), "tiers": result.tiers(),
        "round_wall_s_median": result.tiers()[0]["round_s_median"],
        "train_s_median": statistics.median(train_s) if train_s else None,
    }


def print_tier_summary(s: dict[str, Any], stream: TextIO) -> None:
    lines = [f"broker            {s['broker']}",
             f"tiers             {s['sites']} sites x {s['devices_per_site']} devices, "
             f"{s['model_versions']} top versions ({s['mode']})",
             f"final accuracy    {s['final_accuracy']:.4f}",
             f"accuracy by round {' '.join(f'{a:.3f}' for a in s['accuracy_per_version'])}"]
    for tier in s["tiers"]:
        name = "top" if tier["tier"] == "top" else tier["site"]
        behind = (f"{tier['sites']} sites" if tier["tier"] == "top"
                  else f"{tier['devices']} devices")
        lines.append(f"{name:<17s} {tier['versions']} versions, {behind}, up "
                     f"{tier['bytes_up'] / 1e6:.2f} MB, down {tier['bytes_down'] / 1e6:.2f} MB")
    lines.append(f"wall time         {s['wall_s']:.2f} s")
    print("\n".join(lines), file=stream)
