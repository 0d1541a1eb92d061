"""The gateway's web app (aggregator.web) against a store filled by hand."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from aggregator.fairness import fairness_of
from aggregator.lifecycle import Stage, StageChange
from aggregator.store import Store
from aggregator.web import create_app, load_token, serve_dashboard
from aggregator.web.openapi import openapi_document
from edge_client.shared.identity import Identity
from edge_client.shared.protocol import Model, Status, Task, TrainConfig, Update, decode, encode
from edge_client.shared.protocol.chunking import sha256_hex
from tests.conftest import STORE_BACKENDS

READ, ADMIN = "read-token-123", "admin-token-456"
DEVICES = ("dev-0", "dev-1", "dev-2", "dev-3", "dev-4")
ACCURACY = (0.819, 0.894, 0.930, 0.944, 0.944, 0.950, 0.950, 0.953, 0.955, 0.955)
LOSS = (0.62, 0.38, 0.26, 0.21, 0.20, 0.18, 0.17, 0.165, 0.16, 0.158)
MODEL_BYTES = 400_105  # the demo's float32 MLP as sent


@dataclass
class Filled:
    """What fill_store wrote, for the assertions."""

    path: Path | str  # an SQLite file, or a postgresql:// URL
    versions: int
    blobs: dict[int, bytes] = field(default_factory=dict)
    contributions: dict[str, int] = field(default_factory=dict)
    payload_bytes: int = 0
    update_bytes: int = 0
    dense_bytes: int = 0


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"b": rng.normal(size=4).astype(np.float32),
            "w": rng.normal(size=(8, 4)).astype(np.float32)}


def local_accuracy(base: int, device: str) -> float:
    """How version `base` did on the device's own data: a little above its test accuracy
    (the devices trained on that data in earlier rounds), near chance for version 0."""
    test = 0.11 if base == 0 else ACCURACY[base - 1]
    return round(min(0.99, test + 0.01 * DEVICES.index(device)), 4)


def local_loss(base: int, device: str) -> float:
    return round((2.3 if base == 0 else LOSS[base - 1]) - 0.01 * DEVICES.index(device), 4)


def _update(device: str, task: str, base: int, seed: int,
            local: float | None = None) -> Update:
    """An update whose metrics say how its base version did on the device's data; `local`
    overrides that accuracy (NaN: a device that could not measure it)."""
    accuracy = local_accuracy(base, device) if local is None else local
    return Update(device_id=device, task_id=task, nonce=f"n-{device}-{task}", base_version=base,
                  num_samples=100 + seed, tensors=_weights(seed),
                  metrics={"train_s": 0.2, "local_accuracy": accuracy,
                           "local_loss": local_loss(base, device)})


def device_evaluation(used: list[Update]) -> dict[str, float]:
    """What the service puts in a version's info: sample-weighted means over its updates."""
    samples = sum(u.num_samples for u in used)
    return {f"device_{m}": sum(u.num_samples * u.metrics[f"local_{m}"] for u in used) / samples
            for m in ("accuracy", "loss")}


def _store_update(store: Store, filled: Filled, update: Update, state: str) -> None:
    payload = encode(update)
    assert store.add_update(update, payload, state)
    filled.payload_bytes += len(payload)


def _add_model(store: Store, filled: Filled, version: int, info: dict,
               used: list[Update] | None = None, close: str | None = None) -> None:
    blob = encode(Model(version=version, tensors=_weights(1000 + version), arch={"sizes": [8, 4]}))
    store.add_model(version, blob, sha256_hex(blob), info, used=used, close_task=close)
    filled.blobs[version] = blob


def _round(store: Store, filled: Filled, r: int) -> None:
    """Round r: a task for version r-1, updates from the devices present, version r."""
    task = Task(task_id=f"t{r}", mode="sync", round=r, model_version=r - 1, train=TrainConfig())
    store.add_task(task, encode(task))
    present = [d for i, d in enumerate(DEVICES) if not (i == 4 and r % 3 == 0)
               and not (i == 3 and r == 7)]
    used = [_update(d, task.task_id, r - 1, 10 * r + i) for i, d in enumerate(present)]
    for u in used:
        _store_update(store, filled, u, "pending")
        filled.contributions[u.device_id] = filled.contributions.get(u.device_id, 0) + 1
    update_bytes = 2_050 * len(used) + 7 * r
    filled.update_bytes += update_bytes
    filled.dense_bytes += MODEL_BYTES * len(used)
    info = {"round": r, "updates": len(used), "update_bytes": update_bytes,
            "model_bytes": MODEL_BYTES, "delta_bytes": 44_877, "round_wall_s": 0.3 + r / 100,
            "mode": "sync", "max_train_s": 0.21, "devices": present,
            "accuracy": ACCURACY[r - 1], "loss": LOSS[r - 1], **device_evaluation(used),
            "fairness": fairness_of(used, 0.5).to_json()}
    _add_model(store, filled, r, info, used=used, close=task.task_id)


