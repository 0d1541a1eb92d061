"""Inference for a device with no app around it: a folder of .npy batches (`[serve] watch`).

Another process writes a batch of inputs, shape (n, *input_shape), as `NAME.npy` in the
folder (write it under a name starting with a dot, e.g. `.NAME.npy`, which the device
does not read, then rename it, so the device never reads half a file). The device
predicts it with its Predictor, which also counts the inputs for drift, and writes the
class ids, shape (n,), as `NAME.pred.npy` next to it, the same way (a dot name, then a
rename). A batch with its `.pred.npy` is done and not read again, also after a restart;
removing both is the producer's business. A batch that cannot be read or does not fit
the model is skipped with one warning until the file changes. Numpy only.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_client.predictor import Predictor
from edge_client.shared.weights import Weights

log = logging.getLogger(__name__)
PREDICTIONS = ".pred.npy"


class FolderServer:
    """Predicts each new .npy batch dropped in `folder` with `predictor`."""

    def __init__(self, folder: Path, predictor: Predictor, poll_s: float = 1.0) -> None:
        self.folder, self.predictor, self.poll_s = Path(folder), predictor, poll_s
        self._rejected: dict[Path, tuple[float, int]] = {}  # path -> (mtime, size) when rejected
        self._waiting_logged = False

    def run(self, stop: threading.Event) -> None:
        """Serve the folder until `stop` is set."""
        self.folder.mkdir(parents=True, exist_ok=True)
        log.info("serve: watching %s for .npy batches (every %gs)", self.folder, self.poll_s)
        while not stop.is_set():
            self.serve_pending()
            stop.wait(self.poll_s)

    def pending(self) -> list[Path]:
        """Batches without predictions yet, oldest name first."""
        found = []
        for path in sorted(self.folder.glob("*.npy")):
            if path.name.startswith(".") or path.name.endswith(PREDICTIONS):
                continue
            if not _predictions_of(path).exists() and not self._still_rejected(path):
                found.append(path)
        return found

    def serve_pending(self) -> int:
        """Predict every pending batch; returns how many were served."""
        batches = self.pending()
        if batches and self.predictor.version is None:
            if not self._waiting_logged:
                log.info("serve: %d batch(es) in %s wait for the first model", len(batches),
                         self.folder)
                self._waiting_logged = True
            return 0
        return sum(self.serve(path) for path in batches)

    def serve(self, path: Path) -> bool:
        try:
            x = np.load(path, allow_pickle=False)
            if not isinstance(x, np.ndarray):  # an .npz archive
                x.close()
                raise ValueError("an .npz archive, not an .npy array")
            labels = self.predictor.predict(x)
        except Exception as exc:  # a bad batch must not end the serving thread
            self._reject(path, str(exc))
            return False
        out = _predictions_of(path)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, labels.astype(np.int64))
        os.replace(tmp, out)
        log.info("serve: %s: %d inputs predicted by version %s -> %s", path.name, len(labels),
                 self.predictor.version, out.name)
        return True

    def _reject(self, path: Path, reason: str) -> None:
        try:
            stat = path.stat()
        except OSError:
            return  # removed meanwhile
        self._rejected[path] = (stat.st_mtime, stat.st_size)
        log.warning("serve: %s skipped until it changes: %s", path, reason)

    def _still_rejected(self, path: Path) -> bool:
        seen = self._rejected.get(path)
        if seen is None:
            return False
        try:
            stat = path.stat()
        except OSError:
            return True
        if (stat.st_mtime, stat.st_size) == seen:
            return True
        del self._rejected[path]
        return False


def _predictions_of(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".npy") + PREDICTIONS)


def logged_load(predictor: Predictor) -> Callable[[int, dict, Weights], None]:
    """An EdgeClient on_model that loads into `predictor` and says at INFO which version
    it serves from now on, with which runtime, and which one it replaced."""
    def serve(version: int, arch: dict, weights: Weights) -> None:
        before = predictor.version
        predictor.load(version, arch, weights)
        if predictor.version == version and before != version:
            log.info("serve: now serving version %d (%s%s)%s", version, predictor.runtime,
                     ", int8" if predictor.int8 else "",
                     "" if before is None else f"; was version {before}")
    return serve
