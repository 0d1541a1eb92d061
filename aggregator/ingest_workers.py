"""Parallel ingest: `[ingest] workers = N` processes verify and decode updates for the one
writer, the service loop, which stores, folds, group-commits and acks as before.

Each worker subscribes to every update topic through one MQTT shared subscription
(`$share/fedge-<federation>-ingest/fedge/<federation>/update/+`): the broker hands each
message to one member of the group. A transfer's chunks must meet in one assembler, so
each device has an owner worker (aggregator/ingest_worker.py `owner_of`); a chunk that
arrives at another worker is forwarded to the owner over its inbox queue. The owner
sends the verified update (or the refusal) to the writer over a bounded results queue;
the writer's thread puts it into the service's inbox like a received message. When the
writer lags, the results queue fills, workers stop taking messages, and with manual
acks the burst waits at the broker, as it does with one process.

Workers ignore SIGINT and SIGTERM (Ctrl-C and systemd signal the whole group): the
service stops them when it stops, and each exits within a second if the service dies.
A worker that exits otherwise is started again, with a WARNING. Docs:
docs/gateway.md#parallel-ingest.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.core.events import Instant
from aggregator.ingest_worker import WorkerIngest, WorkerResult, owner_of
from aggregator.limits import service_inbox
from aggregator.store_db import StoreLocation, connect
from aggregator.store_devices import enrolled_key
from edge_client.shared.inbox import Inbox
from edge_client.shared.protocol import Topics, Weights
from edge_client.shared.transport import Connected, Inbound, MqttLink

log = logging.getLogger("aggregator.service")
RESULTS_WAITING = 64  # decoded updates queued for the writer; then workers wait
READY_WAIT_S = 10.0  # at start, how long the service waits for its workers' subscriptions
RESTART_EVERY_S = 1.0  # a worker that keeps dying is started again at most this often
STOP_WAIT_S = 3.0


@dataclass(frozen=True)
class WorkerFault:
    """A worker failed on a message (our bug, not the sender's): the writer counts it
    as a bad message, as it counts one that fails in its own loop."""

    topic: str
    error: str


@dataclass(frozen=True)
class WorkerReady:
    """A worker connected and subscribed: the broker now has somewhere to send updates."""

    index: int


@dataclass(frozen=True)
class WorkerSpec:
    config: AggregatorConfig
    layout: dict[str, tuple[tuple[int, ...], str]]  # the model's names -> shape, dtype
    index: int
    workers: int
    log_level: int
    log_formatter: logging.Formatter | None  # the service's (text or JSON), if any


def shared_filter(topics: Topics) -> str:
    """The workers' one shared subscription to every update topic."""
    return f"$share/fedge-{topics.federation}-ingest/{topics.all_updates}"


def layout_of(weights: Weights) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(w.shape), w.dtype.str) for name, w in weights.items()}


def weights_of(layout: dict[str, tuple[tuple[int, ...], str]]) -> Weights:
    return {name: np.zeros(shape, dtype=np.dtype(dtype)) for name, (shape, dtype) in
            layout.items()}


class EnrolledKeys:
    """Device keys from the store, through a connection of this process (read-only for
    SQLite; its own PostgreSQL session): a key is read when a transfer completes, so an
    enrolment or revocation applies at once."""

    def __init__(self, location: StoreLocation) -> None:
        self.db = connect(location, read_only=True)

    def key_of(self, device: str) -> str | None:
        return enrolled_key(self.db, device)

    def close(self) -> None:
        self.db.close()