def _statuses(store: Store) -> None:
    battery = (None, 88.0, 64.0, 97.0, 12.0)
    reasons = ("", "", "", "cpu busy", "on battery")
    for i, device in enumerate(DEVICES):
        store.set_device(Status(device_id=device, online=i != 4, eligible=i < 3,
                                reason=reasons[i], model_version=10, battery_pct=battery[i]))


def _spread_times(store: Store, versions: int) -> None:
    """Versions a minute apart up to now, devices seen lately: what a real run shows."""
    now = time.time()
    for v in range(versions + 1):
        store.db.execute("UPDATE models SET created_at=? WHERE version=?",
                         (now - 60 * (versions - v) - 5, v))
    for i, device in enumerate(DEVICES):
        store.db.execute("UPDATE devices SET last_seen=? WHERE device_id=?",
                         (now - (1200 if i == 4 else 3 + 2 * i), device))


def fill_store(path: Path | str) -> Filled:
    """Ten sync versions from five devices, pending and late updates, rejections, keys."""
    store = Store(path)
    filled = Filled(path, versions=len(ACCURACY))
    _add_model(store, filled, 0, {"round": 0, "updates": 0})
    for r in range(1, filled.versions + 1):
        _round(store, filled, r)
    task = Task(task_id="t11", mode="sync", round=11, model_version=10, train=TrainConfig())
    store.add_task(task, encode(task))
    for i, device in enumerate(DEVICES[:2]):
        _store_update(store, filled, _update(device, "t11", 10, 500 + i), "pending")
    _store_update(store, filled, _update("dev-4", "t9", 8, 900, float("nan")), "late")
    _statuses(store)
    store.add_rejection("dev-1", "n-x", "base version 2 is too stale")
    store.add_rejection("intruder", "n-y", "device is not enrolled")
    store.add_rejection("intruder", "n-z", "device is not enrolled")
    for device in DEVICES:
        store.enroll(device, Identity.generate().public_text)
    _spread_times(store, filled.versions)
    _stages(store, filled.versions)
    store.close()
    return filled


STAGES = {8: "production", 9: "rolled_back", 10: "canary"}  # the rest: retired


def _stages(store: Store, versions: int) -> None:
    """Every stage a version can have (docs/lifecycle.md), with its audit lines."""
    store.migrate_stages()
    store.set_stages([StageChange(time.time(), v, Stage.PRODUCTION,
                                  Stage(STAGES.get(v, "retired")), "rule", "test store")
                      for v in range(versions + 1) if STAGES.get(v) != "production"])


