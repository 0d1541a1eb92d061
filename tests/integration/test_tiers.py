"""Two tiers over real, bridged mosquitto brokers (docs/tiers.md): two sites of devices,
each site's aggregator one device of the top aggregator, each site broker bridged to the
top broker. The top model is the flat FedAvg of the very device updates the sites used."""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack

import numpy as np
import pytest

from aggregator.config import AsyncConfig, SyncConfig
from aggregator.secagg.config import SecAggConfig
from aggregator.store import Store
from aggregator.tier_view import sites
from aggregator.upper_config import UpperConfig
from edge_client.client import ClientConfig
from edge_client.eligibility import EligibilityConfig
from edge_client.shared.security import AggregatorSecurity, DeviceSecurity
from edge_client.training import mlp_trainer
from fedge.tiers.federation import TieredFederation
from tests.integration.fleet import Digits
from tests.integration.tiers import (
    bridged_brokers,
    build,
    device_updates,
    flat_fedavg,
    site_config,
    stored_model,
    top_config,
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


def test_signed_at_both_tiers_each_party_pins_the_key_of_the_tier_above(tmp_path, digits):
    """The top signs its models and pins each site's key; each site signs its aggregates
    with its uplink key and re-signs the top's models with its own key, which its devices
    pin; each site pins its devices' keys."""
    with ExitStack() as stack:
        top_broker, brokers = bridged_brokers(stack, tmp_path, SITES)
        with TieredFederation(top_broker) as tiers:
            top = tiers.add_top(dataclasses.replace(
                top_config(tmp_path, len(SITES), 2),
                security=AggregatorSecurity(enabled=True, key_file=tmp_path / "top.key")),
                digits.initial_weights(), {"kind": "mlp", "sizes": digits.sizes})
            assert top.identity is not None
            for s, name in enumerate(SITES):
                config = site_config(tmp_path, name, PER_SITE)
                config.security = AggregatorSecurity(enabled=True,
                                                     key_file=tmp_path / f"{name}.key")
                config.upper = UpperConfig(security=DeviceSecurity(
                    key_file=tmp_path / f"{name}-upper.key",
                    aggregator_key=top.identity.public_text))
                site = tiers.add_site(name, config, brokers[name], digits.initial_weights(),
                                      {"kind": "mlp", "sizes": digits.sizes}, bridged=True)
                assert site.uplink.identity is not None and site.aggregator.identity
                top.store.enroll(name, site.uplink.identity.public_text)
                for d in range(PER_SITE):
                    i = s * PER_SITE + d
                    device = ClientConfig(
                        device_id=f"{name}-d{d}", federation=name,
                        state_dir=tmp_path / f"{name}-d{d}",
                        eligibility=EligibilityConfig(enabled=False),
                        security=DeviceSecurity(
                            key_file=tmp_path / f"{name}-d{d}.key",
                            aggregator_key=site.aggregator.identity.public_text))
                    client = site.federation.add_device(device, mlp_trainer(digits.sizes, i),
                                                        *digits.shards[i])
                    assert client.identity is not None
                    site.aggregator.store.enroll(device.device_id, client.identity.public_text)
            result = tiers.run(timeout_s=240)
    assert result.top.version == 2
    assert [h["updates"] for h in result.top.history] == [len(SITES)] * 2
    for site_result in result.sites.values():
        assert all(stats.bad_messages == 0 for stats in site_result.device_stats.values())
        for tensor, values in site_result.global_weights.items():
            np.testing.assert_array_equal(values, result.top.global_weights[tensor])


def test_an_async_top_over_sync_sites_connected_directly_to_one_broker(tmp_path, digits,
                                                                       mosquitto):
    """No bridge: every party on one broker, the uplinks straight to the top federation;
    the top buffers site aggregates as FedBuff buffers device updates."""
    brokers = dict.fromkeys(SITES, mosquitto)
    with TieredFederation(mosquitto) as tiers:
        build(tiers, tmp_path, digits, SITES, brokers, PER_SITE, rounds=3, bridged=False,
              mode="async", async_=AsyncConfig(buffer_size=2))
        result = tiers.run(timeout_s=240)
    assert result.top.version == 3 and result.final_accuracy is not None
    assert all(h["updates"] == 2 for h in result.top.history)
    for site_result in result.sites.values():
        assert all(stats.bad_messages == 0 for stats in site_result.device_stats.values())


def test_secure_aggregation_inside_each_site_sends_the_site_sum_up(tmp_path):
    """Each site sees only the sum of its three devices' updates (SecAgg); its aggregate,
    weighted by its contributors, is one update of the plain top tier."""
    data = Digits(devices=6)
    with ExitStack() as stack:
        top_broker, brokers = bridged_brokers(stack, tmp_path, SITES)
        with TieredFederation(top_broker) as tiers:
            tiers.add_top(top_config(tmp_path, len(SITES), 2), data.initial_weights(),
                          {"kind": "mlp", "sizes": data.sizes})
            for s, name in enumerate(SITES):
                config = dataclasses.replace(
                    site_config(tmp_path, name, 3), secagg=SecAggConfig(enabled=True),
                    sync=SyncConfig(target_updates=3, min_fraction=1.0, round_timeout_s=60))
                site = tiers.add_site(name, config, brokers[name], data.initial_weights(),
                                      {"kind": "mlp", "sizes": data.sizes}, bridged=True)
                for d in range(3):
                    device = ClientConfig(device_id=f"{name}-d{d}", federation=name,
                                          state_dir=tmp_path / f"{name}-d{d}",
                                          eligibility=EligibilityConfig(enabled=False))
                    site.federation.add_device(device, mlp_trainer(data.sizes, 3 * s + d),
                                               *data.shards[3 * s + d])
            result = tiers.run(timeout_s=240)
    assert [h["updates"] for h in result.top.history] == [2, 2]
    for name in SITES:  # no device update is stored at a site: only secure sums
        assert device_updates(tmp_path / f"{name}.sqlite3", 2, result.top.global_weights) == []
    rows = sites(Store(tmp_path / "top.sqlite3"))
    assert [(r["last_aggregate_samples"], r["devices_behind"]) for r in rows] == [(3, 3)] * 2