class IngestWorkers:
    """The writer's side: starts the workers, restarts one that dies, stops them all,
    and hands their results to `deliver` (the service inbox's `put`) from a thread."""

    def __init__(self, config: AggregatorConfig, weights: Weights,
                 deliver: Callable[[object], object]) -> None:
        self.config = config
        self.count = config.ingest.workers
        self.deliver = deliver
        self._ctx = multiprocessing.get_context("spawn")
        self.inboxes = [self._ctx.Queue() for _ in range(self.count)]
        self.results: Any = self._ctx.Queue(maxsize=RESULTS_WAITING)
        self.stop_event = self._ctx.Event()
        self._layout = layout_of(weights)
        self._procs: list[SpawnProcess | None] = [None] * self.count
        self._started = [0.0] * self.count
        self.restarts = 0
        self._ready: set[int] = set()
        self._all_ready = threading.Event()
        self._closing = threading.Event()
        self._pump = threading.Thread(target=self._pump_results, name="fedge-ingest-results",
                                      daemon=True)

    def start(self, wait_s: float = READY_WAIT_S,
              stop: threading.Event | None = None) -> None:
        """Start the workers and wait (up to `wait_s`, or until `stop`) until each has
        subscribed, so that the first task goes out only when its updates have somewhere
        to go."""
        for index in range(self.count):
            self._spawn(index)
        self._pump.start()
        topic = shared_filter(Topics(self.config.federation))
        deadline = time.monotonic() + wait_s
        while not self._all_ready.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                break
        if stop is not None and stop.is_set() and not self._all_ready.is_set():
            return  # stopping before they were ready: nothing to say
        if self._all_ready.is_set():
            log.info("aggregator: %d ingest workers verify and decode updates (shared "
                     "subscription %s)", self.count, topic)
        else:
            log.warning("aggregator: %d of %d ingest workers subscribed to %s after %.0f s; "
                        "serving anyway (until they connect, devices resend)",
                        len(self._ready), self.count, topic, wait_s)

    def check(self) -> None:
        """Start again a worker that exited (the loop calls this often; it is cheap)."""
        if self._closing.is_set():
            return
        for index, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                continue
            if time.monotonic() - self._started[index] < RESTART_EVERY_S:
                continue
            if proc is not None:
                log.warning("aggregator: ingest worker %d stopped (exit code %s); starting "
                            "it again", index, proc.exitcode)
                proc.close()
                self._procs[index] = None
            self.restarts += 1
            try:
                self._spawn(index)
            except OSError as exc:  # out of processes or memory: try again later
                self._started[index] = time.monotonic()
                log.error("aggregator: cannot start ingest worker %d: %s", index, exc)

    def stop(self) -> None:
        self._closing.set()
        self.stop_event.set()
        for proc in self._procs:
            if proc is None:
                continue
            proc.join(STOP_WAIT_S)
            if proc.is_alive():
                log.warning("aggregator: ingest worker pid %s did not stop; killing it",
                            proc.pid)
                proc.kill()
                proc.join(1.0)
        if self._pump.is_alive():
            self._pump.join(1.0)
        for q in [*self.inboxes, self.results]:
            q.cancel_join_thread()
            q.close()

    def _spawn(self, index: int) -> None:
        root = logging.getLogger()
        spec = WorkerSpec(self.config, self._layout, index, self.count,
                          root.getEffectiveLevel(), _formatter_of(root))
        proc = self._ctx.Process(target=serve_worker, name=f"fedge-ingest-{index}",
                                 args=(spec, self.inboxes, self.results, self.stop_event),
                                 daemon=True)
        proc.start()
        self._procs[index] = proc
        self._started[index] = time.monotonic()

    def _pump_results(self) -> None:
        while not self._closing.is_set():
            try:
                result = self.results.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):  # the queue closed under us: stopping
                return
            if isinstance(result, WorkerReady):
                self._ready.add(result.index)
                if len(self._ready) == self.count:
                    self._all_ready.set()
            else:
                self.deliver(result)