class FakeActions:
    """Stands in for the service: records requests; refuses the strategies in `refused`
    as a service in secure mode refuses the robust ones."""

    def __init__(self, refused: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[str, object]] = []
        self.refused = refused

    def set_training(self, running: bool) -> None:
        self.calls.append(("training", running))

    def set_strategy(self, name: str) -> None:
        if name in self.refused:
            raise ValueError(f"secure aggregation cannot run {name!r}")
        self.calls.append(("strategy", name))


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def template(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """Filled once per backend (each commit is durable, so filling is the slow part),
    copied per test: the file, or a PostgreSQL database made from it as a template."""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        return fill_store(server.create_database())
    return fill_store(tmp_path_factory.mktemp("template") / "agg.sqlite3")


@pytest.fixture
def filled(request: pytest.FixtureRequest, template: Filled, tmp_path: Path) -> Filled:
    if isinstance(template.path, str):
        server = request.getfixturevalue("postgres_server")
        url = server.create_database(template=template.path)
        request.addfinalizer(lambda: server.drop_database(url))
        return dataclasses.replace(template, path=url)
    path = tmp_path / "agg.sqlite3"
    shutil.copyfile(template.path, path)  # closed stores leave no WAL file behind
    return dataclasses.replace(template, path=path)


@pytest.fixture
def actions() -> FakeActions:
    return FakeActions()


@pytest.fixture
def client(filled: Filled, actions: FakeActions):
    return create_app(filled.path, READ, ADMIN, actions).test_client()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get(client, path: str, token: str = READ):
    return client.get(path, headers=auth(token))


def post(client, path: str, body, token: str = ADMIN):
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(path, data=data, headers=auth(token), content_type="application/json")


# ---------------------------------------------------------------- reads
def test_overview(client, filled):
    o = get(client, "/api/overview").get_json()
    assert o["model_version"] == 10 and o["mode"] == "sync"
    assert o["versions"] == 10 and o["rounds"] == 10
    assert o["accuracy"] == pytest.approx(0.955) and o["loss"] == pytest.approx(0.158)
    assert o["evaluated_version"] == 10
    assert o["update_bytes"] == filled.update_bytes
    assert o["compression_ratio"] == pytest.approx(filled.dense_bytes / filled.update_bytes,
                                                   abs=0.05)
    aggregated = sum(filled.contributions.values())
    assert o["updates"] == {"pending": 2, "aggregated": aggregated, "late": 1, "discarded": 0}
    assert o["rejections"] == 3
    assert o["devices"] == {"known": 5, "online": 4, "eligible": 3}
    assert o["enrolled"] == 5


def test_versions(client, filled):
    rows = get(client, "/api/versions").get_json()["versions"]
    assert [r["version"] for r in rows] == list(range(filled.versions + 1))
    assert rows[0]["updates"] == 0 and "accuracy" not in rows[0]
    last = rows[-1]
    assert last["accuracy"] == pytest.approx(0.955) and last["devices"] == list(DEVICES)
    assert {"round", "update_bytes", "model_bytes", "delta_bytes", "round_wall_s",
            "max_train_s", "created_at"} <= last.keys()


def test_versions_carry_the_devices_evaluation(client, filled):
    """Version N's device figures are version N-1 on the devices' data, sample-weighted."""
    rows = get(client, "/api/versions").get_json()["versions"]
    assert "device_accuracy" not in rows[0] and "device_loss" not in rows[0]
    audit = get(client, "/api/audit").get_json()["audit"]
    for row in rows[1:]:
        used = [a for a in audit if a["used_in"] == row["version"]]
        samples = sum(a["num_samples"] for a in used)
        base = row["version"] - 1
        expected = sum(a["num_samples"] * local_accuracy(base, a["device_id"])
                       for a in used) / samples
        assert row["device_accuracy"] == pytest.approx(expected), row["version"]
        assert row["device_loss"] == pytest.approx(sum(
            a["num_samples"] * local_loss(base, a["device_id"]) for a in used) / samples)
    assert rows[1]["device_accuracy"] < 0.2 < rows[2]["device_accuracy"]  # v0 is untrained


def test_devices(client, filled):
    rows = {d["device_id"]: d for d in get(client, "/api/devices").get_json()["devices"]}
    assert list(rows) == sorted([*DEVICES, "intruder"])
    for device in DEVICES:
        assert rows[device]["contributions"] == filled.contributions[device]
    assert rows["dev-0"]["online"] is True and rows["dev-0"]["battery_pct"] is None
    assert rows["dev-3"]["eligible"] is False and rows["dev-3"]["reason"] == "cpu busy"
    assert rows["dev-4"]["online"] is False and rows["dev-4"]["battery_pct"] == 12.0
    assert rows["dev-1"]["rejections"] == 1 and rows["dev-2"]["rejections"] == 0
    assert rows["intruder"] == {"device_id": "intruder", "online": None, "eligible": None,
                                "reason": "", "model_version": None, "last_seen": None,
                                "battery_pct": None, "contributions": 0, "rejections": 2,
                                "last_local_accuracy": None, "last_local_version": None}


def test_devices_show_their_latest_local_accuracy(client):
    """From each device's latest stored update, whatever its state."""
    rows = {d["device_id"]: d for d in get(client, "/api/devices").get_json()["devices"]}
    latest = {"dev-0": 10, "dev-1": 10, "dev-2": 9, "dev-3": 9}  # dev-0, dev-1: pending t11
    for device, base in latest.items():
        assert rows[device]["last_local_accuracy"] == pytest.approx(
            local_accuracy(base, device)), device
        assert rows[device]["last_local_version"] == base
    # dev-4's latest is a late update whose device could not measure (NaN): null, not
    # an older figure, and no NaN in the JSON
    assert rows["dev-4"]["last_local_accuracy"] is None
    assert rows["dev-4"]["last_local_version"] == 8


def test_local_accuracy_of_a_device_from_before_the_metric(tmp_path):
    """Updates without local_accuracy (older devices) show null rather than an error."""
    store = Store(tmp_path / "old.sqlite3")
    update = dataclasses.replace(_update("dev-0", "t1", 0, 1), metrics={"train_s": 0.2})
    assert store.add_update(update, encode(update), "pending")
    store.close()
    client = create_app(tmp_path / "old.sqlite3", None, None).test_client()
    assert client.get("/api/devices").get_json()["devices"] == [{
        "device_id": "dev-0", "online": None, "eligible": None, "reason": "",
        "model_version": None, "last_seen": None, "battery_pct": None, "contributions": 0,
        "rejections": 0, "last_local_accuracy": None, "last_local_version": 0}]


def test_audit_all_and_one_version(client, filled):
    everything = get(client, "/api/audit").get_json()["audit"]
    assert len(everything) == sum(filled.contributions.values())
    one = get(client, "/api/audit?version=3").get_json()["audit"]
    assert {r["device_id"] for r in one} == {"dev-0", "dev-1", "dev-2", "dev-3"}
    assert all(r["used_in"] == 3 and len(r["digest"]) == 64 for r in one)
    assert get(client, "/api/audit?version=99").get_json() == {
        "audit": [], "total": 0, "limit": 500, "offset": 0}


def test_enrolment(client):
    rows = get(client, "/api/enrolment").get_json()["enrolment"]
    assert [r["device_id"] for r in rows] == list(DEVICES)
    assert all(r["public_key"].startswith("ed25519:") and r["revoked_at"] is None for r in rows)


def test_model_download(client, filled):
    response = get(client, "/api/models/3")
    assert response.status_code == 200
    assert response.mimetype == "application/octet-stream"
    assert response.data == filled.blobs[3]
    assert response.headers["X-Fedge-Sha256"] == sha256_hex(filled.blobs[3])
    assert "fedge-model-v3.msgpack" in response.headers["Content-Disposition"]
    model = decode(response.data, expect=Model)
    assert isinstance(model, Model) and model.version == 3


def test_unknown_model_is_404(client):
    response = get(client, "/api/models/99")
    assert response.status_code == 404 and "99" in response.get_json()["error"]


@pytest.mark.parametrize("path", ["/api/models/abc", "/api/models/-1", "/api/models/1.5",
                                  "/api/models/%201", "/api/models/+1", "/api/audit?version=x",
                                  "/api/audit?version=-2", "/api/audit?version="])
def test_bad_version_is_400(client, path):
    response = get(client, path)
    assert response.status_code == 400
    assert "version" in response.get_json()["error"]


def test_versions_up_to_the_largest_sqlite_integer(client):
    assert get(client, f"/api/models/{2**63 - 1}").status_code == 404
    too_big = get(client, f"/api/models/{2**63}")
    assert too_big.status_code == 400 and str(2**63 - 1) in too_big.get_json()["error"]


@pytest.mark.parametrize(("path", "reason"), [
    ("/api/audit?versoin=3", "unknown query parameter 'versoin'; this endpoint takes version"),
    ("/api/overview?x=1", "unknown query parameter 'x'; this endpoint takes none"),
    ("/api/models/1?download=1", "unknown query parameter 'download'"),
    ("/metrics?name[]=fedge_model_version", "unknown query parameter 'name[]'"),
    ("/api/openapi.json?v=2", "unknown query parameter 'v'"),
    ("/api/audit?version=1&version=2", "'version' given more than once"),
])
def test_bad_query_parameters_are_400(client, path, reason):
    response = get(client, path)
    assert response.status_code == 400 and reason in response.get_json()["error"]


def test_query_parameters_are_checked_after_the_token(client):
    assert client.get("/api/overview?x=1").status_code == 401
    assert client.get("/?token=abc").status_code == 200  # the page takes its token so


def test_empty_store(tmp_path):
    client = create_app(tmp_path / "empty.sqlite3", None, None).test_client()
    o = client.get("/api/overview").get_json()
    assert o["model_version"] is None and o["mode"] is None and o["accuracy"] is None
    assert o["versions"] == 0 and o["compression_ratio"] is None
    assert client.get("/api/versions").get_json() == {"versions": []}
    assert client.get("/api/devices").get_json() == {
        "devices": [], "total": 0, "limit": 500, "offset": 0}
    text = client.get("/metrics").get_data(as_text=True)
    assert "fedge_model_version" not in text and "fedge_devices_online 0.0" in text


def test_non_finite_numbers_become_null(tmp_path):
    store = Store(tmp_path / "nan.sqlite3")
    store.add_model(0, b"x", sha256_hex(b"x"), {"round": 0, "updates": 0,
                                                "accuracy": float("nan"),
                                                "loss": float("inf")})
    store.close()
    client = create_app(tmp_path / "nan.sqlite3", None, None).test_client()
    text = client.get("/api/versions").get_data(as_text=True)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["versions"][0]["accuracy"] is None


def test_reads_while_the_service_holds_a_write_transaction(filled):
    """The dashboard's reads do not wait for the aggregator's open transaction (WAL;
    MVCC on PostgreSQL)."""
    writer = Store(filled.path)
    writer.db.begin()  # BEGIN IMMEDIATE on SQLite
    writer.db.execute("UPDATE counters SET value=value+1")
    try:
        client = create_app(filled.path, READ, ADMIN).test_client()
        started = time.monotonic()
        assert get(client, "/api/overview").status_code == 200
        assert get(client, "/metrics").status_code == 200
        assert time.monotonic() - started < 2.0
    finally:
        writer.db.execute("ROLLBACK")
        writer.close()


# ---------------------------------------------------------------- tokens
READ_PATHS = ["/api/overview", "/api/versions", "/api/devices", "/api/audit",
              "/api/enrolment", "/api/models/1", "/metrics"]
ADMIN_POSTS = [("/api/admin/enroll", {"device": "dev-9", "key": "x"}),
               ("/api/admin/revoke", {"device": "dev-0"}),
               ("/api/admin/training", {"running": False}),
               ("/api/admin/strategy", {"name": "fedavg"})]


@pytest.mark.parametrize("path", READ_PATHS)
def test_reads_need_a_token(client, path):
    missing = client.get(path)
    assert missing.status_code == 401 and missing.get_json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(path, headers={"Authorization": f"Basic {READ}"}).status_code == 401
    wrong = get(client, path, "not-the-token")
    assert wrong.status_code == 403 and wrong.get_json()["error"]
    assert get(client, path, READ).status_code == 200
    assert get(client, path, ADMIN).status_code == 200


@pytest.mark.parametrize(("path", "body"), ADMIN_POSTS)
def test_admin_needs_the_admin_token(client, actions, path, body):
    assert client.post(path, json=body).status_code == 401
    denied = post(client, path, body, READ)
    assert denied.status_code == 403 and "token" in denied.get_json()["error"]
    assert post(client, path, body, "guess").status_code == 403
    assert actions.calls == []


@pytest.mark.parametrize(("path", "body"), ADMIN_POSTS)
def test_admin_disabled_without_an_admin_token(filled, path, body):
    client = create_app(filled.path, READ, None, FakeActions()).test_client()
    response = post(client, path, body, READ)
    assert response.status_code == 403 and "disabled" in response.get_json()["error"]


def test_without_a_read_token_reads_are_open(filled):
    client = create_app(filled.path, None, ADMIN).test_client()
    for path in READ_PATHS:
        assert client.get(path).status_code == 200, path
    assert client.post("/api/admin/revoke", json={"device": "dev-0"}).status_code == 401


def test_page_openapi_and_static_files_need_no_token(client):
    page = client.get("/")
    assert page.status_code == 200 and b'id="devices"' in page.data
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for path in ("/static/dashboard.js", "/static/chart.js", "/static/table.js",
                 "/static/dashboard.css"):
        assert client.get(path).status_code == 200, path
    assert client.get("/api/openapi.json").status_code == 200


def test_empty_tokens_are_refused(tmp_path):
    with pytest.raises(ValueError, match="read_token"):
        create_app(tmp_path / "db", "", ADMIN)
    with pytest.raises(ValueError, match="admin_token"):
        create_app(tmp_path / "db", READ, "  ")


def test_load_token(tmp_path):
    path = tmp_path / "read.token"
    path.write_text("s3cret\n")
    assert load_token(path) == "s3cret"
    assert load_token(None) is None
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_token(path)


# ---------------------------------------------------------------- admin actions
def test_enroll_and_revoke(client, filled):
    key = Identity.generate().public_text
    response = post(client, "/api/admin/enroll", {"device": "dev-9", "key": key + "\n"})
    assert response.status_code == 200 and response.get_json() == {"enrolled": "dev-9"}
    store = Store(filled.path)
    assert store.device_key("dev-9") == key
    response = post(client, "/api/admin/revoke", {"device": "dev-9"})
    assert response.status_code == 200 and response.get_json() == {"revoked": "dev-9"}
    assert store.device_key("dev-9") is None
    store.close()


@pytest.mark.parametrize(("path", "body", "reason"), [
    ("/api/admin/enroll", {"device": "dev-9", "key": "ed25519:AAAA"}, "32-byte"),
    ("/api/admin/enroll", {"device": "dev-9", "key": "rsa:abc"}, "ed25519:"),
    ("/api/admin/enroll", {"device": "a/b", "key": "ed25519:x"}, "device"),
    ("/api/admin/enroll", {"device": "dev-9"}, "missing field 'key'"),
    ("/api/admin/enroll", {"device": "dev-9", "key": 5}, "must be a string"),
    ("/api/admin/revoke", {"device": "dev 0"}, "device"),
    ("/api/admin/revoke", {}, "missing field 'device'"),
    ("/api/admin/revoke", "{not json", "not valid JSON"),
    ("/api/admin/revoke", "[1, 2]", "JSON object, not an array"),
    ("/api/admin/revoke", "5", "JSON object, not a number"),
    ("/api/admin/revoke", "", "not valid JSON"),
    ("/api/admin/training", {"running": "yes"}, "boolean"),
    ("/api/admin/training", {"running": 1}, "boolean"),
    ("/api/admin/training", {}, "missing field 'running'"),
    ("/api/admin/strategy", {"name": "krum-42"}, "must be one of"),
    ("/api/admin/strategy", {"name": None}, "must be a string"),
    # what the OpenAPI document forbids (additionalProperties false, patterns, strict JSON)
    ("/api/admin/revoke", {"device": "dev-0", "force": True}, "unknown field 'force'"),
    ("/api/admin/revoke", {"device": "dev-0\n"}, "field 'device' must be 1-64"),
    ("/api/admin/revoke", {"device": "d" * 65}, "field 'device' must be 1-64"),
    ("/api/admin/revoke", {"device": [[["dev-0"]]]}, "must be a string"),
    ("/api/admin/revoke", '{"device": "dev-0", "device": "dev-1"}', "given twice"),
    ("/api/admin/revoke", b'{"device": "dev-\xff"}', "not valid JSON"),
    ("/api/admin/training", '{"running": NaN}', "NaN is not JSON"),
    ("/api/admin/training", {"running": None}, "boolean"),
    ("/api/admin/enroll", {"device": "dev-9", "key": "ed25519:" + "A" * 42 + "B="}, "32-byte"),
    ("/api/admin/revoke", "[" * 30_000 + "]" * 30_000, "nested too deeply"),
    ("/api/admin/revoke", '{"device": ' + "[" * 30_000 + "]" * 30_000 + "}", "too deeply"),
])
def test_bad_admin_input_is_400(client, actions, path, body, reason):
    response = post(client, path, body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert reason in error and "\n" not in error and len(error) < 300
    assert actions.calls == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", None])
def test_a_body_not_sent_as_json_is_415(client, actions, content_type):
    headers = auth(ADMIN) | ({"Content-Type": content_type} if content_type else {})
    response = client.post("/api/admin/training", data='{"running": false}', headers=headers)
    assert response.status_code == 415
    assert "Content-Type: application/json" in response.get_json()["error"]
    assert actions.calls == []


def test_json_with_a_charset_is_json(client, actions):
    json_utf8 = {"Content-Type": "application/json; charset=utf-8"}
    response = client.post("/api/admin/training", data='{"running": false}',
                           headers=auth(ADMIN) | json_utf8)
    assert response.status_code == 202 and actions.calls == [("training", False)]


def test_a_strategy_the_service_refuses_is_409(filled):
    actions = FakeActions(refused=("krum",))
    client = create_app(filled.path, READ, ADMIN, actions).test_client()
    response = post(client, "/api/admin/strategy", {"name": "krum"})
    assert response.status_code == 409
    assert response.get_json() == {"error": "secure aggregation cannot run 'krum'"}
    assert actions.calls == []


def test_a_bug_answers_one_json_line_and_logs_the_traceback(filled, caplog):
    class Broken(FakeActions):
        def set_training(self, running: bool) -> None:
            raise RuntimeError("a bug in the service")

    client = create_app(filled.path, READ, ADMIN, Broken()).test_client()
    response = post(client, "/api/admin/training", {"running": True})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error; the gateway's log has the details"}
    assert "a bug in the service" in caplog.text and "Traceback" in caplog.text


def test_revoking_an_unknown_device_is_404(client):
    response = post(client, "/api/admin/revoke", {"device": "dev-77"})
    assert response.status_code == 404 and "never enrolled" in response.get_json()["error"]


def test_training_and_strategy_go_to_the_service(client, actions):
    assert post(client, "/api/admin/training", {"running": False}).status_code == 202
    assert post(client, "/api/admin/training", {"running": True}).status_code == 202
    response = post(client, "/api/admin/strategy", {"name": "median"})
    assert response.status_code == 202 and response.get_json()["strategy"] == "median"
    assert actions.calls == [("training", False), ("training", True), ("strategy", "median")]


@pytest.mark.parametrize(("path", "body"), [("/api/admin/training", {"running": True}),
                                            ("/api/admin/strategy", {"name": "fedavg"})])
def test_actions_without_the_service_are_501(filled, path, body):
    client = create_app(filled.path, READ, ADMIN).test_client()
    response = post(client, path, body)
    assert response.status_code == 501 and "service" in response.get_json()["error"]


def test_oversized_body_is_413(client):
    response = post(client, "/api/admin/revoke", {"device": "x" * 100_000})
    assert response.status_code == 413 and response.get_json()["error"]


def test_unknown_paths_and_methods_answer_json(client):
    missing = get(client, "/api/nothing")
    assert missing.status_code == 404 and missing.get_json()["error"]
    wrong = client.post("/api/overview", headers=auth(READ))
    assert wrong.status_code == 405 and "GET" in wrong.headers["Allow"]
    assert wrong.get_json()["error"]
    assert get(client, "/api/overview").headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------- OpenAPI
def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_covers_every_api_route(client):
    served = client.get("/api/openapi.json").get_json()
    assert served == openapi_document() and served["openapi"].startswith("3.")
    paths = served["paths"]
    app = client.application
    api_rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api/")]
    assert len(api_rules) >= 11
    for rule in api_rules:
        path = _openapi_path(rule.rule)
        assert path in paths, f"{rule.rule} is not in the OpenAPI document"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {rule.rule} is not documented"
    routed = {_openapi_path(r.rule) for r in app.url_map.iter_rules()}
    assert set(paths) <= routed, "the document names paths the app does not serve"


@pytest.mark.parametrize(("path", "key", "schema"), [("/api/versions", "versions", "Version"),
                                                     ("/api/devices", "devices", "Device")])
def test_openapi_schemas_name_every_field_served(client, path, key, schema):
    properties = openapi_document()["components"]["schemas"][schema]["properties"]
    served = {name for row in get(client, path).get_json()[key] for name in row}
    assert served <= properties.keys(), served - properties.keys()
    assert {"device_accuracy", "device_loss", "last_local_accuracy"} & properties.keys()


def test_openapi_refs_resolve():
    document = openapi_document()
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document))
    assert refs and set(refs) <= document["components"]["schemas"].keys()


