"""Serving the app with waitress in a background thread, beside the aggregator's loop.

waitress is a production WSGI server in pure Python (no compiler on the gateway, any
CPU), with a bounded pool of worker threads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from waitress import create_server
from waitress.trigger import trigger as Trigger
from waitress.wasyncore import close_all

from aggregator.web.bodies import MAX_BODY_BYTES

log = logging.getLogger(__name__)
# waitress reads a whole body before the app sees it (1 GB by default, spooled to disk):
# past this it answers 413 itself and reads no further. Above the app's own limit, so a
# body between the two gets the app's JSON 413.
MAX_REQUEST_BYTES = 2 * MAX_BODY_BYTES


@dataclass
class DashboardServer:
    """A running server: where it listens, and how to stop it."""

    host: str
    port: int
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listening socket and connections, then end the worker threads.

        The sockets belong to the server's own thread, so the closing is handed to it
        through waitress's trigger rather than done from here. Safe to call twice.
        """
        if self._thread.is_alive():
            _trigger_of(self._server).pull_trigger(lambda: close_all(_socket_map(self._server)))
            self._thread.join(timeout_s)
        self._server.task_dispatcher.shutdown(timeout=timeout_s)


def serve_dashboard(app: Any, host: str = "127.0.0.1", port: int = 8080,
                    threads: int = 4) -> DashboardServer:
    """Start serving `app` at host:port (port 0: a free one) and return at once."""
    server = create_server(app, host=host, port=port, threads=threads, ident="fedge",
                           max_request_body_size=MAX_REQUEST_BYTES)
    effective_host, effective_port = _listening(server)
    thread = threading.Thread(target=server.run, name=f"fedge-dashboard-{effective_port}",
                              daemon=True)
    thread.start()
    log.info("dashboard: serving on http://%s:%d/", effective_host, effective_port)
    return DashboardServer(effective_host, effective_port, server, thread)


def _listening(server: Any) -> tuple[str, int]:
    """The first address waitress bound (a host name can resolve to several)."""
    if hasattr(server, "effective_listen"):
        host, port = server.effective_listen[0][:2]
        return str(host), int(port)
    return str(server.effective_host), int(server.effective_port)


def _socket_map(server: Any) -> dict:
    return server.map if hasattr(server, "effective_listen") else server._map


def _trigger_of(server: Any) -> Trigger:
    return next(d for d in _socket_map(server).values() if isinstance(d, Trigger))
