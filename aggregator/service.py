"""The aggregator service: the MQTT shell around the sans-IO core (aggregator/core/).

One thread runs `Aggregator.run`; the MQTT link only queues events for it. The shell
stamps each event with the time, hands it to the core and does what the core answers
(publish, subscribe, clear a retained message, tell its owner of a version). Messages are
handled in batches, each one SQLite transaction (group commit, aggregator/ingest_batch.py);
the batch's acks are published only after its commit returns, so an acked update survives
a crash, and a restart resumes the open round or buffer from the store. With paho 2.x a
message is acknowledged to the broker only once the loop takes it (manual acks), so a
burst waits at the broker. Other threads read the snapshot the loop publishes after every
change (aggregator/service_readers.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from aggregator.broker_limits import LimitHint, say_at_start
from aggregator.config import AggregatorConfig
from aggregator.core import (
    STOPPED_NOTE,
    Action,
    AdoptModel,
    AggregatorCore,
    ClearRetained,
    Instant,
    Publish,
    SetStrategy,
    SetTraining,
    SiteAggregate,
    Subscribe,
    Tick,
    UpperAsks,
    UpperFinished,
    VersionMade,
    VersionReport,
)
from aggregator.core.versions import Evaluate
from aggregator.inbound import core_event_of
from aggregator.ingest_batch import BatchBounds
from aggregator.ingest_workers import IngestWorkers, WorkerFault
from aggregator.limits import service_inbox
from aggregator.service_readers import ServiceReaders
from aggregator.store import Store
from aggregator.store_check import refuse_if_damaged
from aggregator.store_db import StoreUnreachable
from aggregator.store_group import GroupLost
from aggregator.strategy import Strategy
from edge_client.shared.identity import load_or_create_identity
from edge_client.shared.protocol import RemoteProtocolError, Topics, Weights
from edge_client.shared.protocol.signing import seal
from edge_client.shared.transport import MqttLink

log = logging.getLogger(__name__)
__all__ = ["STOPPED_NOTE", "Aggregator", "Evaluate", "SetStrategy", "SetTraining",
           "VersionReport"]


def now() -> Instant:
    """The shell's clock; the core is only ever told the time."""
    return Instant(wall=time.time(), mono=time.monotonic())


