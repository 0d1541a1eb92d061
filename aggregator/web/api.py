"""The views: the dashboard page, the JSON API under /api/, and /metrics.

`ROUTES` (at the end) says what each endpoint needs (no token, read, admin); the app
checks it before any view runs, so a view never has to remember to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from aggregator import tier_view
from aggregator.lifecycle import Command
from aggregator.model_lines import lines_view, version_lines
from aggregator.status import fleet_status, service_health
from aggregator.web import bodies, drift_view, metrics, paging, readmodel
from aggregator.web.actions import AdminActions
from aggregator.web.auth import Access
from aggregator.web.context import ApiError, request_store, web_context
from aggregator.web.device_rows import device_page
from aggregator.web.openapi import FAIRNESS_DEFAULT, FAIRNESS_MAX, MAX_VERSION, openapi_document
from edge_client.shared.identity import parse_public_key
from edge_client.shared.protocol.topics import check_name

_VERSION = re.compile(r"[0-9]{1,19}")
_APPLIED_LATER = "requested; the service applies it on its own loop"


# ---------------------------------------------------------------- page and metrics
def index() -> Response:
    return current_app.send_static_file("index.html")


def metrics_text() -> Response:
    return Response(metrics.render(web_context().registry), content_type=CONTENT_TYPE_LATEST)


def openapi() -> Response:
    return jsonify(openapi_document())


# ---------------------------------------------------------------- reads
def overview() -> Response:
    store = request_store()
    return jsonify(readmodel.overview(store, web_context().history.records(store)))


def versions() -> Response:
    brief = paging.flag("brief") or False
    store = request_store()
    rows = web_context().history.derived(store, ("versions", brief),
                                         lambda h: readmodel.version_rows(h, brief))
    return jsonify({"versions": readmodel.versions_with_stages(store, brief, rows)})


def stages() -> Response:
    return jsonify(readmodel.stages(request_store()))


def devices() -> Response:
    return jsonify(device_page(request_store(), paging.requested_page()))


def site_list() -> Response:
    """An upper tier's sites (docs/tiers.md); empty on a gateway of devices."""
    return jsonify({"sites": readmodel.finite(tier_view.sites(request_store()))})


def upper_tier() -> Response:
    """A site's upper tier (docs/tiers.md); null on a gateway that is no site."""
    return jsonify({"upper": tier_view.upper(request_store())})


def anomalies() -> Response:
    page, flagged = paging.requested_page(), paging.flag("flagged")
    return jsonify(readmodel.anomalies(request_store(), page, flagged))


def audit() -> Response:
    text = request.args.get("version")
    version = None if text is None else parse_version(text)
    page = paging.requested_page()
    rows, total = request_store().audit_page(version, page.limit, page.offset)
    return jsonify({"audit": readmodel.finite(rows), **page.meta(total)})


def fairness() -> Response:
    text = request.args.get("latest", str(FAIRNESS_DEFAULT))
    digits = len(text) <= 6 and text.isascii() and text.isdigit()
    if not digits or not 1 <= int(text) <= FAIRNESS_MAX:
        raise ApiError(400, f"latest must be a whole number from 1 to {FAIRNESS_MAX}, "
                            f"not {text[:20]!r}")
    top = paging.whole_number("top", 0, paging.MAX_LIMIT, -1)
    latest, shares = int(text), None if top < 0 else top
    rows = web_context().history.derived(request_store(), ("fairness", latest, shares),
                                         lambda h: readmodel.fairness(h, latest, shares))
    return jsonify({"fairness": rows})


def personal() -> Response:
    page = paging.requested_page()
    view = web_context().history.derived(request_store(), "personal", readmodel.personal)
    return jsonify(readmodel.paged_personal(view, page))


def drift() -> Response:
    page = paging.requested_page()
    return jsonify(readmodel.finite(drift_view.drift(request_store(), page)))


def lines() -> Response:
    page, store = paging.requested_page(), request_store()
    known = web_context().history.derived(store, "lines", lambda _: version_lines(store))
    return jsonify(lines_view(store, page.limit, page.offset, known))


def status() -> Response:
    return jsonify(readmodel.finite(fleet_status(request_store()).to_json()))


def health() -> tuple[Response, int]:
    found = service_health(request_store())
    return jsonify(readmodel.finite(found.to_json())), 200 if found.ok else 503


def enrolment() -> Response:
    page = paging.requested_page()
    store = request_store()
    return jsonify({"enrolment": store.enrolment(page.limit, page.offset),
                    **page.meta(store.count_enrolled())})


def model(version: str) -> Response:
    found = readmodel.model_blob(request_store(), parse_version(version))
    if found is None:
        raise ApiError(404, f"no model version {version}")
    return Response(found.blob, mimetype="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="fedge-model-v{found.version}.msgpack"',
        "ETag": f'"{found.sha256}"', "X-Fedge-Sha256": found.sha256})


def parse_version(text: str) -> int:
    """Digits only: int() would also take ' 7', '+7', '7_0' and other scripts' digits."""
    if not _VERSION.fullmatch(text) or int(text) > MAX_VERSION:
        raise ApiError(400, f"version must be a whole number from 0 to {MAX_VERSION}, "
                            f"not {text[:20]!r}")
    return int(text)


