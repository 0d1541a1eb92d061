"""Devices and the aggregator together, without a broker: N device sessions and one
aggregator core on an in-memory bus, one scripted clock (tests/unit/paired_harness.py).
Every scenario is deterministic; faults are chosen by predicate on the bus."""

from __future__ import annotations

import numpy as np

from tests.unit.paired_bus import topic_matches
from tests.unit.paired_harness import Federation, final_weights


def test_topic_filters_match_as_mqtt_does():
    assert topic_matches("fedge/f/update/+", "fedge/f/update/dev-0")
    assert not topic_matches("fedge/f/update/+", "fedge/f/update/dev-0/x")
    assert topic_matches("fedge/f/model/3/+", "fedge/f/model/3/0")
    assert not topic_matches("fedge/f/model/3/+", "fedge/f/model/3/d/0")
    assert topic_matches("fedge/#", "fedge/f/model/3/d/0") and topic_matches("fedge/#", "fedge")
    assert not topic_matches("fedge/f/task", "fedge/f/task/x")


def test_a_clean_federation_of_three_devices_reaches_three_versions(tmp_path):
    fed = Federation(tmp_path)
    fed.start()
    fed.run_to_end()
    agg = fed.aggregator
    assert [v.version for v in agg.versions] == [1, 2, 3]
    assert [v.updates for v in agg.versions] == [3, 3, 3]
    for device in fed.devices:
        assert device.ack_statuses() == ["accepted"] * 3
        assert len(device.fits) == 3 and len(set(device.fits)) == 3
        assert device.session.model_version == 3
        assert device.session.downlink.model.sha256 == agg.store.latest_model().sha256
    fed.assert_no_update_lost()
    print(fed.clock.mono - 500, fed.steps)
