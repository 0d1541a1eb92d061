"""A canary device's figures: in the numpy runtime (with agreement), or through the app's
trainer when the runtime cannot build the model; the same accuracy either way."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.canary_eval import canary_report, trainer_report
from edge_client.holdout import held_out, split_holdout
from edge_client.session.held_model import HeldModel
from edge_client.training import mlp_trainer

SIZES = [8, 6, 3]
ARCH = {"kind": "mlp", "sizes": SIZES}


def _data(n: int = 60):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)


def _model(version: int, seed: int) -> HeldModel:
    return HeldModel(version, mlp_trainer(SIZES, seed=seed).get_weights(), ARCH)


def test_the_runtime_and_the_trainer_agree_on_accuracy_and_loss():
    x, y = _data()
    cand, prod = _model(2, 5), _model(1, 6)
    runtime = canary_report("d", cand, prod, x, y)
    trainer = mlp_trainer(SIZES, seed=9)
    kept = trainer.get_weights()
    through = trainer_report("d", trainer, cand, prod, x, y)
    assert (runtime.candidate, runtime.production, runtime.samples) == (2, 1, 60)
    assert runtime.candidate_accuracy == pytest.approx(through.candidate_accuracy)
    assert runtime.production_accuracy == pytest.approx(through.production_accuracy)
    assert runtime.candidate_loss == pytest.approx(through.candidate_loss, rel=1e-4)
    assert 0 <= runtime.agreement <= 1 and through.agreement is None
    for name, value in trainer.get_weights().items():  # its own weights put back
        np.testing.assert_array_equal(value, kept[name])


def test_a_model_compared_with_itself_agrees_everywhere():
    x, y = _data()
    same = canary_report("d", _model(2, 5), _model(1, 5), x, y)
    assert same.agreement == 1.0 and same.candidate_accuracy == same.production_accuracy


def test_nothing_to_evaluate_on_is_a_clear_error_and_held_out_is_a_fifth():
    x, y = _data(10)
    with pytest.raises(ValueError, match="no held-out examples"):
        canary_report("d", _model(2, 5), _model(1, 6), x[:0], y[:0])
    hx, hy = held_out((x, y), "d1")
    assert len(hx) == len(hy) == 2 and (hx == split_holdout((x, y), "d1")[1][0]).all()
    given = (x[:3], y[:3])
    assert held_out((x, y), "d1", given=given) is given