# ---------------------------------------------------------------- metrics
def _metrics(client) -> dict[tuple[str, tuple], float]:
    response = get(client, "/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for s in family.samples}


def test_metrics(client, filled):
    m = _metrics(client)
    assert m[("fedge_model_version", ())] == 10
    assert m[("fedge_devices_online", ())] == 4
    assert m[("fedge_devices_eligible", ())] == 3
    assert m[("fedge_updates_total", (("state", "aggregated"),))] == sum(
        filled.contributions.values())
    assert m[("fedge_updates_total", (("state", "pending"),))] == 2
    assert m[("fedge_updates_total", (("state", "late"),))] == 1
    assert m[("fedge_rejections_total", ())] == 3
    assert m[("fedge_update_bytes_total", ())] == filled.payload_bytes
    assert m[("fedge_last_accuracy", ())] == pytest.approx(0.955)


def test_each_app_has_its_own_registry(filled, tmp_path):
    one = create_app(filled.path, None, None).test_client()
    other = create_app(tmp_path / "other.sqlite3", None, None).test_client()
    assert _metrics(one)[("fedge_devices_online", ())] == 4
    assert _metrics(other)[("fedge_devices_online", ())] == 0
    assert not [m for m in REGISTRY.collect() if m.name.startswith("fedge_")]


# ---------------------------------------------------------------- waitress
def test_serve_dashboard_on_a_free_port_and_stop(filled):
    server = serve_dashboard(create_app(filled.path, READ, ADMIN), "127.0.0.1", 0)
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
        request = urllib.request.Request(server.url + "api/overview", headers=auth(READ))
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["model_version"] == 10
            assert response.headers["Server"] == "fedge"
    finally:
        server.stop()
    assert not any(t.name == f"fedge-dashboard-{server.port}" for t in threading.enumerate())
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)
    server.stop()  # twice is fine


