"""Two tiers over real, bridged mosquitto brokers (docs/tiers.md): two sites of devices,
each site's aggregator one device of the top aggregator, each site broker bridged to the
top broker. The top model is the flat FedAvg of the very device updates the sites used."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest

from aggregator.store import Store
from aggregator.web.sites import sites
from fedge.tiers.federation import TieredFederation
from tests.integration.fleet import Digits
from tests.integration.tiers import (
    bridged_brokers,
    build,
    device_updates,
    flat_fedavg,
    stored_model,
)

pytestmark = pytest.mark.integration
SITES = ["site-a", "site-b"]
PER_SITE = 2


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(devices=len(SITES) * PER_SITE)


def test_two_bridged_sites_train_the_top_model_exactly_as_one_flat_federation(tmp_path,
                                                                              digits):
    rounds = 3
    with ExitStack() as stack:
        top_broker, brokers = bridged_brokers(stack, tmp_path, SITES)
        with TieredFederation(top_broker) as tiers:
            build(tiers, tmp_path, digits, SITES, brokers, PER_SITE, rounds)
            result = tiers.run(timeout_s=240)
    assert result.top.version == rounds
    assert [h["updates"] for h in result.top.history] == [len(SITES)] * rounds
    assert result.final_accuracy is not None and result.final_accuracy > 0.5
    for name, site in result.sites.items():  # each site ends on the top's last model
        assert site.version >= 2 * rounds + 1, name
        for tensor, values in site.global_weights.items():
            np.testing.assert_array_equal(values, result.top.global_weights[tensor])
        assert result.uplink_bytes_up[name] > 0
    rows = sites(Store(tmp_path / "top.sqlite3"))  # /api/sites of the top tier
    assert [r["site"] for r in rows] == SITES
    assert all(r["devices_behind"] == PER_SITE and r["aggregates_used"] == rounds
               and r["site_versions"] == 1 for r in rows)
    for version in range(1, rounds + 1):  # top v_k from the site versions 2k
        base = stored_model(tmp_path / "top.sqlite3", version - 1)
        updates = [u for name in SITES for u in device_updates(
            tmp_path / f"{name}.sqlite3", 2 * version, base)]
        assert len(updates) == len(SITES) * PER_SITE
        flat = flat_fedavg(base, updates)
        top = stored_model(tmp_path / "top.sqlite3", version)
        for name in base:
            np.testing.assert_allclose(top[name], flat[name], rtol=1e-5, atol=1e-6)
