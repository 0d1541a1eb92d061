"""Two tiers in one process: a top aggregator and its sites, each site a Federation.

Each site is an ordinary fedge.federation.Federation on its own broker (its aggregator,
its devices) plus the site's uplink as a helper party. A site's uplink reaches the top
tier either through its own broker, bridged to the top broker (`bridged`: the broker
forwards the top federation's topics), or directly on the top broker.

    with TieredFederation(top_broker) as tiers:
        tiers.add_top(AggregatorConfig(federation="top", rounds=5), weights, arch)
        site = tiers.add_site("site-a", site_config, site_broker, bridged=True)
        site.add_device(...)
        result = tiers.run(timeout_s=300)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator, Evaluate, VersionReport
from edge_client.shared.protocol import Weights
from fedge.broker import BrokerHandle
from fedge.federation import Federation, FederationResult
from fedge.tiers.uplink import SiteUplink, uplink_config


@dataclass
class Site:
    name: str
    federation: Federation
    uplink: SiteUplink

    @property
    def aggregator(self) -> Aggregator:
        return self.federation.aggregator


@dataclass(frozen=True)
class TieredResult:
    top: FederationResult
    sites: dict[str, FederationResult]
    uplink_bytes_up: dict[str, int]  # what each site sent the top tier
    uplink_bytes_down: dict[str, int]
    wall_s: float

    @property
    def final_accuracy(self) -> float | None:
        return self.top.final_accuracy

    def tiers(self) -> list[dict[str, Any]]:
        """Each tier as the demo's summary reports it."""
        top = {"tier": "top", "versions": self.top.version, "sites": len(self.sites),
               "bytes_up": sum(self.uplink_bytes_up.values()),
               "bytes_down": sum(self.uplink_bytes_down.values()),
               "round_s_median": _median([h.get("round_wall_s") for h in self.top.history])}
        sites = [{"tier": "site", "site": name, "versions": r.version,
                  "devices": len(r.device_stats), "bytes_up": r.bytes_up,
                  "bytes_down": r.bytes_down,
                  "round_s_median": _median([h.get("round_wall_s") for h in r.history
                                             if h.get("updates")])}
                 for name, r in self.sites.items()]
        return [top, *sites]


class TieredFederation:
    def __init__(self, top_broker: BrokerHandle) -> None:
        self.top = Federation(top_broker)
        self.sites: list[Site] = []
        self._started = 0.0

    def __enter__(self) -> TieredFederation:
        self.top.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            for site in self.sites:
                site.federation.__exit__(kind, value, traceback)
        finally:
            self.top.__exit__(kind, value, traceback)

    def add_top(self, config: AggregatorConfig, initial_weights: Weights, arch: dict,
                evaluate: Evaluate | None = None,
                on_version: Callable[[VersionReport], None] | None = None) -> Aggregator:
        return self.top.add_aggregator(config, initial_weights, arch, evaluate=evaluate,
                                       on_version=on_version)

    def add_site(self, name: str, config: AggregatorConfig, broker: BrokerHandle,
                 initial_weights: Weights, arch: dict, *, bridged: bool,
                 every_versions: int = 1, state_dir: Path | None = None) -> Site:
        """A site on `broker` whose uplink reaches the top tier through `broker` when
        `bridged`, else on the top broker directly."""
        via = broker if bridged else self.top.broker
        upper = dataclasses.replace(config.upper, enabled=True, host=via.host, port=via.port,
                                    federation=self.top.aggregator.config.federation,
                                    site_id=name, every_versions=every_versions,
                                    state_dir=state_dir or config.upper.state_dir)
        federation = Federation(broker)
        federation.__enter__()
        aggregator = federation.add_aggregator(dataclasses.replace(config, upper=upper),
                                               initial_weights, arch)
        uplink = SiteUplink(uplink_config(aggregator.config), aggregator)
        federation.add_helper(uplink.run, f"uplink-{name}")
        site = Site(name, federation, uplink)
        self.sites.append(site)
        return site

    def start(self) -> None:
        self._started = time.monotonic()
        self.top.start()
        for site in self.sites:
            site.federation.start()

    def wait(self, timeout_s: float) -> None:
        """Until the top tier has made its versions and every site has finished."""
        deadline = time.monotonic() + timeout_s
        self.top.wait(timeout_s)
        for site in self.sites:
            site.federation.wait(max(1.0, deadline - time.monotonic()))

    def run(self, timeout_s: float = 600.0) -> TieredResult:
        self.start()
        self.wait(timeout_s)
        return self.result()

    def result(self) -> TieredResult:
        return TieredResult(
            top=self.top.result(),
            sites={s.name: s.federation.result() for s in self.sites},
            uplink_bytes_up={s.name: s.uplink.link.bytes_out for s in self.sites},
            uplink_bytes_down={s.name: s.uplink.link.bytes_in for s in self.sites},
            wall_s=time.monotonic() - self._started)



def _median(values: list[Any]) -> float | None:
    numbers = sorted(float(v) for v in values if v is not None)
    if not numbers:
        return None
    middle = len(numbers) // 2
    return numbers[middle] if len(numbers) % 2 else (numbers[middle - 1] + numbers[middle]) / 2
