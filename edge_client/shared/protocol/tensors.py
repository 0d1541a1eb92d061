"""Named arrays on the wire: raw little-endian bytes with dtype and shape.

Decoding trusts nothing: the dtype must be on a short list, the shape must match the
byte count, and the element count is bounded before any array is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_client.shared.protocol.bounds import describe, is_int
from edge_client.shared.protocol.errors import LocalProtocolError, RemoteProtocolError
from edge_client.shared.weights import (  # noqa: F401  (re-exported for callers)
    Weights,
    flatten_sorted,
    unflatten_like,
)

# dtype names on the wire -> numpy little-endian dtypes we accept.
WIRE_DTYPES: dict[str, np.dtype] = {
    "f4": np.dtype("<f4"),
    "f2": np.dtype("<f2"),
    "f8": np.dtype("<f8"),
    "i1": np.dtype("i1"),
    "u1": np.dtype("u1"),
    "i4": np.dtype("<i4"),
    "u4": np.dtype("<u4"),
    "i8": np.dtype("<i8"),
}
_NAME_OF = {dt: name for name, dt in WIRE_DTYPES.items()}
MAX_DIMS = 8
MAX_TENSORS = 4096
MAX_NAME_LEN = 200


def _wire_name(dtype: np.dtype) -> str:
    little = dtype.newbyteorder("<")
    for name, wire in WIRE_DTYPES.items():
        if wire == little:
            return name
    raise LocalProtocolError(f"dtype {dtype} cannot be sent; use one of {sorted(WIRE_DTYPES)}")


def encode_tensors(tensors: Weights) -> dict[str, Any]:
    """Turn named arrays into a msgpack-ready map {name: {dtype, shape, data}}."""
    out: dict[str, Any] = {}
    for name, array in tensors.items():
        array = np.asarray(array)
        wire = _wire_name(array.dtype)
        data = np.ascontiguousarray(array, dtype=WIRE_DTYPES[wire]).tobytes()
        out[name] = {"dtype": wire, "shape": list(array.shape), "data": data}
    return out


def decode_tensors(raw: Any, max_elements: int) -> Weights:
    """Validate and rebuild named arrays; `max_elements` bounds the total element count."""
    if not isinstance(raw, dict):
        raise RemoteProtocolError("tensors must be a map")
    if len(raw) > MAX_TENSORS:
        raise RemoteProtocolError(f"too many tensors ({len(raw)} > {MAX_TENSORS})")
    remaining = max_elements
    out: Weights = {}
    for name, spec in raw.items():
        array = _decode_one(name, spec, remaining, max_elements)
        remaining -= array.size
        out[name] = array
    return out


def _decode_one(name: Any, spec: Any, remaining: int, max_elements: int) -> np.ndarray:
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
        raise RemoteProtocolError(f"tensor names must be strings of 1 to {MAX_NAME_LEN} "
                                  "characters")
    if not isinstance(spec, dict):
        raise RemoteProtocolError(f"tensor {name!r} must be a map")
    wire = spec.get("dtype")
    dtype = WIRE_DTYPES.get(wire) if isinstance(wire, str) else None
    if dtype is None:
        raise RemoteProtocolError(f"tensor {name!r} has unknown dtype {describe(wire)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise RemoteProtocolError(f"tensor {name!r} has a bad shape")
    if not all(is_int(d) and d >= 0 for d in shape):
        raise RemoteProtocolError(f"tensor {name!r} has a bad shape: dimensions must be "
                                  "integers >= 0")
    data = spec.get("data")
    if not isinstance(data, bytes):
        raise RemoteProtocolError(f"tensor {name!r} has no data bytes")
    count, extent = 1, 1  # extent counts a 0 as 1: (0, 2**60) is no array numpy can shape
    for d in shape:
        count *= d
        extent *= max(d, 1)
    if count > remaining or extent > max(max_elements, 1):
        raise RemoteProtocolError(f"tensors hold more than {max_elements} elements")
    if count * dtype.itemsize != len(data):
        raise RemoteProtocolError(
            f"tensor {name!r}: shape {shape} of {wire} needs "
            f"{count * dtype.itemsize} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def check_like(tensors: Weights, reference: Weights) -> None:
    """An update must have exactly the reference model's names and shapes."""
    if tensors.keys() != reference.keys():
        missing = sorted(reference.keys() - tensors.keys())
        extra = sorted(tensors.keys() - reference.keys())
        raise RemoteProtocolError(f"tensor names differ from the model: missing {missing}, "
                                  f"unexpected {extra}")
    for name, ref in reference.items():
        if tensors[name].shape != ref.shape:
            raise RemoteProtocolError(
                f"tensor {name!r} has shape {tensors[name].shape}, model has {ref.shape}"
            )
        if not np.all(np.isfinite(tensors[name])):
            raise RemoteProtocolError(f"tensor {name!r} holds NaN or infinity")
