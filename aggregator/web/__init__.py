"""The gateway's web side: dashboard, REST API and Prometheus metrics (docs/gateway.md).

Needs the `aggregator` extra (flask, waitress, prometheus-client). It only reads the
aggregator's store (SQLite or PostgreSQL), except for the admin actions.

    app = create_app(config.store_location, load_token(read_file), load_token(admin_file))
    server = serve_dashboard(app, "0.0.0.0", 8080)
    ...
    server.stop()
"""

from aggregator.web.actions import AdminActions
from aggregator.web.app import create_app
from aggregator.web.auth import load_token
from aggregator.web.server import DashboardServer, serve_dashboard

__all__ = ["AdminActions", "DashboardServer", "create_app", "load_token", "serve_dashboard"]