def _raw_post(server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One POST over a real socket, headers as given (a length that is not the body's)."""
    if "Transfer-Encoding" not in headers:
        headers = {"Content-Length": str(len(body))} | headers
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        connection.putrequest("POST", path)
        for name, value in (auth(ADMIN) | headers).items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_nested_and_huge_bodies_through_waitress(filled):
    """The real path: waitress in front, real HTTP on 127.0.0.1. Nothing is a 500."""
    actions = FakeActions()
    server = serve_dashboard(create_app(filled.path, READ, ADMIN, actions), "127.0.0.1", 0)
    json_type = {"Content-Type": "application/json"}
    try:
        nested = b"[" * 30_000 + b"]" * 30_000  # under 64 KiB, far deeper than the parser goes
        status, body = _raw_post(server, "/api/admin/training", nested, json_type)
        assert status == 400 and "nested too deeply" in json.loads(body)["error"]
        inside = b'{"running": ' + nested + b"}"
        status, body = _raw_post(server, "/api/admin/training", inside, json_type)
        assert status == 400 and "nested too deeply" in json.loads(body)["error"]
        over_app = json.dumps({"device": "x" * 100_000}).encode()  # over 64 KiB, under waitress'
        status, body = _raw_post(server, "/api/admin/revoke", over_app, json_type)
        assert status == 413 and json.loads(body)["error"]
        # a gigabyte announced: waitress refuses on the headers alone, reading no body
        status, _ = _raw_post(server, "/api/admin/revoke", b"",
                              json_type | {"Content-Length": str(10**9)})
        assert status == 413
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b"[" * 60_000] * 3)
        status, _ = _raw_post(server, "/api/admin/revoke", chunked + b"0\r\n\r\n",
                              json_type | {"Transfer-Encoding": "chunked"})
        assert status == 413
        status, body = _raw_post(server, "/api/admin/training", b'{"running": false}', json_type)
        assert status == 202 and actions.calls == [("training", False)]  # still serving
    finally:
        server.stop()


