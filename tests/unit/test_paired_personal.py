"""Personalised and clustered federations in memory (tests/unit/paired_harness.py): the
real device sessions and DeviceIO, the real aggregator core and store, one bus, one
scripted clock; a device restart keeps its own model."""

from __future__ import annotations

import numpy as np

from aggregator.clusters import ClustersConfig
from aggregator.personalize import PersonalizeConfig
from edge_client.shared.clusters import cluster_count, unstack
from tests.unit.paired_harness import Federation, final_weights, initial_weights

LAYERS = PersonalizeConfig(mode="layers", personal_layers=["dense1."])


def test_personal_layers_stay_home_and_survive_a_device_restart(tmp_path):
    fed = Federation(tmp_path, personalize=LAYERS)
    fed.start()
    dev1 = fed[1]
    fed.run(lambda: fed.aggregator.version >= 1)
    head = dev1.io.local.personal["dense1.weight"].copy()
    dev1.crash()  # the head was written beside the model: the restart keeps it
    assert np.array_equal(dev1.io.local.personal["dense1.weight"], head)
    dev1.connect()
    fed.run_to_end()
    final, start = final_weights(fed), initial_weights()
    assert np.abs(final["dense1.weight"] - start["dense1.weight"]).max() < 1e-3
    assert not np.allclose(final["dense0.weight"], start["dense0.weight"])
    for row in fed.aggregator.store.model_history()[1:]:
        assert set(row.metric("personal")["devices"]) == {"dev-0", "dev-1", "dev-2"}
    fed.assert_no_update_lost()


def test_clusters_make_one_stacked_model_and_each_update_names_its_cluster(tmp_path):
    fed = Federation(tmp_path, clusters=ClustersConfig(k=2))
    fed.start()
    fed.run_to_end()
    final = final_weights(fed)
    assert cluster_count(final) == 2 and len(unstack(final)) == 2
    last = fed.aggregator.store.model_history()[-1].metric("personal")
    assert sum(last["cluster_sizes"].values()) == 3
    for device in fed.devices:
        assert device.io.local.cluster == int(last["devices"][device.name]["cluster"])
        assert device.session.status.figures["cluster"] == device.io.local.cluster
    fed.assert_no_update_lost()


def test_with_a_rollout_a_personalised_device_serves_productions_variant_only(tmp_path):
    """Personalisation and staged rollout combine (docs/heterogeneity.md): a device
    serves production with its own head in it, never a candidate, and after a fit it
    serves production again with the head just trained."""
    from aggregator.lifecycle import RolloutConfig, Stage
    from fedge.rollout_demo import corrupt_nth_candidate

    rules = RolloutConfig(canary_fraction=0.5, min_canary_reports=2, margin=0.1,
                          canary_timeout_s=120)
    fed = Federation(tmp_path, devices=4, rounds=2, rollout=rules, personalize=LAYERS)
    fed.aggregator.core.versions.tamper = corrupt_nth_candidate(2)
    handed: dict[str, list[tuple[int, dict]]] = {d.name: [] for d in fed.devices}
    for device in fed.devices:
        def hook(version, arch, weights, device=device):
            device.served.append(version)
            handed[device.name].append((version, weights))
        device.io.on_model = hook
    fed.start()
    fed.run_to_end()
    store = fed.aggregator.store
    assert store.stage_of(2) is Stage.ROLLED_BACK and store.stage_of(3) is Stage.PRODUCTION
    for device in fed.devices:
        assert 2 not in device.served and device.served[-1] == 3, (device.name, device.served)
        version, weights = handed[device.name][-1]
        assert version == 3
        head = device.io.local.personal["dense1.weight"]
        assert np.array_equal(weights["dense1.weight"], head)  # its own head, the latest
        production = device.io._served
        assert production is not None and production[0] == 3
        assert np.array_equal(weights["dense0.weight"], production[2]["dense0.weight"])
