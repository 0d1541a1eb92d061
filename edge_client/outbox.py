"""A durable outbox: an update stays on disk until the aggregator acknowledges it.

One file per update, named by its nonce, written atomically (temp file, fsync,
rename, fsync of the folder), so a crash or power cut leaves either the old state or
the new one. A file that cannot be read is moved aside with a log line, never retried
in a crash loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_NONCE = re.compile(r"^[0-9a-f]{8,64}$")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:  # a full disk: leave no half-written temp file to take up space
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class OutboxEntry:
    nonce: str
    payload: bytes  # the encoded Update message


class OutboxFull(Exception):
    """The outbox holds its maximum; the caller keeps the update out rather than drop one."""


class Outbox:
    def __init__(self, folder: Path, max_entries: int = 64) -> None:
        self.folder = Path(folder)
        self.max_entries = max_entries
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, nonce: str) -> Path:
        if not _NONCE.match(nonce):
            raise ValueError(f"bad nonce {nonce!r}")
        return self.folder / f"{nonce}.update"

    def put(self, nonce: str, payload: bytes) -> None:
        if len(self.nonces()) >= self.max_entries:
            raise OutboxFull(f"outbox {self.folder} holds {self.max_entries} updates")
        atomic_write(self._path(nonce), payload)

    def remove(self, nonce: str) -> bool:
        """Drop an acknowledged update; False when it was not there (a second ack)."""
        try:
            self._path(nonce).unlink()
        except FileNotFoundError:
            return False
        return True

    def nonces(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.update"))

    def entries(self) -> list[OutboxEntry]:
        """Every stored update, oldest first; unreadable files are set aside."""
        paths = sorted(self.folder.glob("*.update"), key=lambda p: p.stat().st_mtime)
        out = []
        for path in paths:
            try:
                out.append(OutboxEntry(path.stem, path.read_bytes()))
            except OSError as exc:
                self._set_aside(path, exc)
        return out

    def set_aside(self, nonce: str, why: object) -> None:
        """Move an entry whose content proved unusable out of the way, keeping it."""
        self._set_aside(self._path(nonce), why)

    def _set_aside(self, path: Path, why: object) -> None:
        aside = self.folder / "corrupt"
        aside.mkdir(exist_ok=True)
        log.error("outbox: setting aside %s (%s); it will not be resent", path.name, why)
        os.replace(path, aside / path.name)

    def __len__(self) -> int:
        return len(self.nonces())
