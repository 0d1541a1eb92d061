"""Codec settings: which sparsifier, quantizer and compressor a device uses for its update.

The aggregator puts a `CodecConfig` in each task (`to_wire`), devices read it back with
`from_wire`, and both sides pass the same config to the pipeline, so the config itself
never travels inside an update blob (the blob only echoes it, to catch a mismatch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_client.shared.protocol.bounds import check_plain
from edge_client.shared.protocol.errors import RemoteProtocolError

SPARSIFIERS = ("none", "topk", "randk", "threshold")
QUANTIZERS = ("f32", "f16", "q8", "q4", "q2", "q1")
COMPRESSORS = ("none", "zlib")
MAX_BLOCK_SIZE = 1 << 20

# Bits per value of the stochastic quantizers; f32/f16 are not in here.
QUANT_BITS = {"q8": 8, "q4": 4, "q2": 2, "q1": 1}

_WIRE_KEYS = (
    "sparsify",
    "fraction",
    "threshold",
    "quantize",
    "block_size",
    "error_feedback",
    "compress",
)
# Sent only when the adaptive top-k rule is on (energy > 0), so tasks without it read the
# same to devices that predate it.
_ADAPTIVE_KEYS = ("energy", "max_fraction")


@dataclass(frozen=True)
class CodecConfig:
    """How one update is encoded; `error_feedback` is advice to the device, not a codec step."""

    sparsify: str = "none"
    fraction: float = 0.01
    threshold: float = 0.0
    quantize: str = "f32"
    block_size: int = 256
    error_feedback: bool = True
    compress: str = "zlib"
    energy: float = 0.0
    """Adaptive top-k (codecs/adaptive.py): send the fewest largest coordinates that carry
    this share of the error-compensated update's squared norm, between `fraction` and
    `max_fraction` of them. 0: always `fraction`. Uplink only."""
    max_fraction: float = 0.0
    """The adaptive rule's cap, in [fraction, 1]; 0 when `energy` is 0."""

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(f"bad codec config: {problem}")

    @property
    def adaptive(self) -> bool:
        return self.energy > 0

    def name(self) -> str:
        """A short stable label for logs, metrics and file names, e.g. "topk0.01-q4-ef-zlib"
        (adaptive: "topk0.01-0.06e0.5-q4-ef-zlib")."""
        parts = [_sparsify_label(self), _quantize_label(self)]
        if self.error_feedback:
            parts.append("ef")
        if self.compress != "none":
            parts.append(self.compress)
        return "-".join(parts)

    def to_wire(self) -> dict[str, object]:
        """Every field as a plain msgpack-ready value; `from_wire` requires all of them."""
        return {
            "sparsify": self.sparsify,
            "fraction": float(self.fraction),
            "threshold": float(self.threshold),
            "quantize": self.quantize,
            "block_size": int(self.block_size),
            "error_feedback": bool(self.error_feedback),
            "compress": self.compress,
            **({"energy": float(self.energy), "max_fraction": float(self.max_fraction)}
               if self.adaptive else {}),
        }

    @classmethod
    def from_wire(cls, raw: object) -> CodecConfig:
        """Rebuild a config sent by a peer; anything unexpected is a RemoteProtocolError."""
        if not isinstance(raw, dict):
            raise RemoteProtocolError("codec config must be a map")
        check_plain(raw, "codec config", max_depth=1, max_items=64)
        unknown = sorted(str(key) for key in raw
                         if key not in _WIRE_KEYS and key not in _ADAPTIVE_KEYS)
        if unknown:
            raise RemoteProtocolError(f"codec config has unknown keys {unknown}")
        missing = [key for key in _WIRE_KEYS if key not in raw]
        if missing:
            raise RemoteProtocolError(f"codec config lacks keys {missing}")
        fields = {key: raw[key] for key in (*_WIRE_KEYS, *_ADAPTIVE_KEYS) if key in raw}
        for key in ("fraction", "threshold", *_ADAPTIVE_KEYS):
            if key in fields and _is_number(fields[key]):
                fields[key] = float(fields[key])
        try:
            return cls(**fields)
        except ValueError as exc:
            raise RemoteProtocolError(str(exc)) from exc


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(config: CodecConfig) -> str | None:
    """The first thing wrong with `config`, or None; shared by __post_init__ and from_wire."""
    if not isinstance(config.sparsify, str) or config.sparsify not in SPARSIFIERS:
        return f"sparsify must be one of {SPARSIFIERS}, not {config.sparsify!r}"
    if not _is_number(config.fraction) or not 0.0 < config.fraction <= 1.0:
        return f"fraction must be a number in (0, 1], not {config.fraction!r}"
    if not _is_number(config.threshold) or not 0.0 <= config.threshold < math.inf:
        return f"threshold must be a finite number >= 0, not {config.threshold!r}"
    if not isinstance(config.quantize, str) or config.quantize not in QUANTIZERS:
        return f"quantize must be one of {QUANTIZERS}, not {config.quantize!r}"
    size = config.block_size
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_BLOCK_SIZE:
        return f"block_size must be an int in [1, {MAX_BLOCK_SIZE}], not {size!r}"
    if not isinstance(config.error_feedback, bool):
        return f"error_feedback must be a bool, not {config.error_feedback!r}"
    if not isinstance(config.compress, str) or config.compress not in COMPRESSORS:
        return f"compress must be one of {COMPRESSORS}, not {config.compress!r}"
    return _adaptive_problem(config)


def _adaptive_problem(config: CodecConfig) -> str | None:
    if not _is_number(config.energy) or not 0.0 <= config.energy < 1.0:
        return f"energy must be a number in [0, 1), not {config.energy!r}"
    if not _is_number(config.max_fraction):
        return f"max_fraction must be a number, not {config.max_fraction!r}"
    if not config.adaptive:
        if config.max_fraction != 0:
            return "max_fraction needs energy > 0 (the adaptive top-k rule)"
        return None
    if config.sparsify != "topk":
        return f"energy (adaptive top-k) needs sparsify = 'topk', not {config.sparsify!r}"
    if not config.fraction <= config.max_fraction <= 1.0:
        return (f"max_fraction must be in [fraction, 1] = [{config.fraction:g}, 1], "
                f"not {config.max_fraction!r}")
    return None


def _sparsify_label(config: CodecConfig) -> str:
    if config.sparsify == "none":
        return "dense"
    if config.sparsify == "threshold":
        return f"thr{config.threshold:g}"
    if config.adaptive:
        return f"topk{config.fraction:g}-{config.max_fraction:g}e{config.energy:g}"
    return f"{config.sparsify}{config.fraction:g}"


def _quantize_label(config: CodecConfig) -> str:
    if config.quantize in QUANT_BITS and config.block_size != 256:
        return f"{config.quantize}b{config.block_size}"
    return config.quantize


# Plain float32 with nothing dropped: the baseline every ratio is measured against.
DENSE = CodecConfig(sparsify="none", quantize="f32", error_feedback=False, compress="none")
