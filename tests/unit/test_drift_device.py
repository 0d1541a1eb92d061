"""Drift on the device: the input reference and PSI, the monitor's windows, the
Predictor's hooks, the reference kept with the state, and the status that carries the
scores (issue 18, "Drift")."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from edge_client.client import ClientConfig, EdgeClient
from edge_client.drift import DriftMonitor, InputReference, psi, reference_for
from edge_client.drift.saved import REFERENCE_FILE
from edge_client.eligibility import EligibilityConfig
from edge_client.predictor import Predictor
from edge_client.session import Instant
from edge_client.session.actions import Publish
from edge_client.session.events import LinkUp
from edge_client.session.status import drift_moved
from edge_client.shared.protocol import RemoteProtocolError, Status, decode, encode
from edge_client.shared.protocol.drift import DriftReport
from edge_client.training import NumpyTrainer, build_model, mlp_trainer
from tests.unit.session_driver import ScriptedDevice

RNG = np.random.default_rng(7)
TRAIN = RNG.normal(size=(2000, 6))


# ------------------------------------------------------------------ reference and PSI
def test_the_same_distribution_scores_near_zero_and_a_shift_scores_high():
    reference = InputReference.of(TRAIN)
    same = psi(reference, RNG.normal(size=(2000, 6)))
    assert same.shape == (6,) and same.max() < 0.05
    shifted = RNG.normal(size=(2000, 6))
    shifted[:, 2] += 1.0
    scores = psi(reference, shifted)
    assert scores[2] > 0.5 and np.delete(scores, 2).max() < 0.05


def test_the_reference_has_quantile_bins_whose_shares_sum_to_one():
    reference = InputReference.of(TRAIN, bins=4)
    assert reference.features == 6 and reference.samples == 2000
    for edges, shares in zip(reference.edges, reference.shares, strict=True):
        assert edges.size == 3 and shares.size == 4
        assert np.allclose(shares, 0.25, atol=0.01)


def test_a_constant_feature_has_one_edge_and_any_change_of_it_shows():
    x = np.c_[np.zeros(100), np.arange(100.0)]
    reference = InputReference.of(x)
    assert reference.edges[0].tolist() == [0.0]
    assert psi(reference, x)[0] == pytest.approx(0.0)
    assert psi(reference, x - 1.0)[0] > 5  # every value left the only bin it had


def test_images_are_flattened_and_non_finite_rows_left_out():
    images = RNG.normal(size=(50, 2, 3))
    reference = InputReference.of(images)
    assert reference.features == 6
    with_nan = images.copy()
    with_nan[0, 0, 0] = np.nan
    assert reference.bins_of(with_nan).shape == (49, 6)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), "at least one sample"),
    (np.array(5.0), "at least one sample"),
    ([["a", "b"]], "array of numbers"),
    (np.full((3, 2), np.nan), "no finite sample"),
])
def test_unusable_training_inputs_are_refused_with_a_reason(bad, match):
    with pytest.raises(ValueError, match=match):
        InputReference.of(bad)


def test_bad_bins_and_inputs_of_another_width_are_refused():
    with pytest.raises(ValueError, match="bins must be an integer from 2"):
        InputReference.of(TRAIN, bins=1)
    with pytest.raises(ValueError, match="inputs have 5 features; the reference has 6"):
        psi(InputReference.of(TRAIN), TRAIN[:, :5])
    with pytest.raises(ValueError, match="no finite sample"):
        psi(InputReference.of(TRAIN), np.full((2, 6), np.inf))


def test_the_reference_goes_through_json_and_malformed_ones_are_refused():
    reference = InputReference.of(TRAIN)
    back = InputReference.from_json(json.loads(json.dumps(reference.to_json())))
    assert np.array_equal(psi(back, TRAIN[:300]), psi(reference, TRAIN[:300]))
    good = reference.to_json()
    for broken, match in [
        ({}, "missing"), ("text", "not an input reference"),
        ({**good, "samples": 0}, "samples must be an integer"),
        ({**good, "shares": good["shares"][:-1]}, "same features"),
        ({**good, "edges": [[1.0, 0.0], *good["edges"][1:]]}, "malformed bins"),
        ({**good, "shares": [[0.5] * len(good["shares"][0]), *good["shares"][1:]]},
         "sum to 1"),
        ({**good, "edges": [["x"], *good["edges"][1:]]}, "list of numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            InputReference.from_json(broken)


# ------------------------------------------------------------------ the monitor
def test_the_monitor_waits_for_min_samples_and_keeps_only_its_window():
    monitor = DriftMonitor(InputReference.of(TRAIN), window=300, min_samples=100)
    monitor.observe(TRAIN[:50])
    early = monitor.report()
    assert early.psi_max is None and early.seen == 50
    shifted = TRAIN[:1000] + 3.0
    monitor.observe(shifted)  # bigger than the window: its last 300 rows count
    late = monitor.report()
    assert late.seen == 300 and late.psi_max > 1 and late.psi_mean <= late.psi_max
    for _ in range(10):
        monitor.observe(TRAIN[1000:1100])  # the window moves past the shift
    assert monitor.report().psi_max < 0.3


def test_the_monitor_counts_outcomes_over_its_label_window():
    monitor = DriftMonitor(InputReference.of(TRAIN), label_window=4)
    assert monitor.report().accuracy is None
    monitor.observe_outcomes([True, False, True, True, False, False])
    report = monitor.report()
    assert report.labelled == 4 and report.accuracy == 0.5
    monitor.reset()
    assert monitor.report() == DriftReport()


def test_monitor_settings_are_checked():
    with pytest.raises(ValueError, match="min_samples"):
        DriftMonitor(InputReference.of(TRAIN), window=10, min_samples=20)
    with pytest.raises(ValueError, match="label_window"):
        DriftMonitor(InputReference.of(TRAIN), label_window=0)


# ------------------------------------------------------------------ the Predictor
def _predictor(train: np.ndarray) -> Predictor:
    arch = {"kind": "mlp", "sizes": [6, 8, 3]}
    predictor = Predictor()
    predictor.load(1, arch, NumpyTrainer(build_model(arch, 0)).get_weights())
    return predictor


def test_the_predictor_watches_what_it_predicts_and_takes_labels_later():
    predictor = _predictor(TRAIN)
    assert predictor.drift_report() is None  # not monitored: nothing to report
    predictor.monitor_drift(InputReference.of(TRAIN), window=200, min_samples=100)
    predictor.predict(TRAIN[:150] + 2.0)
    report = predictor.drift_report()
    assert report is not None and report.seen == 150 and report.psi_max > 1
    ids = predictor.predict(TRAIN[:10])
    assert predictor.observe_label(ids, predicted=ids) == 1.0
    assert predictor.observe_label(np.zeros(10, int), x=TRAIN[:10]) == float(np.mean(ids == 0))
    report = predictor.drift_report()
    assert report.labelled == 20 and report.seen == 160  # labels did not count as inputs
    with pytest.raises(ValueError, match="either the inputs x or"):
        predictor.observe_label(ids)
    with pytest.raises(ValueError, match="3 labels for 10"):
        predictor.observe_label(ids[:3], predicted=ids)


def test_the_reference_is_kept_with_the_state_and_rebuilt_when_unusable(tmp_path, caplog):
    first = reference_for(tmp_path, TRAIN)
    assert (tmp_path / REFERENCE_FILE).exists()
    assert reference_for(tmp_path, TRAIN[:10] + 5).to_json() == first.to_json()  # kept
    other = reference_for(tmp_path, TRAIN[:, :4])  # another width: built anew
    assert other.features == 4
    (tmp_path / REFERENCE_FILE).write_text("{not json")
    assert reference_for(tmp_path, TRAIN).features == 6
    assert "unusable" in caplog.text


def test_the_client_given_a_predictor_serves_and_reports_drift(tmp_path):
    config = ClientConfig(device_id="dev-1", state_dir=tmp_path / "state",
                          eligibility=EligibilityConfig(enabled=False))
    predictor = Predictor()
    client = EdgeClient(config, mlp_trainer([6, 3]), TRAIN[:300].astype(np.float32),
                        np.zeros(300, np.int64), predictor=predictor)
    assert predictor.drift is not None and client.on_model is not None
    assert (tmp_path / "state" / REFERENCE_FILE).exists()
    predictor.drift.observe(TRAIN[:300] + 4.0)
    [status] = [a for a in client.session.handle(LinkUp(), Instant(1.0, 1.7e9))
                if isinstance(a, Publish) and a.topic.endswith("/status/dev-1")]
    sent = decode(status.payload, expect=Status)
    assert sent.drift is not None and sent.drift.psi_max > 1 and sent.drift.seen == 300


# ------------------------------------------------------------------ the status
def test_a_status_is_sent_early_when_the_drift_scores_move():
    device = ScriptedDevice(ClientConfig(device_id="dev-1", status_interval_s=3600.0))
    scores = {"now": DriftReport(seen=10)}
    device.session.status.drift = lambda: scores["now"]
    device.feed(LinkUp())
    device.advance(0)
    assert device.statuses(device.advance(10.0)) == []  # nothing moved
    scores["now"] = DriftReport(psi_max=0.8, psi_mean=0.2, feature=1, seen=300)
    [early] = device.statuses(device.advance(10.0))
    assert decode(early.payload, expect=Status).drift == scores["now"]
    assert device.statuses(device.advance(10.0)) == []


def test_drift_moved_compares_psi_and_accuracy():
    base = DriftReport(psi_max=0.1, psi_mean=0.05, seen=300, accuracy=0.9, labelled=50)
    assert not drift_moved(base, base)
    assert drift_moved(None, base) and drift_moved(base, None) and not drift_moved(None, None)
    assert drift_moved(base, DriftReport(psi_max=0.2, psi_mean=0.05, seen=300,
                                         accuracy=0.9, labelled=50))
    assert drift_moved(base, DriftReport(psi_max=0.1, psi_mean=0.05, seen=300))


def _status_bytes(drift: object) -> bytes:
    return msgpack.packb({"v": 1, "kind": "status", "device_id": "d", "online": True,
                          "eligible": True, "reason": "", "time": 1.0, "drift": drift})


@pytest.mark.parametrize("drift, match", [
    ({"psi_max": -1.0, "psi_mean": 0.0, "seen": 1, "labelled": 0}, "psi_max"),
    ({"psi_max": 1.0, "seen": 1, "labelled": 0}, "come together"),
    ({"psi_max": 1.0, "psi_mean": 2.0, "seen": 1, "labelled": 0}, "above psi_max"),
    ({"seen": 1, "labelled": 0, "accuracy": 1.5}, "accuracy"),
    ({"seen": 1, "labelled": 0, "accuracy": 0.5}, "labelled >= 1"),
    ({"labelled": 0}, "seen"),
    ({"seen": "many", "labelled": 0}, "seen"),
    ({"psi_max": float("nan"), "psi_mean": 0.0, "seen": 1, "labelled": 0}, "finite"),
    ([1, 2], "drift"),
])
def test_malformed_drift_in_a_status_is_refused_with_a_reason(drift, match):
    with pytest.raises(RemoteProtocolError, match=match):
        decode(_status_bytes(drift), expect=Status)


def test_a_status_without_drift_encodes_as_before_and_with_it_round_trips():
    plain = Status("d", True, time=1.0)
    assert b"drift" not in encode(plain)
    report = DriftReport(psi_max=0.4, psi_mean=0.1, feature=3, seen=500, accuracy=0.75,
                         labelled=40)
    assert decode(encode(Status("d", True, time=1.0, drift=report))).drift == report
