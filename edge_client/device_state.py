"""What a device keeps on disk across reboots: tasks done, the last model, the residual.

Every file is written atomically (edge_client.outbox.atomic_write). A file that cannot
be used is logged and set aside or ignored, never retried in a crash loop. The outbox
of unacknowledged updates lives beside these files (edge_client.outbox).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edge_client.outbox import atomic_write
from edge_client.shared.codecs import ErrorFeedback
from edge_client.shared.protocol import Model, RemoteProtocolError, decode
from edge_client.shared.protocol.chunking import sha256_hex

log = logging.getLogger(__name__)
MAX_DONE_TASKS = 100


class DeviceState:
    def __init__(self, folder: Path, device_id: str, max_model_elements: int) -> None:
        self.folder = Path(folder)
        self.device_id = device_id
        self.max_model_elements = max_model_elements
        self.folder.mkdir(parents=True, exist_ok=True)

    @property
    def _state(self) -> Path:
        return self.folder / "state.json"

    @property
    def _model(self) -> Path:
        return self.folder / "model.bin"

    @property
    def _residual(self) -> Path:
        return self.folder / "residual.bin"

    def load_done_tasks(self) -> list[str]:
        """Tasks this device already answered, so a reboot does not train twice for one."""
        try:
            state = json.loads(self._state.read_text())
            return [str(t) for t in state.get("done_tasks", [])][-MAX_DONE_TASKS:]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, AttributeError) as exc:
            log.error("%s: state file unreadable (%s); setting it aside", self.device_id, exc)
            os.replace(self._state, self._state.with_suffix(".corrupt"))
            return []

    def save_done_tasks(self, done: list[str], model_version: int | None) -> None:
        state = {"done_tasks": done[-MAX_DONE_TASKS:], "model_version": model_version}
        atomic_write(self._state, json.dumps(state).encode())

    def save_rollout(self, production: int) -> None:
        """This device follows a rollout (docs/lifecycle.md): after a reboot it serves
        only `production` until the next Rollout says otherwise."""
        atomic_write(self.folder / "rollout.json", json.dumps({"production": production})
                     .encode())

    def load_rollout(self) -> int | None:
        try:
            return int(json.loads((self.folder / "rollout.json").read_text())["production"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("%s: rollout.json unreadable (%s); serving nothing until the next "
                      "Rollout", self.device_id, exc)
            return -1

    def load_model(self) -> Model | None:
        """The last global model, if its bytes still match the digest saved with them."""
        try:
            blob = self._model.read_bytes()
            meta = json.loads(self._model.with_suffix(".json").read_text())
            if sha256_hex(blob) != meta["sha256"]:
                raise ValueError("sha256 mismatch")
            model = decode(blob, expect=Model, max_elements=self.max_model_elements)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, RemoteProtocolError) as exc:
            log.error("%s: stored model unusable (%s); will fetch it again", self.device_id, exc)
            return None
        assert isinstance(model, Model)
        return model

    def model_sha256(self) -> str | None:
        """The digest saved with the last global model (what its manifest named)."""
        try:
            return str(json.loads(self._model.with_suffix(".json").read_text())["sha256"])
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def save_model(self, blob: bytes, version: int) -> None:
        atomic_write(self._model, blob)
        atomic_write(self._model.with_suffix(".json"),
                     json.dumps({"version": version, "sha256": sha256_hex(blob)}).encode())

    def load_residual(self, size: int) -> tuple[ErrorFeedback, int] | None:
        """The error-feedback residual and the model version it belongs to, if it fits."""
        try:
            meta = json.loads(self._residual.with_suffix(".json").read_text())
            feedback = ErrorFeedback.from_bytes(self._residual.read_bytes(), size)
            return feedback, int(meta["version"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("%s: residual unusable (%s); starting without it", self.device_id, exc)
            return None

    def save_residual(self, feedback: ErrorFeedback, version: int | None) -> None:
        atomic_write(self._residual, feedback.to_bytes())
        atomic_write(self._residual.with_suffix(".json"),
                     json.dumps({"version": version}).encode())
