"""The MCU's samples on the gateway's disk: append-only, bounded, kept across restarts.

Records go to segment files (`samples-00000001.bin`, ...), each record framed as
`length u32 | crc32 u32 | body` so a write torn by a power cut is found and cut off
when the dataset is opened again. When more than `max_samples` are held, the oldest
segment is deleted whole: appends never rewrite a file. `arrays()` / `export_npz()`
give (x, y) for the edge client's trainer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firmware_bridge.link import Dtype, Sample

log = logging.getLogger(__name__)

_RECORD_HEAD = struct.Struct("<II")  # body length, crc32(body)
_BODY_HEAD = struct.Struct("<dBBiB")  # time, dtype, ndim, label (-1 none), device id length
_NUMPY_DTYPE: dict[Dtype, np.dtype] = {Dtype.INT16: np.dtype("<i2"), Dtype.FLOAT32: np.dtype("<f4")}
MAX_RECORD = 64 * 1024


@dataclass(frozen=True)
class StoredSample:
    device_id: str
    time: float
    dtype: Dtype
    shape: tuple[int, ...]
    label: int | None
    data: bytes

    def values(self) -> np.ndarray:
        return np.frombuffer(self.data, _NUMPY_DTYPE[self.dtype]).reshape(self.shape)


@dataclass
class _Segment:
    path: Path
    count: int


class SampleDataset:
    """Samples from MCUs in `directory`; one writer at a time (the bridge)."""

    def __init__(self, directory: Path, max_samples: int = 50_000,
                 segment_samples: int | None = None, fsync: bool = False) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_samples = max_samples
        self.segment_samples = segment_samples or max(1, max_samples // 10)
        if not 1 <= self.segment_samples <= max_samples:
            raise ValueError("segment_samples must be 1..max_samples")
        self.fsync = fsync
        self.damaged_records = 0
        self._segments = [self._open_segment(p) for p in sorted(
            self.directory.glob("samples-*.bin"))]

    def __len__(self) -> int:
        return sum(s.count for s in self._segments)

    # ------------------------------------------------------------ writing
    def append(self, sample: Sample, device_id: str, when: float | None = None) -> None:
        ident = device_id.encode("utf-8")[:255]
        label = -1 if sample.label is None else sample.label
        body = (_BODY_HEAD.pack(time.time() if when is None else when, int(sample.dtype),
                                len(sample.shape), label, len(ident))
                + struct.pack(f"<{len(sample.shape)}H", *sample.shape) + ident + sample.data)
        if len(body) > MAX_RECORD:
            raise ValueError(f"a sample of {len(body)} bytes is over {MAX_RECORD}")
        if not self._segments or self._segments[-1].count >= self.segment_samples:
            self._segments.append(self._new_segment())
        segment = self._segments[-1]
        self._write_record(segment.path, _RECORD_HEAD.pack(len(body), zlib.crc32(body)) + body)
        segment.count += 1
        self._enforce_bound()

    def _write_record(self, path: Path, record: bytes) -> None:
        """All of the record or none of it: a write that fails half way (a full disk) is
        cut back off, or the torn record would hide every later one at the next open."""
        with open(path, "ab", buffering=0) as f:  # unbuffered: what failed is not retried
            start = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(record)
                while view:
                    view = view[f.write(view):]
                if self.fsync:
                    os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise

    def _new_segment(self) -> _Segment:
        number = int(self._segments[-1].path.stem.split("-")[1]) + 1 if self._segments else 1
        return _Segment(self.directory / f"samples-{number:08d}.bin", 0)

    def _enforce_bound(self) -> None:
        while len(self) > self.max_samples and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            oldest.path.unlink(missing_ok=True)
            log.info("dataset: dropped %d oldest samples (%s) to stay under %d",
                     oldest.count, oldest.path.name, self.max_samples)

    # ------------------------------------------------------------ reading
    def _open_segment(self, path: Path) -> _Segment:
        """Count the good records; cut a torn tail so appends continue cleanly."""
        count, good_end = 0, 0
        data = path.read_bytes()
        for end, _body in _records(data):
            count += 1
            good_end = end
        if good_end != len(data):
            self.damaged_records += 1
            log.warning("dataset: %s has %d damaged bytes at its end; cut off",
                        path.name, len(data) - good_end)
            with open(path, "r+b") as f:
                f.truncate(good_end)
        return _Segment(path, count)

    def samples(self) -> Iterator[StoredSample]:
        """Every sample held, oldest first."""
        for segment in list(self._segments):
            try:
                data = segment.path.read_bytes()
            except FileNotFoundError:
                continue
            for _end, body in _records(data):
                sample = _parse_body(body)
                if sample is not None:
                    yield sample

    def arrays(self, labelled_only: bool = True,
               scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """x (n, features) float32 and y (n,) int64 for a trainer.

        Windows are flattened and multiplied by `scale` (an MCU sends raw int16 counts;
        the model may want other units). Only samples of the most common shape are used,
        so a device that changed its window size does not break training; y is -1 for
        unlabelled samples when labelled_only is False.
        """
        chosen = [s for s in self.samples() if s.label is not None or not labelled_only]
        if not chosen:
            return np.zeros((0, 0), np.float32), np.zeros((0,), np.int64)
        shapes: dict[tuple[int, ...], int] = {}
        for s in chosen:
            shapes[s.shape] = shapes.get(s.shape, 0) + 1
        shape = max(shapes, key=lambda k: shapes[k])
        kept = [s for s in chosen if s.shape == shape]
        x = np.stack([s.values().astype(np.float32).reshape(-1) for s in kept])
        if scale != 1.0:
            x *= np.float32(scale)
        y = np.array([-1 if s.label is None else s.label for s in kept], np.int64)
        return x, y

    def export_npz(self, path: Path, labelled_only: bool = True, scale: float = 1.0) -> int:
        """Writes arrays x and y (what `fedge device` reads); returns the sample count."""
        x, y = self.arrays(labelled_only, scale)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, path)
        return len(x)


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(end offset, body) of each intact record, stopping at the first damaged one."""
    pos = 0
    while pos + _RECORD_HEAD.size <= len(data):
        length, crc = _RECORD_HEAD.unpack_from(data, pos)
        start, end = pos + _RECORD_HEAD.size, pos + _RECORD_HEAD.size + length
        if length > MAX_RECORD or end > len(data):
            return
        body = data[start:end]
        if zlib.crc32(body) != crc:
            return
        yield end, body
        pos = end


def _parse_body(body: bytes) -> StoredSample | None:
    try:
        when, dtype, ndim, label, id_len = _BODY_HEAD.unpack_from(body)
        shape = struct.unpack_from(f"<{ndim}H", body, _BODY_HEAD.size)
        start = _BODY_HEAD.size + 2 * ndim
        ident = body[start:start + id_len].decode("utf-8", "replace")
        data = body[start + id_len:]
        dtype = Dtype(dtype)
    except (struct.error, ValueError):
        return None
    if len(data) != math.prod(shape) * _NUMPY_DTYPE[dtype].itemsize:
        return None
    return StoredSample(ident, when, dtype, tuple(shape), None if label < 0 else label, data)
