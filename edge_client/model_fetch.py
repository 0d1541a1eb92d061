"""Getting the newest global model: from a delta when the device holds its base, else whole.

Sans-IO: the fetcher takes manifests and chunk messages and returns the topic filters
to subscribe to or drop, and, once complete, the model and its encoded blob. A model
rebuilt from a delta must encode to exactly the manifest's sha256; if it does not, the
fetcher falls back to the full model, so a device never trains on a model that differs
from the aggregator's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from edge_client.codecs import CodecConfig, decode_dense
from edge_client.protocol import Assembler, Model, ModelManifest, RemoteProtocolError, Topics
from edge_client.protocol.chunking import sha256_hex
from edge_client.protocol.messages import encode
from edge_client.protocol.model_transfer import (
    delta_transfer_id,
    model_transfer_id,
    open_model,
)
from edge_client.protocol.seeds import delta_seed
from edge_client.protocol.tensors import Weights, flatten_sorted, unflatten_like

log = logging.getLogger(__name__)
AGGREGATOR = "aggregator"  # the one source of model chunks


@dataclass
class FetchStep:
    """What the caller does next: change subscriptions, and install `model` if set."""

    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    model: Model | None = None
    blob: bytes = b""  # the full model's encoding, for storage and its sha256
    via_delta: bool = False


@dataclass(frozen=True)
class Held:
    """The model a device holds now."""

    version: int | None
    tensors: Weights | None
    arch: dict


class ModelFetcher:
    def __init__(self, topics: Topics, max_bytes: int, max_elements: int) -> None:
        self.topics = topics
        self.max_elements = max_elements
        self._assembler = Assembler(max_bytes, max_transfers_per_source=1)
        self._manifest: ModelManifest | None = None
        self._filter: str | None = None
        self._delta = False

    @property
    def fetching(self) -> int | None:
        return None if self._manifest is None or self._filter is None else self._manifest.version

    def on_manifest(self, manifest: ModelManifest, held: Held) -> FetchStep:
        if held.version is not None and manifest.version <= held.version:
            return FetchStep()
        step = self._drop_subscription()
        self._manifest = manifest
        use_delta = (manifest.delta is not None and held.tensors is not None
                     and held.version == manifest.delta.base_version)
        self._subscribe(step, delta=use_delta)
        return step

    def on_chunk(self, topic: str, payload: bytes, held: Held) -> FetchStep | None:
        """Handle a message on a model chunk topic; None when it is not ours."""
        if self._filter is None or not _matches(self._filter, topic):
            return None
        done = self._assembler.add(AGGREGATOR, payload, time.monotonic())
        if done is None:
            return FetchStep()
        transfer, blob = done
        assert self._manifest is not None
        version = self._manifest.version
        wanted = delta_transfer_id(version) if self._delta else model_transfer_id(version)
        if transfer != wanted:
            return FetchStep()
        if not self._delta:
            model = open_model(self._manifest, blob, self.max_elements)
            step = self._drop_subscription()
            step.model, step.blob = model, blob
            return step
        return self._apply_delta(blob, held)

    def _apply_delta(self, blob: bytes, held: Held) -> FetchStep:
        manifest = self._manifest
        assert manifest is not None and manifest.delta is not None and held.tensors is not None
        try:
            if sha256_hex(blob) != manifest.delta.sha256:
                raise RemoteProtocolError("delta does not match its manifest entry")
            codec = CodecConfig.from_wire(manifest.delta.codec)
            old = flatten_sorted(held.tensors)
            change = decode_dense(blob, codec, old.size, delta_seed(manifest.version))
            rebuilt = unflatten_like(old + change, held.tensors)
            # Same precision as the full model (float16 or float32), rounded the same way.
            tensors = {k: v.astype(held.tensors[k].dtype) for k, v in rebuilt.items()}
            model = Model(version=manifest.version, tensors=tensors, arch=held.arch)
            full_blob = encode(model)
            if sha256_hex(full_blob) != manifest.sha256:
                raise RemoteProtocolError("model rebuilt from the delta differs from the "
                                          "aggregator's")
        except (RemoteProtocolError, ValueError) as exc:
            log.warning("model %d: %s; fetching the full model", manifest.version, exc)
            step = self._drop_subscription()
            self._subscribe(step, delta=False)
            return step
        step = self._drop_subscription()
        step.model, step.blob, step.via_delta = model, full_blob, True
        return step

    def _subscribe(self, step: FetchStep, delta: bool) -> None:
        assert self._manifest is not None
        version = self._manifest.version
        self._delta = delta
        self._filter = (self.topics.model_delta_chunks(version) if delta
                        else self.topics.model_chunks(version))
        step.subscribe.append(self._filter)

    def _drop_subscription(self) -> FetchStep:
        step = FetchStep()
        if self._filter is not None:
            step.unsubscribe.append(self._filter)
        self._filter = None
        return step


def _matches(filter_: str, topic: str) -> bool:
    """`prefix/+` matches one more topic level, and only one."""
    prefix = filter_[:-1]
    return topic.startswith(prefix) and "/" not in topic[len(prefix):]
