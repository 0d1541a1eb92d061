"""A site gateway: the site's aggregator and, with [upper] enabled, its uplink.

`fedge aggregator serve` runs one of these for a config with an [upper] table: the
aggregator on the caller's thread, the uplink on its own. An uplink that fails stops the
site; the site's stop stops the uplink; when the upper tier finishes, the site does too.
"""

from __future__ import annotations

import threading
from pathlib import Path

from aggregator.service import Aggregator
from fedge.federation.parties import PartyThread
from fedge.tiers.uplink import SiteUplink, uplink_config

JOIN_S = 30.0


class SiteGateway:
    def __init__(self, aggregator: Aggregator, state_dir: Path | None = None) -> None:
        self.aggregator = aggregator
        self.uplink = SiteUplink(uplink_config(aggregator.config, state_dir), aggregator)

    def run(self, stop: threading.Event | None = None, exit_when_done: bool = True) -> None:
        stop = stop or threading.Event()
        party = PartyThread(self.uplink.run, f"uplink-{self.uplink.config.device_id}",
                            lambda _party, _error: stop.set())
        try:
            self.aggregator.run(stop, exit_when_done)
        finally:
            party.stop.set()
            party.wait(JOIN_S)
        if party.error is not None:
            raise party.error
