"""Two sites bridged to a top broker that wants TLS, a password per site and per-site ACLs
(`broker-config --devices <sites>` for the top, a bridge section with the site's password
and the top's CA for each site): the federation runs to the end through them."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pytest

from aggregator.broker_bridge import BridgePlan, bridge_section
from aggregator.broker_config import BrokerSecurityPlan, write_broker_config
from aggregator.store import Store
from aggregator.tier_view import sites
from edge_client.shared.security import BrokerAuth
from fedge.broker import MosquittoBroker, free_port
from fedge.tiers.federation import TieredFederation
from tests.integration.fleet import Digits
from tests.integration.tiers import TOP, build

pytestmark = pytest.mark.integration
SITES = ["site-a", "site-b"]


def test_sites_reach_a_secured_top_broker_with_their_own_passwords(tmp_path):
    data = Digits(devices=4)
    folder = Path(tempfile.mkdtemp(prefix="fedge-tiers-top-"))  # the mosquitto user reads it
    try:
        port = free_port()
        files = write_broker_config(BrokerSecurityPlan(TOP, tuple(SITES), port=port), folder)
        with ExitStack() as stack:
            top = stack.enter_context(MosquittoBroker.start_with_conf(files.conf, port))
            brokers = {site: stack.enter_context(MosquittoBroker.start(
                workdir=tmp_path / f"broker-{site}", extra_conf=bridge_section(BridgePlan(
                    site, TOP, "127.0.0.1", port, files.credentials[site], files.ca_cert))))
                for site in SITES}
            with TieredFederation(top) as tiers:
                build(tiers, tmp_path, data, SITES, brokers, per_site=2, rounds=2,
                      broker_auth=BrokerAuth(ca_file=files.ca_cert, username="aggregator",
                                          password_file=folder / "credentials" /
                                          "aggregator.txt"))
                result = tiers.run(timeout_s=240)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert result.top.version == 2
    rows = sites(Store(tmp_path / "top.sqlite3"))
    assert [(r["site"], r["aggregates_used"], r["devices_behind"]) for r in rows] == [
        ("site-a", 2, 2), ("site-b", 2, 2)]
