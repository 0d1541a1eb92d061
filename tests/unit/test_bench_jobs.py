"""The benchmark jobs (fedge/jobs/): made offline from a seed, the same every time, each
device with its own train and held-out samples, a model the trainers build."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.jobs import JOBS, build_job


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_job_is_the_same_for_a_seed_and_other_for_another(name: str):
    one, two, other = build_job(name, 3), build_job(name, 3), build_job(name, 3, seed=99)
    for a, b in zip(one.devices, two.devices, strict=True):
        assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(one.devices[0].x_train, other.devices[0].x_train)


@pytest.mark.parametrize("name", sorted(JOBS))
def test_a_job_gives_each_device_its_data_and_a_model_that_fits_it(name: str):
    job = build_job(name, 4)
    assert len(job.shards) == 4 and len(job.devices) == 4
    for device in job.devices:
        assert device.x_train.dtype == np.float32 and device.x_train.ndim == 2
        assert len(device.x_test) > 0 and len(device.y_train) == len(device.x_train)
        assert device.y_train.max() < job.classes
    assert len(job.y_test) == sum(len(d.y_test) for d in job.devices)
    trainer = job.device_trainer(0)
    trainer.set_weights(job.initial_weights())
    assert 0.0 <= job.evaluator()(job.initial_weights())["accuracy"] <= 1.0
    assert job.describe()["parameters"] == sum(w.size for w in job.initial_weights().values())


@pytest.mark.parametrize("name", sorted(JOBS))
def test_devices_see_skewed_classes(name: str):
    """Non-IID by construction: no device holds every class in even shares."""
    job = build_job(name, 8)
    for device in job.devices:
        shares = np.bincount(device.y_train, minlength=job.classes) / len(device.y_train)
        assert shares.max() > 2.0 / job.classes


def test_an_unknown_job_or_no_devices_is_refused():
    with pytest.raises(ValueError, match="unknown job 'mnist'"):
        build_job("mnist")
    with pytest.raises(ValueError, match="at least one device"):
        build_job("many_class", 0)
