"""The read API at fleet size: per-device listings answer a page (?limit=, ?offset=) and
say how many there are; bad values are a one-line 400 naming the parameter."""

from __future__ import annotations

import pytest

from aggregator.store import Store
from aggregator.web import create_app
from aggregator.web.paging import DEFAULT_LIMIT, MAX_LIMIT
from benchmarks.dashboard_store import build_fleet_store, device_name

DEVICES = 600  # above DEFAULT_LIMIT: the default page is not everything
VERSIONS = 4
PAGED = ("/api/devices", "/api/anomalies", "/api/personal", "/api/drift", "/api/lines",
         "/api/enrolment", "/api/audit")


@pytest.fixture
def client(store_url):
    build_fleet_store(store_url, DEVICES, VERSIONS)
    return create_app(store_url, None, None).test_client()


@pytest.fixture
def empty_client(tmp_path):
    """Parameters are checked before any query: an empty store will do."""
    return create_app(tmp_path / "empty.sqlite3", None, None).test_client()


def _rows(body: dict, path: str) -> list:
    key = {"/api/enrolment": "enrolment", "/api/audit": "audit"}.get(path, "devices")
    return body[key]


def test_the_default_page_is_capped_and_says_how_many(client):
    body = client.get("/api/devices").get_json()
    assert len(body["devices"]) == DEFAULT_LIMIT
    assert (body["total"], body["limit"], body["offset"]) == (DEVICES, DEFAULT_LIMIT, 0)
    assert [d["device_id"] for d in body["devices"][:2]] == [device_name(0), device_name(1)]
    for path in PAGED:
        body = client.get(path).get_json()
        assert len(_rows(body, path)) <= DEFAULT_LIMIT and body["total"] >= 1, path


def test_pages_follow_each_other(client):
    first = client.get("/api/devices?limit=250").get_json()["devices"]
    second = client.get("/api/devices?limit=250&offset=250").get_json()["devices"]
    last = client.get("/api/devices?limit=250&offset=500").get_json()
    ids = [d["device_id"] for d in first + second + last["devices"]]
    assert ids == [device_name(i) for i in range(DEVICES)]
    assert len(last["devices"]) == 100 and last["total"] == DEVICES
    beyond = client.get("/api/devices?offset=5000").get_json()
    assert beyond["devices"] == [] and beyond["total"] == DEVICES


def test_a_page_counts_what_the_whole_listing_counts(store_url):
    """The page's counts, read by key, agree with the store's own records."""
    build_fleet_store(store_url, 50, VERSIONS)
    client = create_app(store_url, None, None).test_client()
    rows = client.get("/api/devices?limit=7&offset=3").get_json()["devices"]
    store = Store(store_url)
    try:
        audit = store.audit()
        for row in rows:
            d = row["device_id"]
            assert row["contributions"] == sum(1 for r in audit if r["device_id"] == d)
            assert row["rejections"] == store.count_rejections(d)
    finally:
        store.close()


def test_every_paged_listing_takes_limit_and_offset(client):
    for path in PAGED:
        whole = client.get(f"{path}?limit={MAX_LIMIT}").get_json()
        page = client.get(f"{path}?limit=3&offset=2").get_json()
        assert _rows(page, path) == _rows(whole, path)[2:5], path
        assert page["total"] == whole["total"] and page["limit"] == 3, path


def test_flagged_anomalies_and_brief_versions_and_top_shares(client):
    flagged = client.get("/api/anomalies?flagged=true").get_json()
    others = client.get("/api/anomalies?flagged=false").get_json()
    every = client.get(f"/api/anomalies?limit={MAX_LIMIT}").get_json()
    assert flagged["total"] >= 1
    # The flagged are chosen among the devices with a rejection or a clip: the same rows.
    assert flagged["devices"] == [r for r in every["devices"] if r["flagged"]]
    assert not any(r["flagged"] for r in others["devices"])
    assert flagged["total"] + others["total"] == every["total"]
    brief = client.get("/api/versions?brief=true").get_json()["versions"]
    full = client.get("/api/versions").get_json()["versions"]
    assert len(brief) == len(full) == VERSIONS + 1
    assert "devices" not in brief[-1] and "fairness" not in brief[-1]
    assert brief[-1]["device_count"] == len(full[-1]["devices"]) == DEVICES // 10
    [top] = client.get("/api/fairness?top=2&latest=1").get_json()["fairness"]
    assert len(top["contributions"]) == len(top["weights"]) == 2
    assert top["contributors"] == DEVICES // 10
    shares = sorted(full[-1]["fairness"]["contributions"].values(), reverse=True)
    assert sorted(top["contributions"].values(), reverse=True) == shares[:2]


@pytest.mark.parametrize("query", [
    "limit=abc", "limit=0", f"limit={MAX_LIMIT + 1}", "limit=-1", "limit=%205", "limit=",
    "limit=1.5", "limit=%EF%BC%91", "offset=-1", "offset=x", "limit=99999999999999999999"])
def test_a_malformed_page_is_a_one_line_400_naming_the_parameter(empty_client, query):
    client = empty_client
    name = query.split("=")[0]
    for path in PAGED:
        response = client.get(f"{path}?{query}")
        assert response.status_code == 400, (path, query)
        error = response.get_json()["error"]
        assert error.startswith(f"{name} must be a whole number from "), (path, error)
        assert "\n" not in error and "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize(("path", "name"), [
    ("/api/versions?brief=yes", "brief"), ("/api/anomalies?flagged=1", "flagged"),
    ("/api/fairness?top=many", "top"), ("/api/devices?limit=5&limit=6", "limit"),
    ("/api/devices?page=2", "page")])
def test_other_bad_parameters_are_named(empty_client, path, name):
    client = empty_client
    response = client.get(path)
    assert response.status_code == 400
    assert repr(name) in response.get_json()["error"] or \
        response.get_json()["error"].startswith(name)


def test_the_history_is_parsed_once_per_new_version(tmp_path):
    """The app keeps the parsed model history until a version is made (or rewritten)."""
    path = tmp_path / "agg.sqlite3"
    build_fleet_store(path, 40, VERSIONS)
    app = create_app(path, None, None)
    client, cache = app.test_client(), app.extensions["fedge"].history
    for query in ("/api/overview", "/api/versions?brief=true", "/api/fairness?top=2",
                  "/api/personal", "/metrics", "/api/overview"):
        assert client.get(query).status_code == 200
    assert cache.parses == 1
    store = Store(path)
    try:
        store.add_model(VERSIONS + 1, b"blob", "sha", {"round": VERSIONS + 1, "updates": 0,
                                                        "accuracy": 0.5})
    finally:
        store.close()
    overview = client.get("/api/overview").get_json()
    assert overview["model_version"] == VERSIONS + 1 and overview["accuracy"] == 0.5
    assert client.get("/api/versions?brief=true").get_json()["versions"][-1]["version"] == \
        VERSIONS + 1
    assert cache.parses == 2


def test_flagged_devices_are_the_same_a_few_candidates_at_a_time(client, monkeypatch):
    """The flagged list is read over the candidates (devices with a rejection or a clip)
    in chunks; small chunks give the same rows."""
    whole = client.get("/api/anomalies?flagged=true").get_json()
    monkeypatch.setattr("aggregator.store_rejections._CHUNK", 7)
    assert client.get("/api/anomalies?flagged=true").get_json() == whole
