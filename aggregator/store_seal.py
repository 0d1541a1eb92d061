"""The store's seal: a sidecar file that says how much the store has acknowledged.

SQLite cannot tell that its WAL file vanished or lost its tail: it opens the older
state and carries on. The seal (`<db>.seal`) records, after every commit that acks an
update or makes a model version, the number of stored updates, the latest version and
that version's SHA-256. A store that holds less than its seal says has lost commits.

Why no fsync: the seal is written after the SQLite commit returned, and that commit is
already durable (WAL, synchronous=FULL). Lost or late seal writes can only make the seal
record *less* than the store holds, which the check accepts; it refuses only when the
store holds less than the seal, and that cannot come from a lagging seal. A torn write
(power cut mid-write) spoils one slot only: the file has two slots, written in turn,
each with a sequence number and a CRC, and the reader takes the newest valid one. The
file is created with an fsync, so it cannot vanish after its first write.
"""

from __future__ import annotations

import fcntl
import json
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

SLOT = 512  # one disk sector per slot: a torn write spoils at most the slot being written
_BODY = SLOT - 4


@dataclass(frozen=True)
class Seal:
    """What the store held after its last acknowledging commit."""

    updates: int  # rows in `updates`: every acknowledged update (accepted or late)
    version: int  # the latest model version, -1 before the first
    sha256: str  # that version's SHA-256, "" before the first
    seq: int = 0  # which write this was; the reader takes the highest valid slot


def seal_path(db_path: Path) -> Path:
    return Path(str(db_path) + ".seal")


def read_seal(path: Path) -> Seal | None:
    """The newest valid slot; None when there is no file; ValueError when no slot is valid."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    seals = [s for s in (_parse(data[i:i + SLOT]) for i in (0, SLOT)) if s is not None]
    if not seals:
        raise ValueError(f"{path} has no valid seal record ({len(data)} bytes)")
    return max(seals, key=lambda s: s.seq)


def _parse(slot: bytes) -> Seal | None:
    if len(slot) != SLOT or zlib.crc32(slot[:_BODY]) != int.from_bytes(slot[_BODY:], "little"):
        return None
    try:
        fields = json.loads(slot[:_BODY].rstrip(b" "))
        return Seal(int(fields["updates"]), int(fields["version"]), str(fields["sha256"]),
                    int(fields["seq"]))
    except (ValueError, KeyError, TypeError):
        return None


def _slot(seal: Seal) -> bytes:
    body = json.dumps(asdict(seal), sort_keys=True).encode().ljust(_BODY, b" ")
    return body + zlib.crc32(body).to_bytes(4, "little")


def write_new_seal(path: Path, seal: Seal) -> None:
    """Create (or replace) the file with `seal` in both slots, durably: write, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_slot(seal) * 2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def seal_in_use(path: Path) -> bool:
    """Whether a running service holds this seal (its SealWriter's lock): `recover`
    must not rebuild a store under a live service."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock taken here
    return False


class SealWriter:
    """Keeps the seal file open and locked, and overwrites one slot per commit (one
    pwrite). The lock is released when the process ends, however it ends."""

    def __init__(self, path: Path, first: Seal) -> None:
        self.path = path
        self._seq = first.seq
        self._fd = os.open(path, os.O_WRONLY)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody holds it

    def write(self, updates: int, version: int, sha256: str) -> None:
        self._seq += 1
        os.pwrite(self._fd, _slot(Seal(updates, version, sha256, self._seq)),
                  (self._seq % 2) * SLOT)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
