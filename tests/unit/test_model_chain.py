"""Delta chains on the downlink: a device that skipped versions applies the retained
deltas in turn, checks every step's SHA-256, and falls back to the full model."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest

from aggregator.config import DownlinkConfig
from aggregator.downlink import DownlinkEncoder, retained_chain
from edge_client.model_fetch import FetchStep, Held, ModelFetcher
from edge_client.shared.protocol import Model, ModelManifest, RemoteProtocolError, Topics
from edge_client.shared.protocol.chunking import sha256_hex, split
from edge_client.shared.protocol.messages import MAX_CHAIN, PROTOCOL_VERSION, decode, encode
from edge_client.shared.protocol.model_transfer import delta_transfer_id, package_model

ARCH = {"kind": "test"}
CHUNK = 1024
TOPICS = Topics("chain")


class FakeStore:
    """What `retained_chain` reads from the aggregator's store."""

    def __init__(self) -> None:
        self.deltas: dict[int, bytes] = {}
        self.shas: dict[int, str] = {}

    def model_delta(self, version: int) -> bytes | None:
        return self.deltas.get(version)

    def model_sha256(self, version: int) -> str | None:
        return self.shas.get(version)


class History:
    """Versions 0..n made the aggregator's way, their retained chunks, and a store."""

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        encoder = DownlinkEncoder(DownlinkConfig(), seed=seed)
        weights = {"w": rng.normal(size=(40, 20)).astype(np.float32),
                   "b": rng.normal(size=20).astype(np.float32)}
        self.weights = [weights]
        self.store = FakeStore()
        self.retained: dict[str, bytes] = {}
        for version in range(1, n + 1):
            proposed = {k: v + rng.normal(0, 0.01, v.shape).astype(np.float32)
                        for k, v in weights.items()}
            weights, delta = encoder.step(weights, proposed, version)
            assert delta is not None
            self.weights.append(weights)
            self.store.deltas[version] = delta
            self.store.shas[version] = sha256_hex(self.blob(version))

    def blob(self, version: int) -> bytes:
        return encode(Model(version=version, tensors=self.weights[version], arch=ARCH))

    def manifest(self, version: int, keep: int = 8) -> ModelManifest:
        """The manifest the aggregator publishes for `version`, chunks made retained."""
        model = Model(version=version, tensors=self.weights[version], arch=ARCH)
        manifest, chunks = package_model(model, CHUNK)
        for i, chunk in enumerate(chunks):
            self.retained[TOPICS.model_chunk(version, i)] = chunk
        chain = retained_chain(self.store, version, DownlinkConfig(keep_deltas=keep), CHUNK)
        for info, delta_chunks in chain:
            for i, chunk in enumerate(delta_chunks):
                self.retained[TOPICS.model_delta_chunk(info.version, i)] = chunk
        listed = tuple(info for info, _ in chain) if keep >= 2 else None
        return dataclasses.replace(manifest, delta=chain[-1][0], chain=listed)

    def held(self, version: int) -> Held:
        return Held(version, self.weights[version], ARCH)


class Device:
    """Drives a ModelFetcher against retained messages, the way the broker would."""

    def __init__(self, history: History, version: int) -> None:
        self.history = history
        self.held = history.held(version)
        self.fetcher = ModelFetcher(TOPICS, max_bytes=2**20, max_elements=10**6)
        self.subscribed: list[str] = []
        self.bytes_down = 0

    def fetch(self, manifest: ModelManifest, max_steps: int | None = None) -> FetchStep:
        """Every retained chunk of every filter subscribed to, until a model is done."""
        step = self.fetcher.on_manifest(manifest, self.held)
        filters = list(step.subscribe)
        while filters and (max_steps is None or max_steps > 0):
            filter_ = filters.pop(0)
            self.subscribed.append(filter_)
            prefix = filter_[:-1]
            for topic in sorted(t for t in self.history.retained if t.startswith(prefix)
                                and "/" not in t[len(prefix):]):
                payload = self.history.retained[topic]
                self.bytes_down += len(payload)
                result = self.fetcher.on_chunk(topic, payload, self.held)
                assert result is not None
                if result.model is not None:
                    return result
                filters += result.subscribe
                if filter_ in result.unsubscribe:
                    break  # the broker sends nothing more on a dropped filter
            max_steps = None if max_steps is None else max_steps - 1
        return FetchStep()


