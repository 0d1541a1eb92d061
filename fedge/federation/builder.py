"""A whole federation in one process: a broker, an aggregator and N devices on threads.

The one way fedge composes the gateway and the device SDK in a single process: `fedge
demo`, the benchmarks, the examples and the integration tests all build their federations
here, with the real config types (AggregatorConfig, ClientConfig) and the real MQTT path.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from aggregator.config import AggregatorConfig
from aggregator.service import Aggregator, Evaluate, VersionReport
from aggregator.strategy import Strategy
from edge_client.client import ClientConfig, EdgeClient
from edge_client.eligibility import EligibilityPolicy
from edge_client.shared.protocol import Weights
from edge_client.training import Trainer
from fedge.broker import BrokerHandle, start_broker
from fedge.federation.parties import PartyFailed, PartyThread, Run
from fedge.federation.result import FederationResult, collect

if TYPE_CHECKING:
    from edge_client.predictor import Predictor

log = logging.getLogger(__name__)

JOIN_S = 30.0  # how long stop() waits for each party to end


class Federation:
    """Build with add_aggregator and add_device inside `with`, then run() or start().

    The broker is the federation's: `broker` is a kind to start ("auto", "mosquitto",
    "embedded"; stopped at the end) or a running BrokerHandle (left running). Every
    config added gets the broker's host and port. Each party runs on its own thread
    with its own stop event; the first party to fail stops all the others.
    """

    def __init__(self, broker: str | BrokerHandle = "auto") -> None:
        self._broker_choice = broker
        self._broker: BrokerHandle | None = broker if isinstance(broker, BrokerHandle) else None
        self._owns_broker = not isinstance(broker, BrokerHandle)
        self._aggregator: Aggregator | None = None
        self._aggregator_args: dict = {}
        self.devices: list[EdgeClient] = []
        self._helpers: list[tuple[Run, str]] = []
        self.parties: list[PartyThread] = []  # helpers, the aggregator, the devices
        self._helper_parties: list[PartyThread] = []
        self._aggregator_party: PartyThread | None = None
        self._started = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> Federation:
        if self._broker is None:
            assert isinstance(self._broker_choice, str)
            self._broker = start_broker(self._broker_choice)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            if self._owns_broker and self._broker is not None:
                self._broker.stop()

    @property
    def broker(self) -> BrokerHandle:
        if self._broker is None:
            raise RuntimeError("the federation's broker starts with `with Federation(...)`")
        return self._broker

    @property
    def aggregator(self) -> Aggregator:
        if self._aggregator is None:
            raise RuntimeError("add_aggregator() first")
        return self._aggregator

    def add_aggregator(self, config: AggregatorConfig, initial_weights: Weights | None = None,
                       arch: dict | None = None, *, evaluate: Evaluate | None = None,
                       strategy: Strategy | None = None,
                       on_version: Callable[[VersionReport], None] | None = None
                       ) -> Aggregator:
        """The gateway's Aggregator on this federation's broker (one per federation)."""
        if self._aggregator is not None:
            raise RuntimeError("a federation has one aggregator")
        self._aggregator_args = {"evaluate": evaluate, "strategy": strategy,
                                 "on_version": on_version}
        config = dataclasses.replace(config, host=self.broker.host, port=self.broker.port)
        self._aggregator = Aggregator(config, initial_weights=initial_weights, arch=arch,
                                      **self._aggregator_args)
        return self._aggregator

    def add_device(self, config: ClientConfig, trainer: Trainer, x: np.ndarray,
                   y: np.ndarray, *, policy: EligibilityPolicy | None = None,
                   app_busy: Callable[[], bool] | None = None,
                   on_model: Callable[[int, dict, Weights], None] | None = None,
                   predictor: Predictor | None = None,
                   holdout: tuple[np.ndarray, np.ndarray] | None = None) -> EdgeClient:
        """An EdgeClient with only its own data `x`, `y`, on this federation's broker;
        `predictor` serves its models and watches for drift (EdgeClient); `holdout`: its
        held-out data, for canary evaluations and personal/global accuracy
        (edge_client/holdout.py)."""
        config = dataclasses.replace(config, host=self.broker.host, port=self.broker.port)
        device = EdgeClient(config, trainer, x, y, policy=policy, app_busy=app_busy,
                            on_model=on_model, predictor=predictor, holdout=holdout)
        self.devices.append(device)
        return device

    def add_helper(self, run: Run, name: str) -> None:
        """Something else to run beside the parties (a simulator, say): started first,
        stopped with them, never waited for."""
        self._helpers.append((run, name))

    def start(self) -> None:
        """Start every party on its own thread: helpers, then the aggregator, the devices."""
        aggregator = self.aggregator
        self._started = time.monotonic()
        self._helper_parties = [PartyThread(run, name, self._failed, start=False)
                                for run, name in self._helpers]
        self._aggregator_party = PartyThread(aggregator.run, "aggregator", self._failed,
                                             start=False)
        devices = [PartyThread(d.run, d.config.device_id, self._failed, start=False)
                   for d in self.devices]
        with self._lock:  # all listed before any starts, so a first failure stops all
            self.parties += [*self._helper_parties, self._aggregator_party, *devices]
        for party in [*self._helper_parties, self._aggregator_party, *devices]:
            party.start()

    def wait(self, timeout_s: float) -> None:
        """Until the aggregator has made its versions and the devices have left.

        Raises PartyFailed (the first party to fail; all are stopped), or TimeoutError if
        the aggregator is still going after `timeout_s`.
        """
        assert self._aggregator_party is not None, "start() first"
        finished = self._aggregator_party.wait(timeout_s)
        if not finished or self._first_error() is not None:
            self._stop_all()
        for party in self.parties:  # devices leave when the aggregator says it is done
            if party not in self._helper_parties:
                party.wait(JOIN_S)
        self._stop_all()
        failed = self._first_error()
        if failed is not None:
            assert failed.error is not None
            raise PartyFailed(failed.name, failed.error) from failed.error
        if not finished:
            raise TimeoutError(f"the federation did not finish within {timeout_s:.0f} s")

    def run(self, timeout_s: float = 600.0) -> FederationResult:
        """start(), wait(), and the results."""
        self.start()
        self.wait(timeout_s)
        return self.result()

    def result(self) -> FederationResult:
        return collect(self.aggregator, self.devices, time.monotonic() - self._started)

    def stop(self) -> None:
        """Stop every party and wait for each (at most JOIN_S); safe to call twice."""
        self._stop_all()
        for party in self.parties:
            party.wait(JOIN_S)

    def stop_aggregator(self) -> None:
        """Stop the aggregator alone (a gateway going down); the devices go on."""
        if self._aggregator_party is not None:
            self._aggregator_party.stop.set()
            self._aggregator_party.wait(JOIN_S)

    def restart_aggregator(self) -> Aggregator:
        """Stop the aggregator if it runs and start a new one on the same config and
        store, as a gateway restart does (the devices and the broker go on)."""
        self.stop_aggregator()
        self._aggregator = Aggregator(self.aggregator.config, **self._aggregator_args)
        party = PartyThread(self._aggregator.run, "aggregator", self._failed)
        with self._lock:
            if self._aggregator_party is not None:
                self.parties.remove(self._aggregator_party)
            self.parties.append(party)
        self._aggregator_party = party
        return self._aggregator

    def _failed(self, party: PartyThread, error: BaseException) -> None:
        log.info("%s failed, stopping the federation: %r", party.name, error)
        self._stop_all()

    def _first_error(self) -> PartyThread | None:
        return next((p for p in self.parties if p.error is not None), None)

    def _stop_all(self) -> None:
        with self._lock:
            for party in self.parties:
                party.stop.set()
