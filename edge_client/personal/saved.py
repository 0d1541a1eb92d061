"""The device's own models on disk, so a reboot keeps them: personal layers or a Ditto
model, and the chosen cluster, in the protocol's model encoding (msgpack, no pickle,
decoded with bounds), written atomically after each fit that changes them."""

from __future__ import annotations

import logging
from pathlib import Path

from edge_client.outbox import atomic_write
from edge_client.personal.local_models import LocalModels
from edge_client.shared.personal import PersonalSpec
from edge_client.shared.protocol import Model, RemoteProtocolError, decode, encode

log = logging.getLogger("edge_client.client")
FILE = "personal.model"


def save_local(folder: Path, local: LocalModels) -> None:
    """OSError: the disk refused (the caller logs it; nothing is lost but this)."""
    cluster = -1 if local.cluster is None else local.cluster
    spec = {} if local.spec is None else local.spec.to_wire()
    atomic_write(folder / FILE, encode(Model(version=0, tensors=local.personal,
                                             arch={"cluster": cluster, **spec})))


def load_local(folder: Path, device_id: str, max_elements: int) -> LocalModels | None:
    """What a previous run kept, or None (nothing kept, or a file that cannot be read:
    logged, and the device starts again from the global model)."""
    path = folder / FILE
    if not path.exists():
        return None
    try:
        model = decode(path.read_bytes(), expect=Model, max_elements=max_elements)
        assert isinstance(model, Model)
        cluster = model.arch.get("cluster", -1)
        spec = PersonalSpec.from_wire(model.arch) if "mode" in model.arch else None
    except (OSError, RemoteProtocolError) as exc:
        log.error("%s: could not read its personal model in %s (%s); starting from the "
                  "global model", device_id, path, exc)
        return None
    local = LocalModels(device_id)
    local.personal, local.spec = dict(model.tensors), spec
    local.cluster = cluster if isinstance(cluster, int) and cluster >= 0 else None
    return local
