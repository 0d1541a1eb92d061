"""Adaptive top-k (edge_client/shared/codecs/adaptive.py): how many coordinates an update
sends, its config and wire form, and that the aggregator decodes it as plain top-k."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_client.session.update_maker import UpdateMaker
from edge_client.shared.codecs import CodecConfig, decode_dense
from edge_client.shared.codecs.adaptive import ADAPTIVE_UPLINK, codec_for_update, energy_count
from edge_client.shared.protocol import RemoteProtocolError, Task
from edge_client.shared.protocol.seeds import update_seed
from edge_client.training import FitResult, TrainConfig
from fedge.codec_spec import parse_codec


def test_energy_count_is_the_fewest_largest_coordinates_carrying_the_share() -> None:
    v = np.array([0.0, 3.0, -4.0, 1.0, 0.0])  # squares 9, 16, 1: total 26
    assert energy_count(v, 0.5) == 1  # 16 >= 13
    assert energy_count(v, 0.7) == 2  # 16 + 9 = 25 >= 18.2
    assert energy_count(v, 0.99) == 3
    assert energy_count(np.zeros(4), 0.5) == 0


def test_the_count_stays_between_fraction_and_max_fraction() -> None:
    codec = CodecConfig(sparsify="topk", fraction=0.1, max_fraction=0.3, energy=0.5)
    spike = np.zeros(100, dtype=np.float32)
    spike[7] = 1.0  # one coordinate carries everything: the floor, 10
    assert round(100 * codec_for_update(spike, codec).fraction) == 10
    flat = np.ones(100, dtype=np.float32)  # half the energy needs 50: the cap, 30
    chosen = codec_for_update(flat, codec)
    assert round(100 * chosen.fraction) == 30
    assert not chosen.adaptive and chosen.sparsify == "topk" and chosen.quantize == "f32"


def test_a_fixed_codec_is_used_as_it_is() -> None:
    codec = CodecConfig(sparsify="topk", fraction=0.01, quantize="q4")
    assert codec_for_update(np.ones(10, dtype=np.float32), codec) is codec


def test_every_chosen_count_survives_k_over_n() -> None:
    """The update declares fraction k / n; the decoder's round(n * fraction) must be k."""
    n = 21062
    assert all(round(n * (k / n)) == k for k in range(1, n + 1))


def test_wire_form_carries_the_rule_only_when_it_is_on() -> None:
    assert "energy" not in CodecConfig().to_wire()
    wire = ADAPTIVE_UPLINK.to_wire()
    assert wire["energy"] == 0.5 and wire["max_fraction"] == 0.06
    assert CodecConfig.from_wire(wire) == ADAPTIVE_UPLINK
    with pytest.raises(RemoteProtocolError, match="max_fraction must be in"):
        CodecConfig.from_wire({**wire, "max_fraction": 0.001})


@pytest.mark.parametrize(("fields", "message"), [
    ({"sparsify": "randk", "energy": 0.5, "max_fraction": 0.1}, "needs sparsify = 'topk'"),
    ({"sparsify": "topk", "energy": 1.0, "max_fraction": 0.1}, "energy must be"),
    ({"sparsify": "topk", "max_fraction": 0.1}, "max_fraction needs energy"),
    ({"sparsify": "topk", "energy": 0.5, "max_fraction": 2.0}, "max_fraction must be in"),
])
def test_bad_adaptive_settings_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodecConfig(**fields)


def test_specs_name_the_adaptive_codec() -> None:
    assert parse_codec("adaptive") == ADAPTIVE_UPLINK
    assert parse_codec("topk=0.01,max=0.06,energy=0.5,q4") == ADAPTIVE_UPLINK
    assert ADAPTIVE_UPLINK.name() == "topk0.01-0.06e0.5-q4-ef-zlib"


def test_an_adaptive_update_decodes_as_the_top_k_it_declares() -> None:
    rng = np.random.default_rng(3)
    base = {"w": np.zeros((40, 50), dtype=np.float32), "b": np.zeros(50, dtype=np.float32)}
    trained = {name: (w + rng.standard_normal(w.shape)).astype(np.float32)
               for name, w in base.items()}
    task = Task(task_id="t1", mode="sync", round=1, model_version=0, train=TrainConfig())
    result = FitResult(num_samples=10, loss=0.5, batches=1, train_s=0.1, stopped_early=False)
    update = UpdateMaker("d1").make(task, base, trained, result, {}, 10, ADAPTIVE_UPLINK,
                                    None, 0.0)
    declared = CodecConfig.from_wire(update.codec)
    n = 40 * 50 + 50
    assert not declared.adaptive
    assert 0.01 <= declared.fraction <= 0.06 + 1 / n
    assert math.isclose(declared.fraction, 0.06, abs_tol=1 / n)  # Gaussian noise: the cap
    dense = decode_dense(update.blob, declared, n, update_seed("t1", "d1"))
    assert np.count_nonzero(dense) == round(n * declared.fraction)