def _equal(model: Model, weights: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(model.tensors[k], weights[k]) for k in weights)


def test_a_device_that_skipped_versions_rebuilds_the_newest_from_the_chain() -> None:
    history = History(6)
    manifest = history.manifest(6)
    assert [d.version for d in manifest.chain] == [1, 2, 3, 4, 5, 6]
    device = Device(history, 3)
    got = device.fetch(manifest)
    assert got.model is not None and got.via_delta
    assert sha256_hex(got.blob) == manifest.sha256 and _equal(got.model, history.weights[6])
    assert device.subscribed == [TOPICS.model_delta_chunks(v) for v in (4, 5, 6)]
    whole = Device(history, 3)
    whole.held = Held(None, None, {})  # a new device: the full model's chunks
    assert not whole.fetch(manifest).via_delta
    assert device.bytes_down < whole.bytes_down


def test_a_chain_bigger_than_the_full_model_is_not_used() -> None:
    history = History(8)
    manifest = history.manifest(8)
    assert sum(d.size for d in manifest.chain) >= manifest.size  # else the test shows nothing
    got = Device(history, 0).fetch(manifest)
    assert got.model is not None and not got.via_delta
    assert _equal(got.model, history.weights[8])


def test_a_device_older_than_the_chain_fetches_the_full_model() -> None:
    history = History(6)
    manifest = history.manifest(6, keep=3)
    assert [d.version for d in manifest.chain] == [4, 5, 6]
    device = Device(history, 2)
    got = device.fetch(manifest)
    assert got.model is not None and not got.via_delta
    assert device.subscribed == [TOPICS.model_chunks(6)]


def test_a_corrupt_step_falls_back_to_the_full_model_at_once() -> None:
    history = History(6)
    manifest = history.manifest(6)
    # Step 5's chunks carry another, self-consistent blob: its hash is not the manifest's.
    history.retained[TOPICS.model_delta_chunk(5, 0)] = split(
        history.store.deltas[4], delta_transfer_id(5), 2**16)[0]
    device = Device(history, 3)
    got = device.fetch(manifest)
    assert got.model is not None and not got.via_delta and _equal(got.model, history.weights[6])
    assert device.subscribed == [TOPICS.model_delta_chunks(4), TOPICS.model_delta_chunks(5),
                                 TOPICS.model_chunks(6)]


def test_every_intermediate_model_is_checked() -> None:
    history = History(6)
    manifest = history.manifest(6)
    chain = list(manifest.chain)
    chain[3] = dataclasses.replace(chain[3], model_sha256="0" * 64)  # the step to version 4
    device = Device(history, 3)
    got = device.fetch(dataclasses.replace(manifest, chain=tuple(chain)))
    assert got.model is not None and not got.via_delta
    assert device.subscribed == [TOPICS.model_delta_chunks(4), TOPICS.model_chunks(6)]


def test_a_step_cleared_from_the_broker_falls_back_to_the_full_model() -> None:
    history = History(6)
    manifest = history.manifest(6)
    history.retained[TOPICS.model_delta_chunk(5, 0)] = b""  # what clearing delivers
    device = Device(history, 3)
    got = device.fetch(manifest)
    assert got.model is not None and not got.via_delta and _equal(got.model, history.weights[6])


