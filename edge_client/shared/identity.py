"""A party's Ed25519 identity: the private key on disk, its public key and key id.

The key file is an unencrypted PKCS#8 PEM that only its owner may read. Like ssh, a key
file that others can read is refused rather than used, and a file that cannot be parsed
is reported, never replaced: a silently new key would orphan the device's enrolment.
A new key is written to a temp file (0600 from its creation) and linked into place,
so a crash leaves no half-written key and two processes starting at once share one key.

`cryptography` is imported inside the functions that use it, not at import time: a device
with no key configured never loads it (6.5 MB of RSS and 10-30 ms of import time on an
x86 PC; see benchmarks/footprint.py).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PUBLIC_PREFIX = "ed25519:"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700
_BYTES = (bytes, bytearray, memoryview)
_MAX_KEY_FILE = 64 * 1024  # a PEM Ed25519 key is ~120 bytes; anything huge is not a key
# Errors from os.link on file systems without hard links (vfat boot partitions, some FUSE).
_NO_HARDLINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}


@dataclass(frozen=True)
class Identity:
    """A private key with its public half; equal identities have equal public keys."""

    private_key: Ed25519PrivateKey = field(repr=False, compare=False)
    public_bytes: bytes

    def __post_init__(self) -> None:
        if self.public_bytes != _raw_public(self.private_key):
            raise ValueError("public_bytes do not belong to private_key")

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey) -> Identity:
        return cls(private_key=key, public_bytes=_raw_public(key))

    @classmethod
    def generate(cls) -> Identity:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls.from_private_key(Ed25519PrivateKey.generate())

    @property
    def key_id(self) -> str:
        """A short, stable name for the public key, used to look it up when verifying."""
        return hashlib.sha256(self.public_bytes).hexdigest()[:16]

    @property
    def public_text(self) -> str:
        """The public key as one line of text, for enrolment at the aggregator."""
        return PUBLIC_PREFIX + base64.b64encode(self.public_bytes).decode("ascii")

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature over `data`."""
        return self.private_key.sign(data)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


# ---------------------------------------------------------------- key files


def load_or_create_identity(path: Path) -> Identity:
    """The identity stored at `path`, made on first run; an existing key is never replaced."""
    path = Path(path)
    try:
        return load_identity(path)
    except FileNotFoundError:
        pass
    try:
        return create_identity(path)
    except FileExistsError:  # another process created it between our two steps
        return load_identity(path)


def load_identity(path: Path) -> Identity:
    """Read a key file, refusing one that others may read or that is not an Ed25519 key."""
    path = Path(path)
    return Identity.from_private_key(_parse_private_key(_read_key_file(path), path))


def create_identity(path: Path) -> Identity:
    """Make a new key at `path`; FileExistsError if anything is already there."""
    path = Path(path)
    if os.path.lexists(path):
        raise _exists(path)
    from cryptography.hazmat.primitives import serialization

    _ensure_private_dir(path.parent)
    identity = Identity.generate()
    pem = identity.private_key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
    _write_new_file(path, pem)
    return identity


def file_mode(path: Path) -> int:
    """The permission bits of `path`, as `ls -l` would judge them."""
    return stat.S_IMODE(os.stat(path).st_mode)


def _read_key_file(path: Path) -> bytes:
    # Check the mode on the open descriptor, so the file judged is the file read.
    # O_NONBLOCK keeps a FIFO in the key's place from hanging the caller.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"key file {path} is not a regular file")
        _check_mode(path, stat.S_IMODE(st.st_mode))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(_MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"key file {path} is too large to be a private key")
    return data


def _check_mode(path: Path, mode: int) -> None:
    if mode & 0o077:
        raise PermissionError(
            f"permissions {mode:04o} for private key {path} are too open: it must not be "
            f"accessible by others (run: chmod 600 {path})")


def _parse_private_key(data: bytes, path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:  # garbage, truncated, or password-protected
        raise ValueError(f"key file {path} is not a readable unencrypted PEM private key: "
                         f"{exc}") from None
    except Exception as exc:  # e.g. UnsupportedAlgorithm for unknown key types
        raise ValueError(f"key file {path} holds an unsupported key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def _ensure_private_dir(folder: Path) -> None:
    """Create the key's folder as 0700 if missing; an existing folder is left as it is."""
    if folder.is_dir():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=KEY_DIR_MODE)
    except FileExistsError:
        return
    os.chmod(folder, KEY_DIR_MODE)  # mkdir's mode is filtered by the umask


def _write_new_file(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` atomically; FileExistsError if `path` exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # exact 0600 whatever the umask, before any key byte
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.close(fd)
        fd = -1
        _publish(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()


def _publish(tmp: Path, path: Path) -> None:
    """Move `tmp` to `path` without ever replacing a file that appeared meanwhile."""
    try:
        os.link(tmp, path)  # fails with FileExistsError, unlike os.replace
    except FileExistsError:
        raise _exists(path) from None
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
        if os.path.lexists(path):
            raise _exists(path) from None
        os.replace(tmp, path)


def _exists(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} already exists; refusing to overwrite a key")


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------- public keys


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of an "ed25519:<base64>" public key, as printed by `fedge keys export`."""
    if not isinstance(text, str):
        raise ValueError("public key must be text like 'ed25519:<base64>'")
    text = text.strip()
    if not text.startswith(PUBLIC_PREFIX):
        raise ValueError(f"public key must start with {PUBLIC_PREFIX!r}: {text[:20]!r}")
    encoded = text[len(PUBLIC_PREFIX):]
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public key is not valid base64") from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"public key must be {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    if base64.b64encode(raw).decode("ascii") != encoded:  # one text per key, so ids compare
        raise ValueError("public key is not canonical base64")
    return raw


def verify(public_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is a valid Ed25519 signature of `data`; never raises."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not all(isinstance(b, _BYTES) for b in (public_bytes, data, signature)):
        return False
    try:
        if len(public_bytes) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
            return False
        key = Ed25519PublicKey.from_public_bytes(bytes(public_bytes))
        key.verify(bytes(signature), bytes(data))
    except Exception:  # InvalidSignature, a malformed key, wrong types: all mean "no"
        return False
    return True
