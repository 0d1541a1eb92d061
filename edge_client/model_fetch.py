"""Getting the newest global model: from deltas when the device holds a base, else whole.

Sans-IO: the fetcher takes manifests and chunk messages and returns the topic filters
to subscribe to or drop, and, once complete, the model and its encoded blob. A device
that holds version b rebuilds version v from the retained deltas b+1, ..., v (the
manifest's chain), one at a time. Every model rebuilt on the way must encode to exactly
the SHA-256 the manifest lists for it; at the first that does not, the fetcher falls
back to the full model, so a device never trains on a model that differs from the
aggregator's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from edge_client.shared.codecs import CodecConfig, decode_dense
from edge_client.shared.protocol import Assembler, Model, ModelManifest, RemoteProtocolError, Topics
from edge_client.shared.protocol.chunking import sha256_hex
from edge_client.shared.protocol.messages import DeltaInfo, encode
from edge_client.shared.protocol.model_transfer import (
    delta_path,
    delta_transfer_id,
    model_transfer_id,
    open_model,
)
from edge_client.shared.protocol.seeds import delta_seed
from edge_client.shared.protocol.tensors import Weights, flatten_sorted, unflatten_like

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


def started_over(manifest: ModelManifest, held_version: int | None,
                 held_sha256: str | None) -> bool:
    """Whether the aggregator's model history is not the one this device followed: versions
    only grow, so a lower version, or the same version with other bytes, means the gateway
    began again (a new store, a restored backup). The device must then follow it from
    scratch instead of ignoring every manifest until the new run passes its old version."""
    if held_version is None:
        return False
    if manifest.version < held_version:
        return True
    return (manifest.version == held_version and held_sha256 is not None
            and manifest.sha256 != held_sha256)


class ModelFetcher:
    """Fetches one manifest's model: through its deltas, one at a time, or whole.

    Memory stays bounded: one transfer in the assembler, and besides the held model
    only the latest intermediate model of a delta chain.
    """

    def __init__(self, topics: Topics, max_bytes: int, max_elements: int) -> None:
        self.topics = topics
        self.max_elements = max_elements
        self._assembler = Assembler(max_bytes, max_transfers_per_source=1)
        self._manifest: ModelManifest | None = None
        self._filter: str | None = None
        self._steps: list[DeltaInfo] = []  # deltas still to apply; empty: full model
        self._base: Weights | None = None  # the model the next delta applies to
        self._base_version: int | None = None
        self._arch: dict = {}

    @property
    def fetching(self) -> int | None:
        return None if self._manifest is None or self._filter is None else self._manifest.version

    def on_manifest(self, manifest: ModelManifest, held: Held) -> FetchStep:
        if held.version is not None and manifest.version <= held.version:
            return FetchStep()
        step = self._drop_subscription()
        self._manifest = manifest
        if not self._ahead_of(held):
            self._base, self._base_version, self._arch = held.tensors, held.version, held.arch
        self._steps = delta_path(manifest, self._base_version) if self._base is not None else []
        self._subscribe(step)
        return step

    def _ahead_of(self, held: Held) -> bool:
        """Whether a chain cut short by a newer manifest left a newer model than `held`:
        it was checked against its SHA-256, so the next chain can start from it."""
        return (self._base is not None and self._base_version is not None
                and held.version is not None and self._base_version > held.version)

    def on_chunk(self, topic: str, payload: bytes, held: Held,
                 now: float | None = None) -> FetchStep | None:
        """Handle a message on a model chunk topic; None when it is not ours. `now` is
        monotonic time (read from the clock when not given)."""
        if self._filter is None or not _matches(self._filter, topic):
            return None
        if not payload and self._steps:  # the aggregator cleared this delta's chunks
            return self._fall_back(self._steps[0].version, "its delta is no longer retained")
        done = self._assembler.add(AGGREGATOR, payload,
                                   time.monotonic() if now is None else now)
        if done is None:
            return FetchStep()
        transfer, blob = done
        assert self._manifest is not None
        if not self._steps:
            if transfer != model_transfer_id(self._manifest.version):
                return FetchStep()
            model = open_model(self._manifest, blob, self.max_elements)
            step = self._drop_subscription()
            step.model, step.blob = model, blob
            return step
        if transfer != delta_transfer_id(self._steps[0].version):
            return FetchStep()
        return self._apply_delta(blob)

    def _apply_delta(self, blob: bytes) -> FetchStep:
        """Apply the next delta; then fetch the one after it, or hand over the model."""
        manifest, delta = self._manifest, self._steps[0]
        assert manifest is not None and self._base is not None
        try:
            model, full_blob = self._rebuild(delta, blob, self._base)
        except (RemoteProtocolError, ValueError) as exc:
            return self._fall_back(delta.version, str(exc))
        self._steps.pop(0)
        step = self._drop_subscription()
        if self._steps:  # the intermediate model replaces the one before it
            self._base, self._base_version = model.tensors, model.version
            self._subscribe(step)
            return step
        self._base = None
        step.model, step.blob, step.via_delta = model, full_blob, True
        return step

    def _rebuild(self, delta: DeltaInfo, blob: bytes, base: Weights) -> tuple[Model, bytes]:
        """`base` plus the decoded delta, checked bit for bit against the manifest."""
        assert self._manifest is not None
        if sha256_hex(blob) != delta.sha256:
            raise RemoteProtocolError("delta does not match its manifest entry")
        codec = CodecConfig.from_wire(delta.codec)
        old = flatten_sorted(base)
        change = decode_dense(blob, codec, old.size, delta_seed(delta.version))
        rebuilt = unflatten_like(old + change, base)
        del old, change  # a device holds few copies of the model at once (footprint)
        # Same precision as the full model (float16 or float32), rounded the same way;
        # the float32 arrays are unflatten_like's own copies, kept as they are.
        tensors = {k: v.astype(base[k].dtype, copy=False) for k, v in rebuilt.items()}
        del rebuilt
        model = Model(version=delta.version, tensors=tensors, arch=self._arch)
        full_blob = encode(model)
        digest = sha256_hex(full_blob)
        last = delta.version == self._manifest.version
        if (delta.model_sha256 is not None and digest != delta.model_sha256) or (
                last and digest != self._manifest.sha256):
            raise RemoteProtocolError("model rebuilt from the delta differs from the "
                                      "aggregator's")
        return model, full_blob

    def _fall_back(self, version: int, reason: str) -> FetchStep:
        assert self._manifest is not None
        log.warning("model %d: delta to %d: %s; fetching the full model",
                    self._manifest.version, version, reason)
        step = self._drop_subscription()
        self._steps, self._base = [], None
        self._subscribe(step)
        return step

    def _subscribe(self, step: FetchStep) -> None:
        assert self._manifest is not None
        self._filter = (self.topics.model_delta_chunks(self._steps[0].version) if self._steps
                        else self.topics.model_chunks(self._manifest.version))
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
