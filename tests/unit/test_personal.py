"""Personalisation and clusters without a network: the task's spec, the stacked layout,
the per-cluster running sum, the device's own models, the figures the aggregator keeps."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.clusters import ClusteredSum, ClustersConfig, clustered, initial_clusters
from aggregator.config import AggregatorConfig, load_aggregator_config
from aggregator.personalize import device_figures, personal_info
from aggregator.strategy import StrategyConfig
from aggregator.strategy.fedavg import FedAvg
from aggregator.strategy.folding import Arrival, FlatUpdate, MeanSum
from edge_client.holdout import split_holdout
from edge_client.personal import LocalModels
from edge_client.shared.clusters import (
    cluster_count,
    cluster_of_coordinates,
    stack,
    unstack,
    with_cluster,
)
from edge_client.shared.personal import PersonalMode, PersonalSpec
from edge_client.shared.protocol import (
    RemoteProtocolError,
    Status,
    Task,
    TrainConfig,
    Update,
    decode,
    encode,
)
from edge_client.shared.settings import ConfigError
from edge_client.training import mlp_trainer

F32 = np.float32


def _task(**fields) -> Task:
    return Task("t1", "sync", 1, 0, TrainConfig(epochs=1, lr=0.1), **fields)


# ------------------------------------------------------------------ the wire
def test_a_task_carries_personalisation_and_clusters_and_plain_tasks_stay_as_they_were():
    spec = PersonalSpec(PersonalMode.LAYERS, ("dense1.", "aq2."), 0.5)
    task = decode(encode(_task(personal=spec.to_wire(), clusters=3)))
    assert isinstance(task, Task) and task.clusters == 3
    assert PersonalSpec.from_wire(task.personal) == spec
    plain = encode(_task())
    assert b"personal" not in plain and b"clusters" not in plain


def test_status_figures_are_optional_and_bounded():
    status = decode(encode(Status("d1", True, global_accuracy=0.5, personal_accuracy=0.9,
                                  cluster=1)))
    assert (status.global_accuracy, status.personal_accuracy, status.cluster) == (0.5, 0.9, 1)
    plain = decode(encode(Status("d1", True)))
    assert (plain.global_accuracy, plain.personal_accuracy, plain.cluster) == (None, None, None)
    assert b"cluster" not in encode(Status("d1", True))
    with pytest.raises(RemoteProtocolError, match="personal_accuracy"):
        decode(encode(Status("d1", True, personal_accuracy=1.5)))


@pytest.mark.parametrize("wire, problem", [
    ({"mode": "median"}, "median"),
    ({"mode": "layers", "layers": ""}, "personal_layers"),
    ({"mode": "layers", "layers": 3}, "commas"),
    ({"mode": "ditto", "lam": -1}, "lam"),
    ({"mode": "ditto", "lam": "x"}, "number"),
])
def test_a_spec_a_device_cannot_follow_is_a_protocol_error(wire, problem):
    with pytest.raises(RemoteProtocolError, match=problem):
        PersonalSpec.from_wire(wire)


# ------------------------------------------------------------------ the stacked layout
def test_stack_and_unstack_are_inverse_and_the_layout_names_each_coordinate():
    a = {"w": np.arange(4, dtype=F32), "b": np.ones(2, F32)}
    b = {"w": -np.arange(4, dtype=F32), "b": np.zeros(2, F32)}
    stacked = stack([a, b])
    assert cluster_count(stacked) == 2 and cluster_count(a) == 0
    back = unstack(stacked)
    assert all(np.array_equal(back[0][n], a[n]) and np.array_equal(back[1][n], b[n])
               for n in a)
    # sorted names: cluster0/b, cluster0/w, cluster1/b, cluster1/w
    assert cluster_of_coordinates(stacked).tolist() == [0] * 6 + [1] * 6
    swapped = with_cluster(stacked, 1, a)
    assert np.array_equal(unstack(swapped)[1]["w"], a["w"])
    with pytest.raises(ValueError, match="differ"):
        unstack({"cluster0/w": np.zeros(2, F32), "cluster1/w": np.zeros(3, F32)})


def test_initial_clusters_keep_cluster_zero_and_start_the_others_apart():
    w = {"w": np.random.default_rng(0).standard_normal((8, 4)).astype(F32)}
    models = unstack(initial_clusters(w, ClustersConfig(k=3), seed=0))
    assert np.array_equal(models[0]["w"], w["w"])
    assert not np.allclose(models[1]["w"], w["w"]) and not np.allclose(models[1]["w"],
                                                                      models[2]["w"])
    assert np.std(models[1]["w"]) == pytest.approx(np.std(w["w"]), rel=0.2)  # same scale


# ------------------------------------------------------------------ per-cluster means
def test_each_cluster_is_averaged_over_its_own_devices_only():
    model = stack([{"w": np.zeros(2, F32)}, {"w": np.zeros(2, F32)}])  # coords 0,1 | 2,3
    total = ClusteredSum(FedAvg().start(model), model, 2)
    # a device of cluster 0 whose delta strays into cluster 1 (error feedback) is masked
    total.fold(Arrival("a", "n1", 1, group=0), FlatUpdate(np.array([1, 1, 9, 9], F32), 4))
    total.fold(Arrival("b", "n2", 3, group=0), FlatUpdate(np.array([3, 3, 0, 0], F32), 4))
    total.fold(Arrival("c", "n3", 2, group=None), FlatUpdate(np.ones(4, F32), 4))  # no cluster
    out = total.finish(model, 1.0)
    assert out["cluster0/w"].tolist() == [2.5, 2.5]  # (1*1 + 3*3) / 4
    assert out["cluster1/w"].tolist() == [0.0, 0.0]  # nobody chose it: unchanged


def test_clustered_wraps_only_a_mean_and_only_when_on():
    model = stack([{"w": np.zeros(2, F32)}] * 2)
    plain = MeanSum(4, FedAvg().apply_mean)
    assert clustered(plain, model, ClustersConfig()) is plain
    assert isinstance(clustered(plain, model, ClustersConfig(k=2)), ClusteredSum)
    with pytest.raises(ValueError, match="mean-based"):
        clustered(object(), model, ClustersConfig(k=2))  # type: ignore[arg-type]


# ------------------------------------------------------------------ config
def test_config_tables_and_their_refusals():
    config = load_aggregator_config({"personalize": {"mode": "layers",
                                                     "personal_layers": ["dense1."]},
                                     "clusters": {"k": 3}})
    assert config.personalize.wire() == {"mode": "layers", "layers": "dense1.", "lam": 0.1}
    assert config.clusters.k == 3
    assert AggregatorConfig().personalize.wire() is None and not AggregatorConfig().clusters.on
    with pytest.raises(ConfigError, match="personal_layers"):
        load_aggregator_config({"personalize": {"mode": "layers"}})
    with pytest.raises(ConfigError, match=r"personalize\.mode"):
        load_aggregator_config({"personalize": {"mode": "fedper"}})
    with pytest.raises(ConfigError, match=r"clusters\.k"):
        load_aggregator_config({"clusters": {"k": 0}})
    with pytest.raises(ValueError, match="mean-based"):
        AggregatorConfig(strategy=StrategyConfig(name="median"), clusters=ClustersConfig(k=2))
    with pytest.raises(ConfigError, match=r"clusters\.k = 2 cannot run with \[rollout\]"):
        load_aggregator_config({"clusters": {"k": 2}, "rollout": {"canary_fraction": 0.5}})
    load_aggregator_config({"personalize": {"mode": "ditto"},  # these two combine
                            "rollout": {"canary_fraction": 0.5}})


# ------------------------------------------------------------------ the device's own models
def _digits_like(seed: int, labels: list[int], n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(labels, n)
    x = rng.standard_normal((n, 8)).astype(F32) + np.eye(8, dtype=F32)[y] * 3
    return x, y.astype(np.int64)


def test_personal_layers_train_here_and_the_update_leaves_them_alone():
    trainer = mlp_trainer([8, 6, 8], seed=1)
    received = mlp_trainer([8, 6, 8], seed=0).get_weights()
    local = LocalModels("d1")
    task = _task(personal=PersonalSpec(PersonalMode.LAYERS, ("dense1.",)).to_wire())
    data = _digits_like(0, [0, 1])
    fit = local.fit(trainer, task, received, task.train, data, data, lambda: False)
    for name in ("dense1.weight", "dense1.bias"):  # zero delta on the personal layers
        assert np.array_equal(fit.weights[name], received[name])
        assert not np.array_equal(local.personal[name], received[name])
    assert not np.array_equal(fit.weights["dense0.weight"], received["dense0.weight"])
    assert fit.metrics["personal_accuracy"] > fit.metrics["global_accuracy"]
    # the next global model is served with this device's head in it
    served = local.serving(received, trainer, data)
    assert np.array_equal(served["dense1.weight"], local.personal["dense1.weight"])
    assert np.array_equal(served["dense0.weight"], received["dense0.weight"])


def test_ditto_keeps_a_personal_model_pulled_toward_the_global_one():
    trainer = mlp_trainer([8, 6, 8], seed=1)
    received = mlp_trainer([8, 6, 8], seed=0).get_weights()
    local = LocalModels("d1")
    task = _task(personal=PersonalSpec(PersonalMode.DITTO, lam=1e9).to_wire())
    data = _digits_like(0, [0, 1])
    fit = local.fit(trainer, task, received, task.train, data, data, lambda: False)
    assert fit.serve is not None  # a huge lam: the personal model is the global one
    assert all(np.allclose(fit.serve[n], received[n], atol=1e-6) for n in received)
    assert "personal_accuracy" in fit.metrics and "cluster" not in fit.metrics


def test_a_clustered_device_trains_the_cluster_that_fits_its_data_best():
    good = mlp_trainer([8, 6, 8], seed=0)
    data = _digits_like(0, [2, 3])
    good.fit(*data, TrainConfig(epochs=5, lr=0.1))
    bad = mlp_trainer([8, 6, 8], seed=5).get_weights()
    received = stack([bad, good.get_weights()])
    local = LocalModels("d1")
    fit = local.fit(mlp_trainer([8, 6, 8]), _task(clusters=2), received, TrainConfig(),
                    data, data, lambda: False)
    assert fit.metrics["cluster"] == 1.0 and local.cluster == 1
    assert all(np.array_equal(fit.weights[n], received[n]) for n in received
               if n.startswith("cluster0/"))  # a zero delta outside its cluster
    assert cluster_count(fit.weights) == 2
    served = local.serving(received, mlp_trainer([8, 6, 8]), data)
    assert set(served) == set(good.get_weights())


def test_the_held_out_part_is_a_fixed_fifth_per_device():
    x, y = np.arange(50, dtype=F32).reshape(25, 2), np.arange(25) % 3
    (xt, _), (xh, _) = split_holdout((x, y), "d1")
    assert len(xh) == 5 and len(xt) == 20
    assert np.array_equal(split_holdout((x, y), "d1")[1][0], xh)
    tiny = (x[:3], y[:3])
    assert split_holdout(tiny, "d1") == (tiny, tiny)


# ------------------------------------------------------------------ the figures kept
def test_the_version_keeps_each_devices_latest_figures_and_their_means():
    def update(device: str, **metrics: float) -> Update:
        return Update(device, "t", "n", 0, 10, {}, metrics={"local_accuracy": 0.5, **metrics})
    updates = [update("b", global_accuracy=0.4, personal_accuracy=0.9, cluster=1),
               update("a", global_accuracy=0.6, personal_accuracy=0.8, cluster=0),
               update("c")]
    figures = device_figures(updates)
    assert list(figures) == ["a", "b"]
    info = personal_info(updates)["personal"]
    assert info["global_accuracy"] == pytest.approx(0.5)
    assert info["personal_accuracy"] == pytest.approx(0.85)
    assert info["cluster_sizes"] == {"0": 1, "1": 1}
    assert personal_info([update("c")]) == {}


# ------------------------------------------------------------------ the API
def test_api_personal_serves_the_latest_versions_figures_and_matches_its_schema(tmp_path):
    from aggregator.store import Store
    from aggregator.web import create_app
    from aggregator.web.openapi import openapi_document
    from edge_client.shared.protocol import Model
    from edge_client.shared.protocol.chunking import sha256_hex

    path = tmp_path / "agg.sqlite3"
    empty = create_app(path, None, None).test_client()
    Store(path).close()
    assert empty.get("/api/personal").get_json()["version"] is None
    store = Store(path)
    figures = personal_info([
        Update("a", "t", "n", 0, 10, {}, metrics={"global_accuracy": 0.5,
                                                  "personal_accuracy": 0.9, "cluster": 1}),
        Update("b", "t", "n", 0, 10, {}, metrics={"global_accuracy": 0.7, "cluster": 0})])
    for version, info in enumerate([{"round": 0}, {"round": 1, **figures,
                                                   "cluster0_accuracy": 0.6,
                                                   "cluster1_accuracy": 0.8},
                                    {"round": 2}]):
        blob = encode(Model(version=version, tensors={}, arch={}))
        store.add_model(version, blob, sha256_hex(blob), info)
    store.close()
    body = create_app(path, None, None).test_client().get("/api/personal").get_json()
    assert body["version"] == 1
    assert body["devices"] == [
        {"device_id": "a", "global_accuracy": 0.5, "personal_accuracy": 0.9, "cluster": 1},
        {"device_id": "b", "global_accuracy": 0.7, "personal_accuracy": None, "cluster": 0}]
    assert body["cluster_sizes"] == {"0": 1, "1": 1}
    assert body["cluster_accuracy"] == {"0": 0.6, "1": 0.8}
    schema = openapi_document()["components"]["schemas"]["Personal"]
    assert set(body) == set(schema["properties"]) == set(schema["required"])


def test_personal_layers_must_name_some_but_not_every_tensor():
    from aggregator.personalize import PersonalizeConfig, check_layers

    weights = {"dense0.weight": np.zeros(2, F32), "dense1.weight": np.zeros(2, F32)}
    check_layers(PersonalizeConfig(mode="layers", personal_layers=["dense1."]), weights)
    check_layers(PersonalizeConfig(mode="layers", personal_layers=["dense1."]),
                 stack([weights, weights]))  # a clustered model's names, unstacked
    with pytest.raises(ValueError, match=r"'head\.' names no tensor"):
        check_layers(PersonalizeConfig(mode="layers", personal_layers=["head."]), weights)
    with pytest.raises(ValueError, match="nothing would be shared"):
        check_layers(PersonalizeConfig(mode="layers", personal_layers=["dense"]), weights)


# ------------------------------------------------------------------ partial dense updates
def test_a_dense_update_may_leave_tensors_out_and_they_count_as_zero():
    from aggregator.ingest import open_flat_update, open_update

    model = {"a": np.zeros(2, F32), "b": np.zeros(3, F32), "c": np.zeros(1, F32)}
    update = Update("d1", "t", "n", 0, 5, {"b": np.array([1, 2, 3], F32)})
    _, flat = open_flat_update(encode(update), model)
    assert flat.dense().tolist() == [0, 0, 1, 2, 3, 0]  # a | b | c in sorted order
    assert open_update(encode(update), model).tensors["a"].tolist() == [0, 0]
    for bad in ({"b": np.zeros(2, F32)}, {"z": np.zeros(1, F32)},
                {"b": np.array([1, np.nan, 3], F32)}):
        with pytest.raises(RemoteProtocolError):
            open_flat_update(encode(Update("d1", "t", "n", 0, 5, bad)), model)


def test_a_fit_names_only_the_tensors_its_delta_can_change():
    trainer = mlp_trainer([8, 6, 8], seed=1)
    received = mlp_trainer([8, 6, 8], seed=0).get_weights()
    data = _digits_like(0, [0, 1])
    layers = _task(personal=PersonalSpec(PersonalMode.LAYERS, ("dense1.",)).to_wire())
    fit = LocalModels("d1").fit(trainer, layers, received, layers.train, data, data,
                                lambda: False)
    assert fit.only == {"dense0.weight", "dense0.bias"}
    fit = LocalModels("d1").fit(trainer, _task(clusters=2), stack([received, received]),
                                TrainConfig(), data, data, lambda: False)
    assert fit.only == {f"cluster{fit.metrics['cluster']:.0f}/{n}" for n in received}


def test_the_devices_own_models_survive_a_restart(tmp_path):
    from edge_client.personal.saved import FILE, load_local, save_local

    assert load_local(tmp_path, "d1", 10_000) is None
    local = LocalModels("d1")
    local.spec = PersonalSpec(PersonalMode.LAYERS, ("dense1.",))
    local.personal = {"dense1.weight": np.ones((2, 3), F32)}
    local.cluster = 2
    save_local(tmp_path, local)
    back = load_local(tmp_path, "d1", 10_000)
    assert back is not None and back.spec == local.spec and back.cluster == 2
    assert np.array_equal(back.personal["dense1.weight"], local.personal["dense1.weight"])
    served = back.serving({"dense0.weight": np.zeros(2, F32),
                           "dense1.weight": np.zeros((2, 3), F32)}, mlp_trainer([2, 3]), None)
    assert served["dense1.weight"].sum() == 6  # served with its head from the start
    assert load_local(tmp_path, "d1", 1) is None  # over this device's element limit
    (tmp_path / FILE).write_bytes(b"\x00garbage")
    assert load_local(tmp_path, "d1", 10_000) is None  # logged; the global model then


def test_a_plain_task_turns_the_devices_own_model_off():
    local = LocalModels("d1")
    local.spec = PersonalSpec(PersonalMode.LAYERS, ("dense1.",))
    local.personal = {"dense1.weight": np.ones(2, F32)}
    model = {"dense0.weight": np.zeros(2, F32), "dense1.weight": np.zeros(2, F32)}
    assert local.serving(model, mlp_trainer([2, 2]), None)["dense1.weight"].sum() == 2
    local.read_task(_task())
    assert local.serving(model, mlp_trainer([2, 2]), None)["dense1.weight"].sum() == 0


def test_the_update_carries_the_figures_and_only_the_tensors_named():
    from edge_client.session.update_maker import UpdateMaker
    from edge_client.training.trainer import FitResult

    base = {"a": np.zeros(2, F32), "b": np.zeros(2, F32)}
    trained = {"a": np.ones(2, F32), "b": np.zeros(2, F32)}
    result = FitResult(10, 0.5, 3, 0.1, False)
    update = UpdateMaker("d1").make(_task(), base, trained, result, {"accuracy": 0.4}, 10,
                                    None, None, 1.0, extra={"personal_accuracy": 0.9},
                                    only=frozenset({"a"}))
    assert set(update.tensors) == {"a"} and update.metrics["personal_accuracy"] == 0.9
    from edge_client.shared.codecs import CodecConfig

    codec = CodecConfig(sparsify="topk", fraction=0.5, quantize="q8")
    coded = UpdateMaker("d1").make(_task(), base, trained, result, {}, 10, codec, None, 1.0,
                                   only=frozenset({"a"}))
    assert coded.blob and not coded.tensors  # a codec lays out the whole model


def test_the_status_says_the_figures_once_there_are_some():
    from edge_client.session.events import Instant
    from edge_client.session.status import StatusBoard
    from edge_client.shared.protocol import Topics

    board = StatusBoard("d1", Topics("f"), lambda b: b, "s", 60.0)
    plain = decode(board.publish(True, 1, Instant(0.0, 1.0)).payload)
    assert plain.personal_accuracy is None and plain.cluster is None
    board.figures = {"global_accuracy": 0.5, "personal_accuracy": 0.75, "cluster": 1.0}
    status = decode(board.publish(True, 1, Instant(0.0, 1.0)).payload)
    assert (status.global_accuracy, status.personal_accuracy, status.cluster) == (0.5, 0.75, 1)


def test_each_devices_latest_row_is_kept_over_versions():
    from aggregator.personalize import merged

    assert merged([None, {}]) is not None and merged([None, 3]) is None
    info = merged([{"devices": {"a": {"cluster": 0.0}, "b": {"cluster": 0.0}}},
                   None, {"devices": {"a": {"cluster": 1.0}}}])
    assert info is not None and info["cluster_sizes"] == {"0": 1, "1": 1}
    assert info["devices"]["a"] == {"cluster": 1.0}


def test_a_store_made_with_another_k_is_refused(tmp_path):
    from aggregator.core.models import check_clusters_kept

    plain = {"w": np.zeros(2, F32)}
    check_clusters_kept(AggregatorConfig(), plain)
    check_clusters_kept(AggregatorConfig(clusters=ClustersConfig(k=2)), stack([plain] * 2))
    with pytest.raises(ValueError, match="holds a model of 2 cluster"):
        check_clusters_kept(AggregatorConfig(clusters=ClustersConfig(k=3)),
                            stack([plain] * 2))
    with pytest.raises(ValueError, match="holds a model of 1 cluster"):
        check_clusters_kept(AggregatorConfig(clusters=ClustersConfig(k=2)), plain)


def test_a_device_toml_names_its_held_out_data(tmp_path):
    from fedge.roles import build_device

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((20, 8)).astype(F32), y=rng.integers(0, 3, 20))
    np.savez(tmp_path / "h.npz", x=rng.random((5, 8)).astype(F32), y=rng.integers(0, 3, 5))
    config = tmp_path / "device.toml"
    config.write_text(f'device_id = "d"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[model]\nsizes = [8, 4, 3]\n'
                      f'[data]\npath = "{tmp_path / "d.npz"}"\n'
                      f'holdout = "{tmp_path / "h.npz"}"\n')
    client = build_device(config)
    assert client.io.holdout is not None and len(client.io.holdout[0]) == 5
    np.savez(tmp_path / "h.npz", x=rng.random((5, 9)).astype(F32), y=rng.integers(0, 3, 5))
    with pytest.raises(ConfigError, match="holdout"):
        build_device(config)


def test_prometheus_gets_the_personal_means_and_cluster_sizes(tmp_path):
    from aggregator.store import Store
    from aggregator.web import create_app
    from edge_client.shared.protocol import Model
    from edge_client.shared.protocol.chunking import sha256_hex

    path = tmp_path / "agg.sqlite3"
    store = Store(path)
    info = personal_info([Update("a", "t", "n", 0, 10, {}, metrics={
        "global_accuracy": 0.5, "personal_accuracy": 0.9, "cluster": 1})])
    for version, row in enumerate([{"round": 0}, {"round": 1, **info}]):
        blob = encode(Model(version=version, tensors={}, arch={}))
        store.add_model(version, blob, sha256_hex(blob), row)
    store.close()
    text = create_app(path, None, None).test_client().get("/metrics").get_data(as_text=True)
    assert "fedge_personal_accuracy_mean 0.9" in text
    assert "fedge_global_accuracy_mean 0.5" in text
    assert 'fedge_cluster_devices{cluster="1"} 1.0' in text


def test_memory_mapped_data_keeps_back_its_last_rows_without_a_copy(tmp_path):
    from edge_client.local_data import is_mapped

    np.save(tmp_path / "x.npy", np.arange(50, dtype=F32).reshape(25, 2))
    np.save(tmp_path / "y.npy", np.arange(25) % 3)
    x, y = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    (xt, _), (xh, yh) = split_holdout((x, y), "d1")
    assert is_mapped(xt) and is_mapped(xh) and len(xh) == 5
    assert xh[0, 0] == 40 and yh.tolist() == (np.arange(20, 25) % 3).tolist()
