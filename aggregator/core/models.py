"""The model on the broker: the version the store starts from, and what to publish.

Startup reads the store (the latest version, the downlink's error feedback); after
that, `ModelPublisher` turns a version into retained chunks, deltas and the manifest,
and clears what older versions left behind, all as actions for the shell.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from aggregator.clusters import initial_clusters
from aggregator.config import AggregatorConfig
from aggregator.core.actions import Action, Publish, PublishTask
from aggregator.downlink import DownlinkEncoder, on_the_wire, representable, retained_chain
from aggregator.model_lines import line_of, starts_new_line
from aggregator.personalize import check_layers
from aggregator.store import Store
from edge_client.shared.clusters import cluster_count
from edge_client.shared.protocol import Model, Task, Topics, Weights, decode, encode
from edge_client.shared.protocol.chunking import chunk_count, sha256_hex
from edge_client.shared.protocol.model_transfer import package_model

log = logging.getLogger("aggregator.service")


def load_or_create(config: AggregatorConfig, store: Store, initial: Weights | None,
                   arch: dict[str, Any]) -> tuple[int, Weights, dict[str, Any]]:
    """The stored latest version, or version 0 made from `initial` and stored; personal
    layers that name no tensor of it (or all) are refused."""
    version, weights, arch = _load_or_create(config, store, initial, arch)
    check_layers(config.personalize, weights)
    return version, weights, arch


def _load_or_create(config: AggregatorConfig, store: Store, initial: Weights | None,
                    arch: dict[str, Any]) -> tuple[int, Weights, dict[str, Any]]:
    stored = store.latest_model()
    if stored is not None:
        if sha256_hex(stored.blob) != stored.sha256:  # store_check saw it; a 2nd line
            raise ValueError(f"the store {config.store_name}: model version {stored.version} "
                             "fails its SHA-256; run `fedge aggregator check` and `recover`")
        model = decode(stored.blob, expect=Model)
        assert isinstance(model, Model)
        log.info("aggregator: resuming at model version %d", model.version)
        weights = {k: v.astype(np.float32) for k, v in model.tensors.items()}
        check_clusters_kept(config, weights)
        if initial is not None and starts_new_line(config.lines, model.arch, arch,
                                                   model.version):
            return _store_first(config, store, model.version + 1, initial, arch)
        return model.version, weights, model.arch
    if initial is None:
        raise ValueError("the store holds no model: pass initial weights")
    return _store_first(config, store, 0, initial, arch)


def _store_first(config: AggregatorConfig, store: Store, version: int, initial: Weights,
                 arch: dict[str, Any]) -> tuple[int, Weights, dict[str, Any]]:
    """The first version of a line (version 0, or a new architecture's line)."""
    full = config.downlink.full
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in initial.items()}
    if config.clusters.on:  # k model lines, one stacked model (aggregator/clusters.py)
        weights = initial_clusters(weights, config.clusters, config.seed)
    weights = representable(weights, full)
    blob = encode(Model(version=version, tensors=on_the_wire(weights, full), arch=arch))
    info: dict[str, Any] = {"round": 0, "updates": 0, "model_bytes": len(blob)}
    if version > 0:  # version 0's line is read from its model (model_lines.py)
        info["line"] = line_of(arch)
    store.add_model(version, blob, sha256_hex(blob), info)
    return version, weights, arch


def check_clusters_kept(config: AggregatorConfig, weights: Weights) -> None:
    """A store made with another [clusters] k cannot go on under this one."""
    held = cluster_count(weights)
    if held != (config.clusters.k if config.clusters.on else 0):
        raise ValueError(f"the store {config.store_name} holds a model of "
                         f"{max(held, 1)} cluster(s), but clusters.k = {config.clusters.k}; "
                         "use the k it was made with or a new store")


def restored_downlink(config: AggregatorConfig, store: Store, version: int,
                      weights: Weights) -> DownlinkEncoder:
    """The downlink encoder with the error feedback stored with `version`, so a restart
    makes the same models as an uninterrupted run."""
    encoder = DownlinkEncoder(config.downlink, seed=config.seed)
    state = store.downlink_residual(version)
    if state is None:
        if version > 0 and config.downlink.delta:
            log.info("aggregator: no downlink residual stored with version %d (a store "
                     "from an older fedge): the error feedback starts from zero", version)
        return encoder
    try:
        encoder.restore(state, sum(w.size for w in weights.values()))
    except ValueError as exc:
        raise ValueError(f"the store {config.store_name}: the downlink residual of version "
                         f"{version} is unusable ({exc}); run `fedge aggregator check`"
                         ) from None
    return encoder


class ModelPublisher:
    def __init__(self, config: AggregatorConfig, store: Store, topics: Topics,
                 sign: Callable[[bytes], bytes]) -> None:
        self.config = config
        self.store = store
        self.topics = topics
        self.sign = sign

    def wire(self, weights: Weights) -> Weights:
        return on_the_wire(weights, self.config.downlink.full)

    def task(self, task: Task) -> PublishTask:
        return PublishTask(self.topics.task, self.sign(encode(task)), retain=True, task=task)

    def done(self, version: int) -> PublishTask:
        """A retained task that tells every device, now or later, that training is over."""
        c = self.config
        return self.task(Task(task_id=f"done-v{version}", mode=c.mode, round=version,
                              model_version=version, train=c.train, invited=(),
                              chunk_size=c.chunk_size, done=True))

    def model(self, version: int, weights: Weights, arch: dict[str, Any],
              whole_chain: bool = False) -> list[Action]:
        """Retained chunks (full, and the deltas) first, then the manifest.

        After a new version only its own delta is new on the broker; on (re)connect
        (`whole_chain`) every retained delta goes out again, in case the broker lost them.
        """
        topics, chunk_size = self.topics, self.config.chunk_size
        model = Model(version=version, tensors=self.wire(weights), arch=arch)
        manifest, chunks = package_model(model, chunk_size)
        out: list[Action] = [Publish(topics.model_chunk(version, i), chunk, retain=True)
                             for i, chunk in enumerate(chunks)]
        downlink = self.config.downlink
        chain = (retained_chain(self.store, version, downlink, chunk_size)
                 if version > 0 else [])
        for info, delta_chunks in chain if whole_chain else chain[-1:]:
            out += [Publish(topics.model_delta_chunk(info.version, i), chunk, retain=True)
                    for i, chunk in enumerate(delta_chunks)]
        if chain:
            listed = tuple(info for info, _ in chain) if downlink.keep_deltas >= 2 else None
            manifest = dataclasses.replace(manifest, delta=chain[-1][0], chain=listed)
        out.append(Publish(topics.model, self.sign(encode(manifest)), retain=True))
        out += self._clear_model_chunks(version - 2)
        out += self._clear_delta_chunks(version - max(2, downlink.keep_deltas))
        return out

    def _clear_model_chunks(self, version: int) -> list[Action]:
        """Old versions' retained chunks would otherwise stay on the broker forever."""
        size = self.store.model_size(version)
        count = chunk_count(size, self.config.chunk_size) if size else 0
        return [Publish(self.topics.model_chunk(version, i), b"", retain=True)
                for i in range(count)]

    def _clear_delta_chunks(self, version: int) -> list[Action]:
        delta = self.store.model_delta(version)
        count = chunk_count(len(delta), self.config.chunk_size) if delta else 0
        return [Publish(self.topics.model_delta_chunk(version, i), b"", retain=True)
                for i in range(count)]
