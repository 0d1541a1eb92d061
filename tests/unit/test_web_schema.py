"""The REST API against its own OpenAPI document: schemathesis, with each token.

Every operation of /api/openapi.json gets generated requests, valid and invalid ones
(derandomized: the same requests each run), sent to the real Flask app over a filled
store with a fake service behind the admin actions. schemathesis' standard checks then
hold the answers to the document: no 5xx, only documented status codes and content
types, bodies matching the response schemas, invalid data refused (4xx), valid data not
refused with a 400, tokens enforced, 405 for undocumented methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest
import schemathesis
from flask import Flask
from schemathesis.checks import not_a_server_error

from aggregator.web import create_app
from aggregator.web.openapi import openapi_document
from tests.unit.test_web_api import ADMIN, READ, FakeActions, fill_store

EXAMPLES = 50  # per operation and phase: every field gets hit, ~10 s on 2 busy cores
SEED = 13
STANDARD_CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
                   "response_schema_conformance", "negative_data_rejection",
                   "positive_data_acceptance", "ignored_auth", "unsupported_method")


class AppUnderTest:
    """A WSGI app filled in by the fixture: pytest needs the schema (to list its cases) at
    import, the app over a filled store exists only once a fixture made the store."""

    def __init__(self) -> None:
        self.app: Flask | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        assert self.app is not None, "the app fixture did not run"
        return self.app(environ, start_response)


UNDER_TEST = AppUnderTest()


def _schema(token: str) -> schemathesis.BaseSchema:
    """The document with schemathesis' standard checks, deterministic, sending `token`."""
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
        "auth": {"openapi": {"bearer": {"bearer": token}}},
    })
    schema = schemathesis.openapi.from_dict(openapi_document(), config=config)
    schema.app = UNDER_TEST
    return schema


read_schema, admin_schema = _schema(READ), _schema(ADMIN)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for every generated case (hypothesis runs many inputs per test)."""
    path = fill_store(tmp_path_factory.mktemp("schema") / "agg.sqlite3").path
    UNDER_TEST.app = create_app(path, READ, ADMIN, FakeActions())
    yield UNDER_TEST.app
    UNDER_TEST.app = None


def test_the_standard_checks_are_on():
    for schema in (read_schema, admin_schema):
        checks = schema.config.checks
        assert all(getattr(checks, name).enabled for name in STANDARD_CHECKS)
        assert schema.config.generation.deterministic
        assert {m.name for m in schema.config.generation.modes} == {"POSITIVE", "NEGATIVE"}


def _call_and_validate(case) -> None:
    """/api/health answers 503 by design while the service is down (the store here has
    no running service); the document says so, and every other check still applies."""
    excluded = [not_a_server_error] if case.path == "/api/health" else []
    case.call_and_validate(excluded_checks=excluded)


@read_schema.parametrize()
def test_the_read_token_gets_what_the_document_says(case, app):
    _call_and_validate(case)


@admin_schema.parametrize()
def test_the_admin_token_gets_what_the_document_says(case, app):
    _call_and_validate(case)


@pytest.mark.parametrize("path", ["/api/overview", "/api/versions", "/api/devices",
                                  "/api/anomalies", "/api/audit", "/api/enrolment"])
def test_an_empty_store_answers_what_the_document_says(tmp_path, path):
    """The generated run reads a filled store; a gateway's first minutes have none."""
    client = create_app(tmp_path / "agg.sqlite3", READ, ADMIN).test_client()
    response = client.get(path, headers={"Authorization": f"Bearer {READ}"})
    assert response.status_code == 200
    read_schema[path]["GET"].validate_response(response)  # raises on a mismatch