# ---------------------------------------------------------------- admin
def enroll() -> Response:
    body = bodies.ENROLL.read()
    device, key = body["device"], body["key"]
    _valid(check_name, "device", device)
    _valid(parse_public_key, key)
    request_store().enroll(device, key.strip())
    return jsonify({"enrolled": device})


def revoke() -> Response:
    device = bodies.REVOKE.read()["device"]
    _valid(check_name, "device", device)
    if not request_store().revoke(device):
        raise ApiError(404, f"device {device!r} was never enrolled")
    return jsonify({"revoked": device})


def training() -> tuple[Response, int]:
    running = bodies.TRAINING.read()["running"]
    _service_accepts(_actions("training").set_training, running)
    return jsonify({"training": "running" if running else "paused",
                    "note": _APPLIED_LATER}), 202


def strategy() -> tuple[Response, int]:
    name = bodies.STRATEGY.read()["name"]
    _service_accepts(_actions("strategy").set_strategy, name)
    return jsonify({"strategy": name, "note": _APPLIED_LATER}), 202


def stage() -> tuple[Response, int]:
    """An operator's promote, rollback or pin: queued in the store, applied by the running
    service on its loop and recorded in the audit trail (docs/lifecycle.md)."""
    body = bodies.STAGE.read()
    command, version = Command(body["command"]), body["version"]
    store = request_store()
    if store.stage_of(version) is None:
        raise ApiError(404, f"no model version {version}")
    request_id = store.request_stage(command, version, f"api:{request.remote_addr or '?'}")
    return jsonify({"requested": command.value, "version": version, "request": request_id,
                    "note": _APPLIED_LATER}), 202


def _actions(what: str) -> AdminActions:
    actions = web_context().actions
    if actions is None:
        raise ApiError(501, f"changing {what} needs the running aggregator service, and this "
                            "dashboard was started without it")
    return actions


def _valid(check: Any, *args: Any) -> None:
    """Run a check that raises ValueError on bad input; the message becomes a 400."""
    try:
        check(*args)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def _service_accepts(action: Any, value: Any) -> None:
    """A well-formed request the service refuses as it runs now (a strategy that secure
    aggregation or DP cannot use): 409, since the same request may suit another setup."""
    try:
        action(value)
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None


def check_query() -> None:
    """Query parameters an endpoint does not take, or one given twice: 400, never ignored,
    so a typo'd filter is not silently a different question."""
    route = _BY_ENDPOINT.get(request.endpoint or "")
    if route is None or not route.rule.startswith(("/api/", "/metrics")):
        return  # the page takes ?token= (dashboard.js)
    for name in request.args:
        if name not in route.query:
            takes = ", ".join(route.query) or "none"
            raise ApiError(400, f"unknown query parameter {name[:40]!r}; this endpoint takes "
                                f"{takes}")
        if len(request.args.getlist(name)) > 1:
            raise ApiError(400, f"query parameter {name!r} given more than once")


@dataclass(frozen=True)
class Route:
    rule: str
    view: Callable[..., Any]  # its name is the endpoint's name
    access: Access
    methods: tuple[str, ...] = ("GET",)
    query: tuple[str, ...] = ()  # the query parameters it takes; others are a 400


_PAGE = ("limit", "offset")  # aggregator/web/paging.py
ROUTES = (
    Route("/", index, Access.PUBLIC),
    Route("/metrics", metrics_text, Access.READ),
    Route("/api/openapi.json", openapi, Access.PUBLIC),
    Route("/api/health", health, Access.PUBLIC),
    Route("/api/status", status, Access.READ),
    Route("/api/overview", overview, Access.READ),
    Route("/api/versions", versions, Access.READ, query=("brief",)),
    Route("/api/stages", stages, Access.READ),
    Route("/api/devices", devices, Access.READ, query=_PAGE),
    Route("/api/anomalies", anomalies, Access.READ, query=(*_PAGE, "flagged")),
    Route("/api/sites", site_list, Access.READ),
    Route("/api/upper", upper_tier, Access.READ),
    Route("/api/fairness", fairness, Access.READ, query=("latest", "top")),
    Route("/api/personal", personal, Access.READ, query=_PAGE),
    Route("/api/audit", audit, Access.READ, query=("version", *_PAGE)),
    Route("/api/drift", drift, Access.READ, query=_PAGE),
    Route("/api/lines", lines, Access.READ, query=_PAGE),
    Route("/api/enrolment", enrolment, Access.READ, query=_PAGE),
    Route("/api/models/<version>", model, Access.READ),
    Route("/api/admin/enroll", enroll, Access.ADMIN, ("POST",)),
    Route("/api/admin/revoke", revoke, Access.ADMIN, ("POST",)),
    Route("/api/admin/training", training, Access.ADMIN, ("POST",)),
    Route("/api/admin/strategy", strategy, Access.ADMIN, ("POST",)),
    Route("/api/admin/stage", stage, Access.ADMIN, ("POST",)),
)
_BY_ENDPOINT = {r.view.__name__: r for r in ROUTES}


def register_routes(app: Flask) -> dict[str, Access]:
    """Add every route to the app; returns what each endpoint needs."""
    for route in ROUTES:
        app.add_url_rule(route.rule, route.view.__name__, route.view, methods=route.methods)
    return {r.view.__name__: r.access for r in ROUTES} | {"static": Access.PUBLIC}
