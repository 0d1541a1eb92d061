"""The glue between a Bridge and an EdgeClient: MCU data in, each new global model out.

    relay = ModelRelay(bridge, int8_tflite)
    client = EdgeClient(config, trainer, *bridge.dataset.arrays(), on_model=relay.on_model)

`on_model` runs on the client's thread; it only converts and queues (the bridge's own
thread does the serial work). `model_to_bytes` is pluggable: `int8_tflite` (the
default for MCUs running TFLite Micro) needs a model trained with QAT or calibrated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from edge_client.shared.protocol.tensors import Weights
from firmware_bridge.bridge import Bridge

log = logging.getLogger(__name__)
ModelToBytes = Callable[[int, dict[str, Any], Weights], bytes]


def int8_tflite(version: int, arch: dict[str, Any], weights: Weights) -> bytes:
    """A full-int8 .tflite for TFLite Micro (edge_client.export; needs the litert extra)."""
    from edge_client.export import to_tflite

    return to_tflite(arch, weights, int8=True)


class ModelRelay:
    """Pass as EdgeClient(on_model=relay.on_model): each global model goes to the MCU."""

    def __init__(self, bridge: Bridge, model_to_bytes: ModelToBytes = int8_tflite) -> None:
        self.bridge = bridge
        self.model_to_bytes = model_to_bytes
        self.relayed: list[int] = []  # versions handed to the bridge
        self.failed: dict[int, str] = {}  # versions that could not be converted, and why

    def on_model(self, version: int, arch: dict[str, Any], weights: Weights) -> None:
        try:
            blob = self.model_to_bytes(version, arch, weights)
        except (ValueError, ImportError, RuntimeError) as exc:
            # ExportError is a ValueError: e.g. a float model without activation ranges.
            self.failed[version] = str(exc)
            log.error("bridge: model v%d cannot be converted for the MCU: %s", version, exc)
            return
        self.bridge.push_model(blob, version)
        self.relayed.append(version)
