"""Run a whole round in one process: the server, its clients and a relay between them.

For tests, the cost benchmark and fleet simulations, not for devices: a real deployment
relays the same bytes over MQTT. Every message crosses as bytes (so sizes are the wire
sizes), devices can drop out at any phase, and `tamper` can alter bytes in transit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aggregator.secagg.server import SecAggServer
from edge_client.shared.secagg.client import SecAggClient
from edge_client.shared.secagg.errors import BadSecAggMessage
from edge_client.shared.secagg.messages import SecAggMessage
from edge_client.shared.secagg.phases import Phase

PHASES = (Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.UNMASKING)

# (direction "down" or "up", device, phase, bytes) -> the bytes that arrive
Tamper = Callable[[str, str, Phase, bytes], bytes]


@dataclass
class RoundTrace:
    """What crossed the relay and what it cost; times are process CPU seconds."""

    bytes_sent: dict[str, int] = field(default_factory=dict)  # device -> uplink bytes
    bytes_received: dict[str, int] = field(default_factory=dict)  # device -> downlink bytes
    device_seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> dev
    server_seconds: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    client_errors: dict[str, str] = field(default_factory=dict)  # device -> why it refused
    rejected: dict[str, str] = field(default_factory=dict)  # device -> why the server refused
    uplink: list[tuple[str, Phase, bytes]] = field(default_factory=list)  # when keep_uplink


def run_round(server: SecAggServer, clients: Mapping[str, SecAggClient],
              dropouts: Mapping[str, Phase] | None = None, tamper: Tamper | None = None,
              keep_uplink: bool = False) -> RoundTrace:
    """Relay one round to its end; a device in `dropouts` sends nothing from that phase on.

    A device that refuses a message (BadSecAggMessage) goes silent, like a dropout.
    RoundAborted from the server propagates.
    """
    dropouts = dict(dropouts or {})
    trace = RoundTrace()
    outgoing: dict[str, SecAggMessage] = {u: server.setup for u in server.setup.participants}
    for phase in PHASES:
        trace.device_seconds[phase.value] = {}
        server_time = 0.0
        for device in sorted(outgoing):
            if _gone(dropouts.get(device), phase) or device in trace.client_errors:
                continue
            data = _pass(tamper, "down", device, phase, outgoing[device].to_bytes())
            trace.bytes_received[device] = trace.bytes_received.get(device, 0) + len(data)
            start = time.process_time()
            try:
                reply = clients[device].handle_bytes(data)
            except BadSecAggMessage as exc:
                trace.client_errors[device] = exc.reason
                continue
            finally:
                trace.device_seconds[phase.value][device] = time.process_time() - start
            reply = _pass(tamper, "up", device, phase, reply)
            trace.bytes_sent[device] = trace.bytes_sent.get(device, 0) + len(reply)
            if keep_uplink:
                trace.uplink.append((device, phase, reply))
            start = time.process_time()
            try:
                server.receive_bytes(device, reply)
            except BadSecAggMessage as exc:
                trace.rejected[device] = exc.reason
            finally:
                server_time += time.process_time() - start
        start = time.process_time()
        try:
            outgoing = server.close_phase()
        finally:
            trace.server_seconds[phase.value] = server_time + time.process_time() - start
    return trace


def _gone(dropped_at: Phase | None, phase: Phase) -> bool:
    return dropped_at is not None and PHASES.index(phase) >= PHASES.index(dropped_at)


def _pass(tamper: Tamper | None, direction: str, device: str, phase: Phase,
          data: bytes) -> bytes:
    return data if tamper is None else tamper(direction, device, phase, data)
