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
