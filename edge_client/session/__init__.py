"""The device's protocol logic, sans-IO: `DeviceSession` takes events (events.py) with
the time and returns actions (actions.py); edge_client.client.EdgeClient is its shell."""

from edge_client.session.events import Instant
from edge_client.session.session import DeviceSession
from edge_client.session.stats import ClientStats

__all__ = ["ClientStats", "DeviceSession", "Instant"]
