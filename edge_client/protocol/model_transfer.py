"""Packaging a global model for the downlink: a manifest plus chunk messages."""

from __future__ import annotations

import time

from edge_client.protocol.chunking import sha256_hex, split
from edge_client.protocol.errors import RemoteProtocolError
from edge_client.protocol.messages import DeltaInfo, Model, ModelManifest, decode, encode


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
    assert isinstance(model, Model)
    if model.version != manifest.version:
        raise RemoteProtocolError(f"model blob says version {model.version}, manifest "
                                  f"says {manifest.version}")
    return model


def delta_transfer_id(version: int) -> str:
    return f"delta-{version}"


def package_delta(blob: bytes, version: int, codec: dict,
                  chunk_size: int) -> tuple[DeltaInfo, list[bytes]]:
    """The manifest entry and chunk messages of the delta that leads to `version`."""
    chunks = split(blob, delta_transfer_id(version), chunk_size)
    return DeltaInfo(base_version=version - 1, sha256=sha256_hex(blob), size=len(blob),
                     chunk_count=len(chunks), codec=codec), chunks
