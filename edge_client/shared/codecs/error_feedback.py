"""Error feedback: what a lossy codec dropped is carried into the device's next update.

Without it top-k starves small coordinates forever and stochastic rounding noise is
never corrected; with it the sum of what a device sends tracks the sum of its updates
(Stich et al. 2018, Karimireddy et al. 2019).
"""

from __future__ import annotations

import zlib

import numpy as np

_VERSION = 1
_HEADER = 1  # the version byte
_TRAILER = 4  # crc32 of everything before it


class ErrorFeedback:
    """Residual of what a device did not send; added to its next update."""

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        self.n = n
        self.residual = np.zeros(n, dtype=np.float32)

    def compensate(self, update: np.ndarray) -> np.ndarray:
        """The update plus what earlier encodes dropped: this is what should be encoded."""
        return self._vector(update, "update") + self.residual

    def record(self, compensated: np.ndarray, sent: np.ndarray) -> None:
        """Keep what `sent` (the decoded blob) lacks of `compensated` for the next round."""
        self.residual = self._vector(compensated, "compensated") - self._vector(sent, "sent")

    def to_bytes(self) -> bytes:
        """Version byte, little-endian float32 residual, crc32: a torn or stale file is caught."""
        body = bytes([_VERSION]) + self.residual.astype("<f4").tobytes()
        return body + zlib.crc32(body).to_bytes(4, "little")

    @classmethod
    def from_bytes(cls, data: bytes, n: int) -> ErrorFeedback:
        """Load what `to_bytes` wrote; ValueError if it is for another size or damaged."""
        expected = _HEADER + 4 * n + _TRAILER
        if len(data) != expected:
            raise ValueError(f"residual file has {len(data)} bytes, expected {expected}")
        body, crc = data[:-_TRAILER], int.from_bytes(data[-_TRAILER:], "little")
        if zlib.crc32(body) != crc:
            raise ValueError("residual file fails its checksum")
        if body[0] != _VERSION:
            raise ValueError(f"residual file has version {body[0]}, expected {_VERSION}")
        residual = np.frombuffer(body, dtype="<f4", offset=_HEADER).astype(np.float32)
        if not np.isfinite(residual).all():
            raise ValueError("residual file holds non-finite values")
        feedback = cls(n)
        feedback.residual = residual
        return feedback

    def _vector(self, array: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(array)
        if array.shape != (self.n,):
            raise ValueError(f"{what} has shape {array.shape}, expected ({self.n},)")
        return array.astype(np.float32, copy=False)
