"""The admin actions that need the running service, not just its store."""

from __future__ import annotations

from typing import Protocol


class AdminActions(Protocol):
    """What the service offers the admin API.

    The web server calls these from its own worker threads, so an implementation should
    hand the request to the service's loop (its event queue) rather than change state
    directly, and return at once. Raise ValueError for a request it refuses as it runs now
    (a strategy secure aggregation cannot use, say): the API answers 409 with the message.
    Malformed requests (an unknown strategy name) never get here: the API answers 400.
    """

    def set_training(self, running: bool) -> None:
        """Pause (False) or resume (True) issuing tasks and making versions."""
        ...

    def set_strategy(self, name: str) -> None:
        """Aggregate with the named strategy from the next version on."""
        ...
