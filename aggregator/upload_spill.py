"""Chunks of unfinished uploads kept in files once `[limits] upload_memory_bytes` is held.

Devices that upload at once interleave their chunks (the broker forwards them as they
come), so without a spill the aggregator holds every unfinished upload in memory: at
1,000 dense demo-model updates per round that was 500 open uploads and 120 MB
(docs/gateway.md#what-bounds-ingest-on-this-machine), growing with the cohort. Past the
budget, each further chunk is written to its upload's file and read back once the
upload is complete. The files live in a private directory (mode 0700) made on the first
spill under `[limits] upload_spill_dir` (default: the system's temporary directory,
$TMPDIR), and are deleted as uploads complete or are dropped; the directory goes when
the process exits. After a kill -9 it stays behind, as any temporary file does; nothing
in it was acknowledged, so nothing is lost (devices resend).

No fsync: the data is only kept until the upload completes, never after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_client.shared.protocol.chunking import Key

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0


@dataclass
class _SpillFile:
    path: Path
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)  # index: offset, size
    size: int = 0


class FileSpill:
    """A `PartSpill` (edge_client/shared/protocol/chunking.py): one file per upload."""

    def __init__(self, parent: str = "") -> None:
        self.parent = parent or None  # None: tempfile's choice ($TMPDIR, /tmp, ...)
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._files: dict[Key, _SpillFile] = {}
        self._made = 0
        self._warned_at: float | None = None

    def put(self, key: Key, index: int, data: bytes) -> bool:
        try:
            spilled = self._files.get(key) or self._open(key)
            # made by the first chunk only: a file deleted under us fails, not re-made
            create = 0 if spilled.parts else os.O_CREAT
            fd = os.open(spilled.path, os.O_WRONLY | create, 0o600)
            try:
                view, offset = memoryview(data), spilled.size
                while view:  # at its own offset: a failed write is simply overwritten
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            finally:
                os.close(fd)
        except OSError as exc:
            self._warn(exc)
            return False
        spilled.parts[index] = (spilled.size, len(data))
        spilled.size += len(data)
        return True

    def take(self, key: Key) -> dict[int, bytes | memoryview]:
        spilled = self._files.pop(key, None)
        if spilled is None:
            return {}
        try:
            data = memoryview(spilled.path.read_bytes())
        finally:
            _remove(spilled.path)
        if len(data) < spilled.size:
            raise OSError(f"{spilled.path} holds {len(data)} bytes, not {spilled.size}")
        return {index: data[offset:offset + size]  # views: no copy before the join
                for index, (offset, size) in spilled.parts.items()}

    def discard(self, key: Key) -> None:
        spilled = self._files.pop(key, None)
        if spilled is not None:
            _remove(spilled.path)

    def held_files(self) -> int:
        return len(self._files)

    def close(self) -> None:
        """Delete every file and the directory (also done when the process exits)."""
        self._files.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _open(self, key: Key) -> _SpillFile:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="fedge-uploads-", dir=self.parent)
            log.info("aggregator: unfinished uploads past [limits] upload_memory_bytes wait "
                     "in %s", self._dir.name)
        self._made += 1
        spilled = self._files[key] = _SpillFile(Path(self._dir.name) / str(self._made))
        return spilled

    def _warn(self, exc: OSError) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            log.warning("aggregator: cannot write an upload's chunk to [limits] "
                        "upload_spill_dir (%s); holding it in memory instead", exc)
            self._warned_at = now


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
