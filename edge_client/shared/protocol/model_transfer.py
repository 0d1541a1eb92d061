"""Packaging a global model for the downlink: a manifest plus chunk messages."""

from __future__ import annotations

import time

from edge_client.shared.protocol.chunking import sha256_hex, split
from edge_client.shared.protocol.errors import RemoteProtocolError
from edge_client.shared.protocol.messages import DeltaInfo, Model, ModelManifest, decode, encode


def model_transfer_id(version: int) -> str:
    return f"model-{version}"


def package_model(model: Model, chunk_size: int,
                  now: float | None = None) -> tuple[ModelManifest, list[bytes]]:
    """Encode a model once; return its manifest and the chunk messages to publish."""
    blob = encode(model)
    chunks = split(blob, model_transfer_id(model.version), chunk_size)
    manifest = ModelManifest(version=model.version, sha256=sha256_hex(blob), size=len(blob),
                             chunk_count=len(chunks),
                             created_at=time.time() if now is None else now)
    return manifest, chunks


def open_model(manifest: ModelManifest, blob: bytes, max_elements: int) -> Model:
    """Check a reassembled blob against its manifest and decode it."""
    if len(blob) != manifest.size or sha256_hex(blob) != manifest.sha256:
        raise RemoteProtocolError(f"model {manifest.version} does not match its manifest")
    model = decode(blob, expect=Model, max_elements=max_elements)
    if model.version != manifest.version:
        raise RemoteProtocolError(f"model blob says version {model.version}, manifest "
                                  f"says {manifest.version}")
    return model


def delta_transfer_id(version: int) -> str:
    return f"delta-{version}"


def package_delta(blob: bytes, version: int, codec: dict, chunk_size: int,
                  model_sha256: str | None = None) -> tuple[DeltaInfo, list[bytes]]:
    """The manifest entry and chunk messages of the delta that leads to `version`.

    `model_sha256` is the SHA-256 of the model it leads to, so a device that applies a
    chain of deltas can check every step, not only the last.
    """
    chunks = split(blob, delta_transfer_id(version), chunk_size)
    return DeltaInfo(base_version=version - 1, sha256=sha256_hex(blob), size=len(blob),
                     chunk_count=len(chunks), codec=codec, model_sha256=model_sha256), chunks


def delta_path(manifest: ModelManifest, held_version: int | None) -> list[DeltaInfo]:
    """The deltas that lead from `held_version` to the manifest's version, in order.

    The chain is used when it starts at or before the held version and its bytes
    are fewer than the full model's; else the single `delta` if it starts there.
    Empty: fetch the full model.
    """
    if held_version is None or held_version >= manifest.version:
        return []
    if manifest.chain:
        steps = [d for d in manifest.chain if d.base_version >= held_version]
        if (steps and steps[0].base_version == held_version
                and sum(d.size for d in steps) < manifest.size):
            return steps
    if manifest.delta is not None and manifest.delta.base_version == held_version:
        return [manifest.delta]
    return []
