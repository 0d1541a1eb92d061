"""Edges of secure aggregation found in review: every modulus width decodes negative sums,
absurd fixed-point settings from a task are a clear refusal, and random-k coordinates
do not depend on the NumPy version."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from aggregator.config import load_aggregator_config
from edge_client.shared.protocol.chunking import split
from edge_client.shared.secagg import BadSecAggMessage, FixedPoint, Phase, shared_coordinates
from edge_client.shared.secagg.prg import MAX_BITS, MIN_BITS
from edge_client.shared.secagg.task import SecAggTask
from tests.unit.test_secagg_round import MODEL, T0, Fleet


@pytest.mark.parametrize("bits", range(MIN_BITS, MAX_BITS + 1))
def test_every_modulus_width_decodes_sums_on_both_sides_of_zero(bits):
    fixed = FixedPoint(clip=1.0, scale=1.0, bits=bits, max_devices=1)
    half = 1 << (bits - 1)
    signed = [0, 1, -1, 5, -5, half - 1, -half]  # the extremes of a signed bits-bit word
    ring = np.array([v % (1 << bits) for v in signed], dtype=np.uint64)
    assert fixed.decode_sum(ring, 1).tolist() == [float(v) for v in signed]


def test_a_round_with_a_63_bit_modulus_makes_its_outcome(tmp_path):
    """secagg.bits = 63 is a valid setting; decoding its sum must not overflow."""
    assert load_aggregator_config({"secagg": {"enabled": True, "bits": 63}}).secagg.bits == 63
    fleet = Fleet(tmp_path, devices=4, min_fraction=0.75, bits=63)
    fleet.join()
    assert fleet.run().done
    outcome = fleet.secure.outcome(MODEL)
    fixed = fleet.settings.fixed_point(4)
    plain = np.mean([np.clip(x, -fixed.clip, fixed.clip) for x in fleet.deltas.values()], 0)
    share = np.concatenate([outcome.contributions[0].delta[k].ravel() for k in sorted(MODEL)])
    assert np.max(np.abs(share - plain)) <= 1 / fixed.scale  # negative values included
    assert np.any(plain < 0)


def test_fixed_point_settings_whose_product_overflows_are_refused_clearly():
    with pytest.raises(ValueError, match="too large"):
        FixedPoint(clip=1e300, scale=1e300, bits=64, max_devices=1)


def test_a_task_with_overflowing_fixed_point_settings_is_a_secagg_refusal():
    """The device reads Task.secagg from the network: anything it refuses must be a
    BadSecAggMessage, which its loop logs, never an OverflowError that ends the loop."""
    raw = {"v": 1, "round_seed": bytes(32), "size": 10, "dim": 10, "bits": 64, "degree": 4,
           "threshold": 2, "clip": 1e300, "scale": 1e300, "sparsify": "none",
           "fraction": 1.0}
    with pytest.raises(BadSecAggMessage, match="too large"):
        SecAggTask.from_wire(raw)


def test_shared_coordinates_do_not_depend_on_numpys_generator(monkeypatch):
    """A device and the gateway may run different NumPy versions, whose Generator streams
    may differ; the coordinates must come from the round seed alone."""
    seed = bytes(range(32))
    before = shared_coordinates(seed, 1000, 0.05)

    class OtherStream:  # what another NumPy release's generator might draw
        def __init__(self, *args, **kwargs) -> None:
            self.rng = np.random.Generator(np.random.MT19937(7))

        def __getattr__(self, name):
            return getattr(self.rng, name)

    monkeypatch.setattr(np.random, "default_rng", OtherStream)
    after = shared_coordinates(seed, 1000, 0.05)
    assert np.array_equal(before, after)
    # and they are the 50 lowest ChaCha20 scores, recomputed here without NumPy's sort
    key = hashlib.sha256(b"fedge-secagg/v1/randk\0" + seed).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    raw = stream.update(bytes(8 * 1000))
    scores = [int.from_bytes(raw[8 * i:8 * i + 8], "little") for i in range(1000)]
    lowest = sorted(range(1000), key=lambda i: (scores[i], i))[:50]
    assert before.tolist() == sorted(lowest) and before.dtype == np.int64


def test_unreadable_bytes_on_the_relay_topic_do_not_end_the_devices_round(tmp_path, caplog):
    """Only a message the client refuses ends its round; bytes that do not even decode
    change nothing, and the log must not claim the device left."""
    fleet = Fleet(tmp_path, devices=3, min_fraction=1.0)
    fleet.join()
    device = fleet.devices["dev-0"]
    garbage = split(b"\x93not secagg", "junk-1", 4096)[0]
    assert device.on_chunk(garbage, unwrap=lambda b: b) == []
    assert device.session.phase is Phase.SHARE_KEYS
    assert "ignored an unreadable secagg message" in caplog.text
    assert "left secure round" not in caplog.text
    fleet.down(fleet.secure.tick(T0).outgoing)  # the round goes on with this device in it
    assert fleet.run().done and "dev-0" in fleet.secure.last_result.contributors
