"""What one app's views share: the store's path, the tokens, the admin actions, metrics,
the parsed model history.

It lives in the app (`app.extensions["fedge"]`), never in a module global, so two apps
in one process (or in one test run) stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app, g
from prometheus_client import CollectorRegistry

from aggregator.store import Store
from aggregator.store_db import StoreLocation
from aggregator.web.actions import AdminActions
from aggregator.web.auth import Tokens

if TYPE_CHECKING:  # it imports the read model, which raises this module's ApiError
    from aggregator.web.history_cache import HistoryCache


class ApiError(Exception):
    """Answered as {"error": reason} with this HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class WebContext:
    location: StoreLocation  # the store: an SQLite file or a postgresql:// URL
    tokens: Tokens
    actions: AdminActions | None
    registry: CollectorRegistry
    history: HistoryCache  # the parsed model history, shared by requests


def web_context() -> WebContext:
    return current_app.extensions["fedge"]


def request_store() -> Store:
    """One Store per request, opened on first use and closed when the request ends.

    SQLite in WAL mode lets these readers run beside the service's writer without
    blocking it, and a fresh connection per request needs no locking between the web
    server's threads.
    """
    store = g.get("fedge_store")
    if store is None:
        store = g.fedge_store = Store(web_context().location)
    return store


def close_request_store(_exc: BaseException | None = None) -> None:
    store = g.pop("fedge_store", None)
    if store is not None:
        store.close()
