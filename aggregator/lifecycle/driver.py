"""How the core drives the lifecycle: one object to tick, to hand canary messages to,
and to ask what to publish on (re)connect (aggregator/core/core.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, Subscribe
from aggregator.core.events import Instant
from aggregator.core.state import CoreState
from aggregator.core.versions import VersionMaker
from aggregator.lifecycle.operator import POLL_S, apply_waiting
from aggregator.lifecycle.rollout import Lifecycle
from aggregator.narrator import Narrator
from aggregator.presence import Presence
from aggregator.store import Store
from edge_client.shared.protocol import RemoteProtocolError, Topics

if TYPE_CHECKING:
    from aggregator.core.core import AggregatorCore

log = logging.getLogger("aggregator.service")


class LifecycleDriver:
    def __init__(self, config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes], narrator: Narrator) -> None:
        self.config, self.topics, self.store = config, topics, store
        self.life = Lifecycle(config, store, topics, sign, narrator)
        self._state: CoreState | None = None
        self._commands_at = -POLL_S

    @classmethod
    def for_core(cls, core: AggregatorCore, sign: Callable[[bytes], bytes]) -> LifecycleDriver:
        driver = cls(core.config, core.store, core.topics, sign, core.narrator)
        driver.attach(core.state, core.versions, core.presence)
        core.schedule.lifecycle = driver
        return driver

    def holds(self) -> bool:
        return self.life.holds()

    def attach(self, state: CoreState, versions: VersionMaker, presence: Presence) -> None:
        """Wire it to the core's parts: new versions get their stage; a rollback makes
        a copy through the version maker; canaries are drawn from available devices."""
        self._state = state
        self.life.make_copy = lambda source, at: versions.copy(state, source, at)
        self.life.candidates = presence.candidates
        versions.after_made = self.life.version_made

    def tick(self, at: Instant) -> list[Action]:
        out: list[Action] = []
        if at.mono - self._commands_at >= POLL_S and self._state is not None:
            self._commands_at = at.mono
            out += apply_waiting(self.life, self._state.version, at)
        return out + self.life.tick(at)

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            self.life.on_report(self.topics.device_of(topic), payload)
        except (ValueError, RemoteProtocolError) as exc:
            log.warning("aggregator: ignored a canary report on %s: %s", topic, exc)
            self.store.count("canary_reports_refused")

    def on_link_up(self) -> list[Action]:
        out: list[Action] = []
        if self.config.rollout.enabled:
            out.append(Subscribe(self.topics.all_canaries))
        return out + self.life.rollout_message()
