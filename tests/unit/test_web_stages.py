"""Model stages in the web API: each version's stage, /api/stages, and the admin command
that queues a promote, rollback or pin for the service (docs/lifecycle.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.lifecycle import Command
from aggregator.store import Store
from aggregator.web import create_app
from aggregator.web.openapi import openapi_document
from tests.unit.test_web_api import ADMIN, READ, STAGES, fill_store, get, post


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fill_store(tmp_path_factory.mktemp("stages") / "agg.sqlite3").path


@pytest.fixture
def path(stored: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "agg.sqlite3"
    shutil.copyfile(stored, copy)
    return copy


@pytest.fixture
def web(path: Path):
    return create_app(path, READ, ADMIN, None).test_client()


def test_every_version_shows_its_stage(web):
    rows = get(web, "/api/versions").get_json()["versions"]
    assert {r["version"]: r["stage"] for r in rows} == {
        v: STAGES.get(v, "retired") for v in range(11)}


def test_api_stages_lists_stages_and_the_audit_trail(web):
    body = get(web, "/api/stages").get_json()
    assert {s["version"]: s["stage"] for s in body["stages"]}[9] == "rolled_back"
    assert {a["actor"] for a in body["audit"]} == {"migration", "rule"}
    assert body["waiting"] == [] and body["pinned"] is None


def test_an_admin_rollback_is_queued_for_the_service_with_who_asked(web, path):
    response = post(web, "/api/admin/stage", {"command": "rollback", "version": 7})
    assert response.status_code == 202
    assert response.get_json()["requested"] == "rollback"
    store = Store(path)
    [request] = store.waiting_stage_requests()
    assert (request.command, request.version) == (Command.ROLLBACK, 7)
    assert request.actor.startswith("api:")
    store.close()


def test_stage_commands_are_checked_and_need_the_admin_token(web):
    assert post(web, "/api/admin/stage", {"command": "rollback", "version": 7},
                token=READ).status_code == 403
    assert post(web, "/api/admin/stage", {"command": "delete", "version": 7}
                ).status_code == 400
    assert post(web, "/api/admin/stage", {"command": "pin", "version": "7"}
                ).status_code == 400
    assert post(web, "/api/admin/stage", {"command": "pin", "version": -1}
                ).status_code == 400
    missing = post(web, "/api/admin/stage", {"command": "promote", "version": 99})
    assert missing.status_code == 404


def test_the_stage_body_is_in_the_openapi_document():
    post_op = openapi_document()["paths"]["/api/admin/stage"]["post"]
    schema = post_op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["properties"]["version"]["type"] == "integer"
    assert schema["properties"]["command"]["enum"] == ["promote", "rollback", "pin"]


def test_metrics_say_the_production_version_and_versions_by_stage(web):
    response = get(web, "/metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.get_data(as_text=True))
               for s in family.samples}
    assert samples[("fedge_production_version", ())] == 8
    assert samples[("fedge_versions_by_stage", (("stage", "retired"),))] == 8
    assert samples[("fedge_versions_by_stage", (("stage", "canary"),))] == 1
