"""The reference kept with the device's state, so a reboot compares with the same
training inputs (a JSON file beside state.json, written atomically)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edge_client.drift.reference import InputReference, as_rows
from edge_client.outbox import atomic_write

log = logging.getLogger(__name__)
REFERENCE_FILE = "input_reference.json"


def reference_for(state_dir: Path, x: Any, device_id: str = "device") -> InputReference:
    """The saved reference, if there is a usable one with `x`'s number of features;
    else one built from `x` and saved. ValueError if `x` is unusable."""
    path = Path(state_dir) / REFERENCE_FILE
    features = as_rows(x, "training inputs").shape[1]
    try:
        saved = InputReference.from_json(json.loads(path.read_text()))
        if saved.features == features:
            return saved
        log.info("%s: the saved input reference has %d features, the data %d; building "
                 "a new one", device_id, saved.features, features)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        log.error("%s: the saved input reference is unusable (%s); building a new one",
                  device_id, exc)
    return save_reference(path, InputReference.of(x))


def save_reference(path: Path, reference: InputReference) -> InputReference:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(reference.to_json()).encode())
    return reference
