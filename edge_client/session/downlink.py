"""The global model a device follows: manifests and chunks in, InstallModel out.

Wraps the sans-IO ModelFetcher (edge_client.model_fetch) and holds the installed model.
A model is the device's only once the trainer took it (`installed`), so a model that
does not fit the trainer leaves the device on the one it had.
"""

from __future__ import annotations

import logging

from edge_client.model_fetch import FetchStep, Held, ModelFetcher, started_over
from edge_client.session.actions import Action, InstallModel, Subscribe, Unsubscribe
from edge_client.session.held_model import HeldModel, copy_weights
from edge_client.shared.protocol import ModelManifest, Topics
from edge_client.shared.protocol.chunking import sha256_hex

log = logging.getLogger("edge_client.client")  # one logger for all the device says


class Downlink:
    def __init__(self, device_id: str, topics: Topics, max_bytes: int,
                 max_elements: int) -> None:
        self.device_id = device_id
        self.max_bytes = max_bytes
        self.fetcher = ModelFetcher(topics, max_bytes, max_elements)
        self.model: HeldModel | None = None
        self._installing: FetchStep | None = None  # fetched, waiting for the trainer
        self.oversized: tuple[int, str] | None = None  # the latest manifest, if too large
        self.refused_version: int | None = None  # the trainer could not take this one

    @property
    def version(self) -> int | None:
        return None if self.model is None else self.model.version

    def held(self) -> Held:
        return Held(None, None, {}) if self.model is None else self.model.held()

    def on_manifest(self, manifest: ModelManifest) -> tuple[bool, list[Action]]:
        """Fetch the manifest's model if it is new; True first when the aggregator's
        history is not the one this device followed (the caller forgets that run)."""
        if manifest.size > self.max_bytes:  # refused, and said in the status (session.py)
            self.oversized = (manifest.version, f"it is {manifest.size} bytes, over "
                                                f"max_model_bytes {self.max_bytes}")
            return False, []
        self.oversized = None
        if manifest.version == self.refused_version:
            return False, []  # refused once (refusals.py): not fetched again
        over = started_over(manifest, self.version,
                            None if self.model is None else self.model.sha256)
        if over:
            log.warning("%s: the aggregator's model is version %d (%s...), not the history "
                        "of the version %s this device holds: the federation started over; "
                        "following it from the start", self.device_id, manifest.version,
                        manifest.sha256[:12], self.version)
            self.model = None
        return over, self._apply(self.fetcher.on_manifest(manifest, self.held()))

    def on_chunk(self, topic: str, payload: bytes, now: float) -> list[Action]:
        step = self.fetcher.on_chunk(topic, payload, self.held(), now)
        return [] if step is None else self._apply(step)

    def _apply(self, step: FetchStep) -> list[Action]:
        actions: list[Action] = [Unsubscribe(t) for t in step.unsubscribe]
        actions += [Subscribe(t) for t in step.subscribe]
        if step.model is not None:
            self._installing = step
            model = step.model
            actions.append(InstallModel(model.version, copy_weights(model.tensors),
                                        model.arch))
        return actions

    def installed(self, version: int) -> FetchStep | None:
        """The trainer took the model InstallModel named: it is the device's now."""
        step, self._installing = self._installing, None
        if step is None or step.model is None or step.model.version != version:
            return None
        model = step.model
        # The fetched model's own arrays, not a copy: the trainer took a copy of them
        # (InstallModel), and the fetcher keeps none once it hands a model over.
        self.model = HeldModel(model.version, model.tensors, model.arch,
                               sha256_hex(step.blob))
        return step

    def refused(self, version: int, reason: str) -> None:
        self._installing = None
        self.refused_version = version
        log.warning("%s: ignored model %d: it does not fit this device's trainer: %s",
                    self.device_id, version, reason)
