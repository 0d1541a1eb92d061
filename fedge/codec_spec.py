"""Short codec specs for the command line, e.g. `topk=0.01,q4` or `dense`.

Tokens, in any order: a sparsifier (`topk=F`, `randk=F`, `threshold=T`), a number
format (`f32`, `f16`, `q8`, `q4`, `q2`, `q1`), `noef` to turn error feedback off,
`raw` to skip zlib, and for adaptive top-k `energy=E` and `max=F` (with `topk=F` as the
least). `dense` alone means plain float32 with nothing else; `adaptive` alone the
measured adaptive uplink (`topk=0.01,max=0.06,energy=0.5,q4`).
"""

from __future__ import annotations

from edge_client.shared.codecs import CodecConfig
from edge_client.shared.codecs.adaptive import ADAPTIVE_UPLINK

QUANTIZERS = ("f32", "f16", "q8", "q4", "q2", "q1")
SPARSIFIERS = ("topk", "randk", "threshold")


def parse_codec(spec: str) -> CodecConfig | None:
    """A codec config from a spec; None for `dense`. ValueError names a bad token."""
    spec = spec.strip().lower()
    if spec in ("dense", "none", ""):
        return None
    if spec == "adaptive":
        return ADAPTIVE_UPLINK
    fields: dict = {}
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        name, _, value = token.partition("=")
        if name in QUANTIZERS and not value:
            fields["quantize"] = name
        elif name in SPARSIFIERS and value:
            fields["sparsify"] = name
            fields["threshold" if name == "threshold" else "fraction"] = float(value)
        elif name in ("energy", "max") and value:
            fields["energy" if name == "energy" else "max_fraction"] = float(value)
        elif token == "noef":
            fields["error_feedback"] = False
        elif token == "raw":
            fields["compress"] = "none"
        else:
            raise ValueError(f"unknown codec token {token!r} in {spec!r}; use e.g. "
                             f"'topk=0.01,q4', 'randk=0.05,q8', 'f16', 'noef', 'raw', "
                             f"'adaptive'")
    return CodecConfig(**fields)


def describe(codec: CodecConfig | None) -> str:
    return "dense-f32" if codec is None else codec.name()
