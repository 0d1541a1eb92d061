"""A version's record gives back exactly the dict the service stored."""

from __future__ import annotations

import json

from aggregator.version_record import VersionRecord


def test_initial_version_keeps_only_its_fields() -> None:
    record = VersionRecord.from_info(0, 1.5, {"round": 0, "updates": 0, "model_bytes": 9})
    assert record.update_bytes is None and record.accuracy is None
    assert record.to_json() == {"version": 0, "created_at": 1.5, "round": 0, "updates": 0,
                                "model_bytes": 9}


def test_plain_version_round_trips_in_order() -> None:
    info = {"round": 3, "updates": 2, "update_bytes": 100, "model_bytes": 50, "delta_bytes": 0,
            "round_wall_s": 1.25, "mode": "sync", "max_train_s": 0.5,
            "devices": ["a", "b"], "device_accuracy": 0.7, "accuracy": 0.9, "loss": 0.3,
            "epsilon": 1.0, "dp_delta": 1e-5}
    record = VersionRecord.from_info(4, 2.0, info)
    assert record.devices == ("a", "b") and record.accuracy == 0.9 and record.epsilon == 1.0
    assert record.metric("dp_delta") == 1e-5
    dumped = json.dumps(record.to_json())
    assert dumped == json.dumps({"version": 4, "created_at": 2.0, **info})
    assert VersionRecord.from_json(json.loads(dumped)) == record


def test_secure_version_puts_secagg_between_evaluation_and_privacy() -> None:
    info = {"round": 1, "updates": 3, "update_bytes": 10, "model_bytes": 5, "delta_bytes": 0,
            "round_wall_s": 1.0, "mode": "sync", "max_train_s": 0.0, "devices": ["a"],
            "accuracy": 0.5, "secagg": {"contributors": 3}, "epsilon": 2.0,
            "dp_mode": "distributed"}
    record = VersionRecord.from_info(1, 0.0, info)
    assert json.dumps(record.to_json()) == json.dumps({"version": 1, "created_at": 0.0, **info})