class Aggregator(ServiceReaders):
    def __init__(self, config: AggregatorConfig, initial_weights: Weights | None = None,
                 arch: dict | None = None, evaluate: Evaluate | None = None,
                 strategy: Strategy | None = None,
                 on_version: Callable[[VersionReport], None] | None = None) -> None:
        self.config = config
        # a site's uplink (fedge/tiers/) takes its aggregates; set before run()
        self.on_site_aggregate: Callable[[SiteAggregate], None] | None = None
        self.topics = Topics(config.federation)
        # Refuse a damaged store before opening it (aggregator/store_check.py): never
        # start over silently, never serve a model that fails its hash. SQLite only.
        if not config.db_url:
            refuse_if_damaged(config.db_path, config.downlink.keep_deltas)
        self.store = Store(config.store_location)
        if config.db_url:
            log.info("aggregator: store in PostgreSQL (%s); the damage check and the seal "
                     "are SQLite-only, skipped", config.store_name)
        self.store.keep_sealed()
        self.store.keep_rejections(config.limits.rejections_per_device,
                                   config.limits.rejections_total)
        self.on_version = on_version
        self.events = service_inbox(config)  # bounded and fair per device (docs/abuse.md)
        self.link = MqttLink(f"fedge-{config.federation}-aggregator", config.host,
                             config.port, self.events, keepalive_s=config.keepalive_s,
                             tls=config.broker_auth.tls(),
                             credentials=config.broker_auth.credentials(),
                             max_unconfirmed=config.limits.unconfirmed_publishes,
                             manual_ack=True)
        self.batch = BatchBounds(config.ingest)
        self.workers: IngestWorkers | None = None  # [ingest] workers > 1: started by run()
        self._stop = threading.Event()
        self.identity = (load_or_create_identity(config.security.key_file)
                         if config.security.enabled else None)
        self.core = AggregatorCore(config, self.store, now(), self._signed, initial_weights,
                                   arch, evaluate, strategy)
        # Name the broker's open-file limit at start and while it cannot connect.
        say_at_start(config.host, config.port, self._known_devices())
        self.core.schedule.broker_hint = LimitHint(config.host, config.port,
                                                   self._known_devices)
        self._snapshot = self.core.state.snapshot()
        self._shown = self.core.state.key()

    def _known_devices(self) -> int:
        return len(self.store.devices())

    def run(self, stop: threading.Event | None = None, exit_when_done: bool = True) -> None:
        """Serve until `stop` is set, or until `rounds` versions exist with `exit_when_done`.

        A gateway keeps serving after its last round (`fedge aggregator serve` does, unless
        --exit-when-done): late updates still get their acks, statuses still come in, and
        the dashboard keeps showing who is online.
        """
        if stop is not None:
            self._stop = stop
        try:
            if self.config.ingest.workers > 1:  # before our link: they take the updates
                self.workers = IngestWorkers(self.config, self.core.state.weights,
                                             self.events.put)
                self.workers.start(stop=self._stop)
            self.link.start()
            while not self._stop.is_set() and not (
                    exit_when_done and self.core.state.done_published):
                try:
                    event = self.events.get(timeout=0.05)
                except queue.Empty:
                    event = None
                if event is not None:
                    self._serve_batch(event)
                self._perform(self.core.handle(Tick(now(), self.link.connected)))
                self._refresh()
                if self.workers is not None:
                    self.workers.check()
        finally:
            self._close()

    def _close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        try:
            self.core.write_soft_state()
        except Exception as exc:  # the store is going away: statuses are soft state
            log.warning("aggregator: could not write the latest device statuses: %s", exc)
        self.link.stop()
        self.store.close()

    def stop(self) -> None:
        self._stop.set()

    # The dashboard's admin API calls these from its own threads: they only queue.
    def set_training(self, running: bool) -> None:
        """Pause (no new tasks, no new versions; updates are still stored) or resume."""
        self.events.put(SetTraining(bool(running)))

    def set_strategy(self, name: str) -> None:
        """Aggregate with `name` from the next version on; ValueError if unknown or if
        this kind of round cannot use it (refused here, in the caller's thread)."""
        self.core.strategy_named(name)
        self.events.put(SetStrategy(name))

    def adopt(self, weights: Weights, upper_version: int) -> None:
        """A site: the upper tier's model becomes the next version (docs/tiers.md)."""
        self.events.put(AdoptModel(weights, upper_version, now()))

    def upper_asks(self, upper_version: int) -> None:
        """A site: the upper tier wants an aggregate from its model `upper_version`."""
        self.events.put(UpperAsks(upper_version, now()))

    def upper_finished(self, reason: str, weights: Weights, upper_version: int) -> None:
        """A site: the upper tier is done, at this model; so is the site."""
        self.events.put(UpperFinished(reason, weights, upper_version, now()))

    def _serve_batch(self, first: object) -> None:
        """Handle `first` and whatever else has arrived (within [ingest] bounds) in one
        transaction, then do what the core answered: acks only after the commit.

        A failed commit (GroupLost: disk full, I/O error) stops the service: none of the
        batch's acks go out, devices resend, and a restart resumes from the store."""
        actions: list[Action] = []
        self.batch.start()
        event: object = first
        try:
            with self.core.batch():
                while True:
                    self.link.ack(event)  # taken in: the broker may send the next
                    self.batch.took()
                    actions += self._handle_one(event)
                    if self.batch.full() or self.core.round_due():
                        break  # a round due: its tick must come before the next update
                    try:
                        event = self.events.get_nowait()
                    except queue.Empty:
                        break
        except GroupLost as exc:
            log.error("aggregator: %s; stopping without acknowledging that batch's %d "
                      "message(s): devices resend them, and a restart resumes from the store",
                      exc, self.batch.taken)
            raise
        self._perform(actions)
        self._refresh()

    def _handle_one(self, event: object) -> list[Action]:
        """The boundary of one inbound event: whatever one bad message raises is logged
        and counted ("bad_messages"), and the loop goes on, so no single message (a
        retained one at every start included) can stop the service."""
        topic = getattr(event, "topic", type(event).__name__)
        if isinstance(event, WorkerFault):  # the worker logged it
            self._count_bad()
            return []
        try:
            core_event = core_event_of(event, self.topics, now)
            return [] if core_event is None else self.core.handle(core_event)
        except RemoteProtocolError as exc:
            log.warning("aggregator: dropped a bad message on %s: %s", topic, exc.reason)
        except StoreUnreachable:
            raise  # the database server went away: not this message's fault; stop
        except Exception as exc:  # our bug, not the sender's: keep serving the others
            log.error("aggregator: handling a message on %s failed: %s", topic, exc,
                      exc_info=True)
        self._count_bad()
        return self.core.drain()  # what was decided before the failure

    def _count_bad(self) -> None:
        try:
            self.store.count("bad_messages")
        except Exception as exc:  # logged, not raised: the next message may still be served
            log.error("aggregator: cannot count a bad message: %s", exc)

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.link.publish(action.topic, action.payload, retain=action.retain)
            elif isinstance(action, ClearRetained):
                if self.link.publish(action.topic, b"", retain=True):
                    log.info("aggregator: cleared the retained message on %s", action.topic)
            elif isinstance(action, Subscribe):
                if self.workers is None or action.topic != self.topics.all_updates:
                    self.link.subscribe(action.topic)  # with workers, updates go to them
            elif isinstance(action, SiteAggregate):
                if self.on_site_aggregate is not None:
                    self.on_site_aggregate(action)
            elif isinstance(action, VersionMade):
                self._snapshot = action.snapshot  # the owner may read it in the callback
                if self.on_version is not None:
                    self.on_version(action.report)

    def _refresh(self) -> None:
        """Publish a new snapshot when what it shows has changed."""
        key = self.core.state.key()
        if key != self._shown:
            self._snapshot, self._shown = self.core.state.snapshot(), key

    def _signed(self, message: bytes) -> bytes:
        """What devices that pin our key accept: the message sealed with our signature."""
        return message if self.identity is None else seal(message, self.identity)