def serve_worker(spec: WorkerSpec, inboxes: list[Any], results: Any, stop: Any) -> None:
    """A worker process: take update chunks from the shared subscription (and forwarded
    ones from its inbox), send each finished transfer's result to the writer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handler = logging.StreamHandler()  # stderr, as the service logs
    if spec.log_formatter is not None:
        handler.setFormatter(spec.log_formatter)
    logging.basicConfig(level=spec.log_level, handlers=[handler])
    for q in [*inboxes, results]:
        q.cancel_join_thread()  # never hang at exit on what the writer did not take
    WorkerLoop(spec, inboxes, results, stop).run()


class WorkerLoop:
    """One worker's MQTT link and loop around its sans-IO WorkerIngest."""

    def __init__(self, spec: WorkerSpec, inboxes: list[Any], results: Any,
                 stop: Any) -> None:
        config = spec.config
        self.spec = spec
        self.topics = Topics(config.federation)
        self.inboxes, self.results, self.stop = inboxes, results, stop
        self.keys = EnrolledKeys(config.store_location) if config.security.enabled else None
        self.ingest = WorkerIngest(config, weights_of(spec.layout),
                                   self.keys.key_of if self.keys else _no_key)
        self.local: Inbox = service_inbox(config)
        self.link = MqttLink(f"fedge-{config.federation}-ingest-{spec.index}", config.host,
                             config.port, self.local, keepalive_s=config.keepalive_s,
                             tls=config.broker_auth.tls(),
                             credentials=config.broker_auth.credentials(),
                             max_unconfirmed=config.limits.unconfirmed_publishes,
                             manual_ack=True)
        self.link.subscribe(shared_filter(self.topics))

    def run(self) -> None:
        threading.Thread(target=self._take_forwarded, daemon=True).start()
        parent = multiprocessing.parent_process()
        self.link.start()
        next_check = 0.0
        try:
            while not self.stop.is_set():
                try:
                    event = self.local.get(timeout=0.1)
                except queue.Empty:
                    event = None
                if isinstance(event, Inbound):
                    self._serve(event)
                elif isinstance(event, Connected):
                    self._send(WorkerReady(self.spec.index))
                mono = time.monotonic()
                if mono >= next_check:
                    next_check = mono + 0.5
                    self.ingest.expire(mono)
                    if parent is not None and not parent.is_alive():
                        break  # the service died (kill -9): so do we
        finally:
            self.link.stop(flush_timeout_s=1.0)
            if self.keys is not None:
                self.keys.close()

    def _serve(self, event: Inbound) -> None:
        self.link.ack(event)  # taken in: the broker may send the next
        if not event.payload:
            return
        if event.retained:  # devices never retain updates: read it only once
            self.link.publish(event.topic, b"", retain=True)
        owner = self.spec.index  # a topic without a valid device id: ours to ignore
        with contextlib.suppress(ValueError):
            owner = owner_of(self.topics.device_of(event.topic), self.spec.workers)
        if owner != self.spec.index:
            self.inboxes[owner].put(Inbound(event.topic, event.payload, False))
            return
        at = Instant(wall=time.time(), mono=time.monotonic())
        result: WorkerResult | WorkerFault | None
        try:
            result = self.ingest.on_chunk(event.topic, event.payload, at)
        except Exception as exc:  # our bug, not the sender's: keep serving the others
            log.error("aggregator: ingest worker %d failed on a message on %s: %s",
                      self.spec.index, event.topic, exc, exc_info=True)
            result = WorkerFault(event.topic, str(exc))
        if result is not None:
            self._send(result)

    def _send(self, result: WorkerResult | WorkerFault | WorkerReady) -> None:
        """To the writer; waits while its queue is full (backpressure), not past a stop."""
        while not self.stop.is_set():
            try:
                self.results.put(result, timeout=0.2)
                return
            except queue.Full:
                continue

    def _take_forwarded(self) -> None:
        """Chunks other workers received for devices this one owns."""
        inbox = self.inboxes[self.spec.index]
        while not self.stop.is_set():
            try:
                event = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            self.local.put(event)


def _formatter_of(root: logging.Logger) -> logging.Formatter | None:
    """The service's log format for its workers, when it can travel to them."""
    for handler in root.handlers:
        if handler.formatter is not None:
            try:
                pickle.dumps(handler.formatter)
            except Exception:  # a formatter holding a lock, a file...: the default then
                return None
            return handler.formatter
    return None


def _no_key(device: str) -> str | None:
    return None
