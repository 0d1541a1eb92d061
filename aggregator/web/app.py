"""The gateway's web app: dashboard, REST API and metrics over the aggregator's store."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from aggregator.store import Store
from aggregator.store_db import StoreLocation, is_postgres, unavailable_errors
from aggregator.web.actions import AdminActions
from aggregator.web.api import check_query, register_routes
from aggregator.web.auth import Access, Tokens
from aggregator.web.bodies import MAX_BODY_BYTES
from aggregator.web.context import ApiError, WebContext, close_request_store
from aggregator.web.history_cache import HistoryCache
from aggregator.web.metrics import make_registry

log = logging.getLogger(__name__)
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def create_app(location: StoreLocation, read_token: str | None, admin_token: str | None,
               actions: AdminActions | None = None) -> Flask:
    """A Flask app over the store at `location` (an SQLite file, or a postgresql:// URL).

    read_token None: the read API, the dashboard's data and /metrics are open (a closed
    LAN only). admin_token None: the admin API answers 403. `actions` None: the admin
    endpoints that need the running service answer 501.
    """
    for name, token in (("read_token", read_token), ("admin_token", admin_token)):
        if token is not None and not token.strip():
            raise ValueError(f"{name} is empty: pass None to leave it unset")
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    _check_static(Path(app.static_folder or ""))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    location = location if is_postgres(location) else Path(location)
    history = HistoryCache()
    app.extensions["fedge"] = WebContext(
        location, Tokens(read_token, admin_token), actions,
        make_registry(lambda: Store(location), history), history)
    access = register_routes(app)
    app.before_request(lambda: _authorize(app, access))
    app.before_request(check_query)  # after the token check: no hints before that
    app.after_request(_security_headers)
    app.teardown_appcontext(close_request_store)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(sqlite3.OperationalError, _store_error)
    for error in unavailable_errors(location):  # PostgreSQL's, when the store is there
        app.register_error_handler(error, _store_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _check_static(folder: Path) -> None:
    """Say so at start-up, not as a 404 later, when an install left out the page's files."""
    if not (folder / "index.html").is_file():
        raise RuntimeError(f"the dashboard's files are missing from {folder}: fedge was "
                           "installed without its package data (aggregator/web/static)")


def _authorize(app: Flask, access: dict[str, Access]) -> tuple[Response, int] | None:
    """Refuse before the view runs; unknown paths fall through to 404 (or 405)."""
    if request.endpoint is None:
        return None
    tokens: Tokens = app.extensions["fedge"].tokens
    denial = tokens.check(access.get(request.endpoint, Access.ADMIN),
                          request.headers.get("Authorization"))
    if denial is None:
        return None
    response = jsonify({"error": denial.reason})
    if denial.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="fedge"'
    return response, denial.status


def _security_headers(response: Response) -> Response:
    """The page loads only its own files; API answers are never cached (they hold state)."""
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if request.path.startswith(("/api/", "/metrics")):
        response.headers["Cache-Control"] = "no-store"
    return response


def _api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify({"error": exc.reason}), exc.status


def _store_error(exc: Exception) -> tuple[Response, int]:
    """Locked past the busy timeout, the file is gone, or the PostgreSQL server is
    unreachable: worth a retry, not a traceback."""
    log.warning("dashboard: store unavailable: %s", exc)
    return jsonify({"error": f"the store is unavailable, retry: {exc}"}), 503


def _unexpected(exc: Exception) -> tuple[Response, int]:
    """A bug, not bad input: the traceback goes to the log, the client gets one line."""
    log.error("dashboard: %s %s failed", request.method, request.path, exc_info=exc)
    return jsonify({"error": "internal error; the gateway's log has the details"}), 500


def _http_error(exc: HTTPException) -> Response | HTTPException:
    """JSON errors for API clients; the browser's own error pages elsewhere."""
    if not request.path.startswith(("/api/", "/metrics")):
        return exc
    response = jsonify({"error": exc.description or exc.name})
    response.status_code = exc.code or 500
    for name, value in exc.get_headers():  # Allow: on a 405, for one
        if name.lower() != "content-type":
            response.headers[name] = value
    return response
