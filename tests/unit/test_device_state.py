"""A device's state files across reboots, including damaged ones."""

from __future__ import annotations

import numpy as np

from edge_client.device_state import DeviceState
from edge_client.shared.codecs import ErrorFeedback
from edge_client.shared.protocol import Model, encode


def _state(tmp_path) -> DeviceState:
    return DeviceState(tmp_path, "dev-0", max_model_elements=1000)


def test_round_trips(tmp_path):
    state = _state(tmp_path)
    state.save_done_tasks(["t1", "t2"], model_version=3)
    blob = encode(Model(version=3, tensors={"w": np.ones(4, np.float32)}, arch={"k": 1}))
    state.save_model(blob, 3)
    feedback = ErrorFeedback(4)
    feedback.record(np.ones(4, np.float32), np.zeros(4, np.float32))
    state.save_residual(feedback, 3)
    again = _state(tmp_path)
    assert again.load_done_tasks() == ["t1", "t2"]
    model = again.load_model()
    assert model is not None and model.version == 3 and model.arch == {"k": 1}
    residual, version = again.load_residual(4)
    assert version == 3 and np.array_equal(residual.residual, np.ones(4, np.float32))


def test_nothing_saved_yet(tmp_path):
    state = _state(tmp_path)
    assert state.load_done_tasks() == [] and state.load_model() is None
    assert state.load_residual(4) is None


def test_a_corrupt_state_file_is_set_aside_not_a_crash_loop(tmp_path, caplog):
    (tmp_path / "state.json").write_text("{not json")
    assert _state(tmp_path).load_done_tasks() == []
    assert (tmp_path / "state.corrupt").exists() and not (tmp_path / "state.json").exists()
    assert "setting it aside" in caplog.text
    assert _state(tmp_path).load_done_tasks() == []  # the next boot is clean


def test_a_model_whose_bytes_changed_is_not_used(tmp_path):
    state = _state(tmp_path)
    blob = encode(Model(version=1, tensors={"w": np.ones(4, np.float32)}))
    state.save_model(blob, 1)
    (tmp_path / "model.bin").write_bytes(blob[:-1] + b"\x00")  # a flipped byte
    assert state.load_model() is None


def test_a_residual_of_another_size_or_damaged_is_dropped(tmp_path):
    state = _state(tmp_path)
    state.save_residual(ErrorFeedback(4), 1)
    assert state.load_residual(5) is None
    (tmp_path / "residual.bin").write_bytes(b"garbage")
    assert state.load_residual(4) is None


def test_the_saved_model_digest_comes_back_and_a_missing_one_is_none(tmp_path):
    from edge_client.shared.protocol.chunking import sha256_hex

    state = _state(tmp_path)
    assert state.model_sha256() is None
    blob = encode(Model(version=1, tensors={"w": np.ones(2, np.float32)}, arch={}))
    state.save_model(blob, 1)
    assert _state(tmp_path).model_sha256() == sha256_hex(blob)


def test_a_lower_version_or_other_bytes_at_the_same_version_mean_the_run_started_over():
    from edge_client.model_fetch import started_over
    from edge_client.shared.protocol import ModelManifest

    def manifest(version: int, sha: str) -> ModelManifest:
        return ModelManifest(version=version, sha256=sha, size=10, chunk_count=1)

    assert not started_over(manifest(0, "a" * 64), None, None)  # nothing held yet
    assert not started_over(manifest(5, "a" * 64), 4, "b" * 64)  # the next version
    assert not started_over(manifest(4, "b" * 64), 4, "b" * 64)  # the same model again
    assert started_over(manifest(0, "a" * 64), 4, "b" * 64)  # a new store
    assert started_over(manifest(4, "a" * 64), 4, "b" * 64)  # same number, other model
    assert not started_over(manifest(4, "a" * 64), 4, None)  # digest unknown: no guess