def test_an_unusable_store_is_503(tmp_path):
    (tmp_path / "a-folder").mkdir()
    client = create_app(tmp_path / "a-folder", None, None).test_client()
    response = client.get("/api/overview")
    assert response.status_code == 503 and "retry" in response.get_json()["error"]


def test_secure_rounds_count_as_contributions_though_no_update_is_stored(filled, actions):
    """Secure aggregation stores no update row; the dashboard counts its rounds instead."""
    from aggregator.secagg.store import SecAggLog

    store = Store(filled.path)
    log = SecAggLog(store.db)
    for task, state, contributors in (("s1", "done", ["dev-0", "dev-1"]),
                                      ("s2", "done", ["dev-1"]),
                                      ("s3", "aborted", ["dev-0"])):  # made no version
        log.opened(task, ("dev-0", "dev-1"), 16, 4, "advertise_keys")
        log.ended(task, state, {"contributors": contributors})
    store.db.raw.commit()
    store.close()
    client = create_app(filled.path, READ, ADMIN, actions).test_client()
    assert get(client, "/api/overview").get_json()["secure_contributions"] == 3
    rows = {d["device_id"]: d for d in get(client, "/api/devices").get_json()["devices"]}
    assert rows["dev-0"]["contributions"] == filled.contributions["dev-0"] + 1
    assert rows["dev-1"]["contributions"] == filled.contributions["dev-1"] + 2


def test_a_store_without_secure_rounds_reports_none(client):
    assert get(client, "/api/overview").get_json()["secure_contributions"] == 0