def test_a_newer_manifest_mid_chain_continues_from_the_checked_intermediate_model() -> None:
    history = History(6)
    device = Device(history, 3)
    assert device.fetch(history.manifest(5), max_steps=1).model is None  # only 3 -> 4 applied
    device.subscribed.clear()
    got = device.fetch(history.manifest(6))
    assert got.model is not None and got.via_delta and _equal(got.model, history.weights[6])
    assert device.subscribed == [TOPICS.model_delta_chunks(v) for v in (5, 6)]


def test_a_manifest_without_a_chain_still_works() -> None:
    history = History(4)
    old = dataclasses.replace(history.manifest(4), chain=None)
    decoded = decode(encode(old), expect=ModelManifest)
    assert isinstance(decoded, ModelManifest) and decoded.chain is None
    got = Device(history, 3).fetch(decoded)
    assert got.model is not None and got.via_delta
    skipped = Device(history, 2).fetch(decoded)
    assert skipped.model is not None and not skipped.via_delta


def test_keep_deltas_one_publishes_no_chain() -> None:
    history = History(4)
    manifest = history.manifest(4, keep=1)
    assert manifest.chain is None and manifest.delta is not None
    assert manifest.delta.base_version == 3


def test_a_chain_round_trips_through_the_wire() -> None:
    manifest = History(3).manifest(3)
    decoded = decode(encode(manifest), expect=ModelManifest)
    assert decoded == manifest


def _manifest_map(manifest: ModelManifest, chain: object) -> bytes:
    fields = msgpack.unpackb(encode(manifest), raw=False)
    fields["chain"] = chain
    return msgpack.packb(fields, use_bin_type=True)


def _entry(base: int, **changes: object) -> dict:
    entry = {"base_version": base, "sha256": "a" * 64, "size": 10, "chunk_count": 1,
             "codec": {}, "model_sha256": "b" * 64}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


@pytest.mark.parametrize(("chain", "reason"), [
    ([], r"1 to 64 entries"),
    ([_entry(b) for b in range(100 - MAX_CHAIN - 1, 100)], r"1 to 64 entries"),
    ([_entry(98), _entry(98)], r"chain\[1\] has base_version 98, expected 99"),
    ([_entry(97), _entry(98)], r"chain\[0\] has base_version 97, expected 98"),
    ([_entry(99, model_sha256=None)], r"chain\[0\]: missing field 'model_sha256'"),
    ([_entry(99, size=0)], r"chain\[0\]: field 'size' must be >= 1"),
    ([_entry(99, base_version="99")], r"chain\[0\]: field 'base_version' has the wrong type"),
    (["step"], r"chain entries must be maps"),
    ({"0": _entry(99)}, r"field 'chain' has the wrong type"),
    ([_entry(99)], r"delta and the chain's last step disagree"),
])
def test_a_malformed_chain_is_refused_with_a_reason(chain: object, reason: str) -> None:
    history = History(1)
    manifest = dataclasses.replace(history.manifest(1), version=100, chain=None)
    if reason != "delta and the chain's last step disagree":
        manifest = dataclasses.replace(manifest, delta=None)
    with pytest.raises(RemoteProtocolError, match=reason):
        decode(_manifest_map(manifest, chain), expect=ModelManifest)


def test_retained_chain_stops_at_a_version_without_a_delta() -> None:
    history = History(5)
    del history.store.deltas[2]  # e.g. made while downlink.delta was false
    chain = retained_chain(history.store, 5, DownlinkConfig(keep_deltas=8), CHUNK)
    assert [info.version for info, _ in chain] == [3, 4, 5]
    assert all(info.model_sha256 == history.store.shas[info.version] for info, _ in chain)


@pytest.mark.parametrize("keep", [-1, MAX_CHAIN + 1])
def test_keep_deltas_is_bounded(keep: int) -> None:
    with pytest.raises(ValueError, match="keep_deltas"):
        DownlinkConfig(keep_deltas=keep)


def test_protocol_version_unchanged() -> None:
    assert PROTOCOL_VERSION == 1  # the chain is an optional field, not a new version
